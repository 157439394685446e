"""Copy measured winner plans into the PlanStore (bench/results/plans/).

    python bench/megakernel_store_plans.py search1.json [search2.json ...]
    python bench/megakernel_store_plans.py --pick MODEL/WEIGHTS=VARIANT [--pick ...] ab1.json [ab2.json ...]

A megakernel_search.py result file names its winners. From megakernel_ab.py files, each `--pick` names the variant
to store for one (model, weights); its measured_ms is the mean ms per step at context ~140 over every row of the
given files that ran the same plan, and predicted_ms is the cost model's for the plan's profile.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from egt.megakernel.profiles import get_profile  # noqa: E402
from egt.megakernel.schedule import MegaPlan  # noqa: E402
from egt.megakernel.search import PlanStore, predict_ms  # noqa: E402


def ab_winners(files, picks: dict[tuple[str, str], str]) -> list[MegaPlan]:
    rows = [r for f in files for r in json.loads(Path(f).read_text())["rows"] if r.get("pass")]
    out = []
    for (model, weights), variant in picks.items():
        chosen = [r for r in rows if (r["model"], r["weights"], r["variant"]) == (model, weights, variant)]
        if len({r["plan_hash"] for r in chosen}) != 1:
            raise SystemExit(f"{model} {weights} {variant}: {'no passing row' if not chosen else 'several plans'} "
                             f"in {', '.join(map(str, files))}")
        plan = MegaPlan.from_dict(chosen[0]["plan"])
        ms = [r["ms_ctx140"] for r in rows if r["model"] == model and r["weights"] == weights
              and r["plan_hash"] == chosen[0]["plan_hash"]]
        plan.measured_ms = sum(ms) / len(ms)
        plan.predicted_ms = predict_ms(plan, get_profile(plan.profile))
        plan.smem_report()
        out.append(plan)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--pick", action="append", default=[], help="MODEL/WEIGHTS=VARIANT (megakernel_ab.py files)")
    a = ap.parse_args()
    store = PlanStore()
    if a.pick:
        picks = {}
        for p in a.pick:
            key, _, variant = p.partition("=")
            model, _, weights = key.partition("/")
            if not (model and weights and variant):
                raise SystemExit(f"--pick {p!r}: expected MODEL/WEIGHTS=VARIANT")
            picks[(model, weights)] = variant
        plans = ab_winners(a.files, picks)
    else:
        plans = [MegaPlan.from_dict(r["winner"]) for f in a.files for r in json.loads(Path(f).read_text())["results"]]
    for p in plans:
        print(store.put(p), p.measured_ms)


if __name__ == "__main__":
    main()
