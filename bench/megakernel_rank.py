"""How well the search's cost model orders the plans that the A/B runs measured.

    python bench/megakernel_rank.py [--noise 0.02] [--out DIR] [files ...]   (default: bench/results/megakernel/ab_*.json)

Every A/B run times several variants of one (model, weights) on one card. Two variants with different plans and
measured ms per step at context 140 more than `noise` apart form a pair; the cost model (`search.predict_ms`, with
the plan's own profile) orders the pair right when it predicts the faster one faster, wrong when the slower one, and
ties when it predicts both the same (a plan field it does not cost). Variants with the same plan (a kernel-code A/B)
make no pair. Pairs are split by what differs between the two plans: only the matvec schedules (`ops`: tiles,
stages, K-split, warps a row), only the attention schedule (`attn`), or anything else (`other`: copy path, prefetch
depth, L2 look-ahead, threads, ...). Prints one line per kind and writes megakernel_rank.json.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from egt.megakernel.profiles import get_profile  # noqa: E402
from egt.megakernel.schedule import MegaPlan  # noqa: E402
from egt.megakernel.search import predict_ms  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "megakernel"
NOT_A_CHOICE = ("key", "plan_hash", "predicted_ms", "measured_ms", "smem", "notes")  # records, not plan choices


def measured_plans(files) -> dict[tuple, list[tuple[float, MegaPlan]]]:
    """(file, model, weights) -> [(mean ms at context 140, plan)] with one entry per distinct plan that passed."""
    groups: dict[tuple, dict[str, list]] = collections.defaultdict(dict)
    for f in files:
        for r in json.loads(Path(f).read_text()).get("rows", []):
            if "plan" not in r or r.get("ms_ctx140") is None or r.get("pass") is False:
                continue
            plan = MegaPlan.from_dict(r["plan"])
            groups[(Path(f).name, r["model"], r["weights"])].setdefault(plan.plan_hash(), [plan, []])[1].append(
                r["ms_ctx140"])
    return {k: [(sum(ms) / len(ms), plan) for plan, ms in g.values()] for k, g in groups.items()}


def difference(a: MegaPlan, b: MegaPlan) -> str:
    da, db = a.to_dict(), b.to_dict()
    fields_differ = {k for k in da if k not in NOT_A_CHOICE and da[k] != db.get(k)}
    return fields_differ.pop() if len(fields_differ) == 1 and fields_differ <= {"ops", "attn"} else "other"


def rank(files, noise: float = 0.02) -> dict:
    count, rows = collections.defaultdict(collections.Counter), []
    for key, plans in measured_plans(files).items():
        pred = [predict_ms(p, get_profile(p.profile)) for _, p in plans]
        for i in range(len(plans)):
            for j in range(i + 1, len(plans)):
                (mi, a), (mj, b) = plans[i], plans[j]
                if abs(mi - mj) <= noise * min(mi, mj):
                    continue
                kind, d = difference(a, b), (pred[i] - pred[j]) * (mi - mj)
                verdict = "tie" if abs(pred[i] - pred[j]) < 1e-9 else ("right" if d > 0 else "wrong")
                count[kind][verdict] += 1
                rows.append({"file": key[0], "model": key[1], "weights": key[2], "kind": kind, "verdict": verdict,
                             "measured_ms": [mi, mj], "predicted_ms": [pred[i], pred[j]],
                             "plans": [a.plan_hash(), b.plan_hash()]})
    return {"noise": noise, "counts": {k: dict(c) for k, c in count.items()}, "rows": rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*")
    ap.add_argument("--noise", type=float, default=0.02, help="pairs closer than this fraction are ties, skipped")
    ap.add_argument("--out", default=None, help="directory for megakernel_rank.json (default: print only)")
    args = ap.parse_args()
    files = args.files or sorted(RESULTS.glob("ab_*.json"))
    res = rank(files, args.noise)
    for kind, c in sorted(res["counts"].items()):
        n = sum(c.values())
        print(f"{kind:6s} {n:4d} pairs: {c.get('right', 0):4d} right, {c.get('wrong', 0):4d} wrong, "
              f"{c.get('tie', 0):4d} predicted equal")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "megakernel_rank.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
