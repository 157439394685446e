"""Offline schedule search on the GPU: rank candidate plans by the cost model, compile the best few in parallel,
time each (one launch per decode step, device-fed tokens, context ~140, median of 5 x 100 steps), keep the
winner per key, and report the rank correlation (Spearman) of predicted vs measured times.

    python bench/megakernel_search.py [--shapes a,b] [--batches 1] [--weights bf16,w4a16] [--profile h100] [--top 4]
                                      [--out search.json] [--store]

--weights: labels of megakernel_check.WEIGHT_LABELS (random weights compressed by megakernel_check.compress); INT4
ops (the LM head of the sparse labels too) rank CUDA-core and tensor-core variants together (int4_path "auto"), every
key ranks 256- and 512-thread grids together, and the PlanStore's plan for the key is timed beside them.

Winners go to --out (one JSON with every candidate) and, with --store, to the PlanStore directory.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from egt.models import SHAPES, random_model  # noqa: E402
from egt.megakernel.codegen import build  # noqa: E402
from egt.megakernel.profiles import get_profile  # noqa: E402
from egt.megakernel.runtime import MegaKernelDecoder  # noqa: E402
from egt.megakernel.search import PlanStore, search, search_spread, spearman  # noqa: E402
from common import time_decode_steps  # noqa: E402
from megakernel_check import WEIGHT_LABELS, compress, plan_weights  # noqa: E402


def time_decoder(dec, model, batch, ctx=140):
    """(median, sorted) ms per step at context ~ctx (bench/common.time_decode_steps) on a fresh cache."""
    cache = model.setup_cache(batch, ctx + 128)
    return time_decode_steps(dec, cache, batch, ctx)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--batches", default="1")
    ap.add_argument("--weights", default="bf16", help=f"comma list of {', '.join(WEIGHT_LABELS)}")
    ap.add_argument("--profile", default="h100")
    ap.add_argument("--top", type=int, default=4, help="plans compiled and timed per key")
    ap.add_argument("--pool", type=int, default=24, help="ranked plans the timed ones are drawn from")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "bench/results"), "search.json"))
    ap.add_argument("--spread", action="store_true", help="also time plans spread over the cost ranking")
    ap.add_argument("--store", action="store_true", help="also write winners to the PlanStore")
    a = ap.parse_args()
    prof = get_profile(a.profile)
    jobs = []
    for name, w in ((n, w) for n in a.shapes.split(",") for w in a.weights.split(",")):
        for b in map(int, a.batches.split(",")):
            ranked = search(SHAPES[name], b, prof, max_plans=max(a.top, a.pool), weights=plan_weights(w),
                            int4_path="auto", thread_options=(256, 512))
            # the best few, plus plans spread down the ranking, so the rank correlation tests the cost model
            # over a real range of predictions instead of among near-ties
            k = min(a.top, len(ranked))
            # the best of each block size first (the cost model does not see register spills at 512 threads)
            picks = sorted({next(i for i, p in enumerate(ranked) if p.threads == t)
                            for t in {p.threads for p in ranked}})[:k]
            picks += [i for i in range(k) if i not in picks][:max(0, 2 - len(picks))]
            rest = ranked[len(picks):]
            for i in range(k - len(picks)):
                j = len(picks) + (i + 1) * (len(rest) - 1) // max(1, k - len(picks))
                if j < len(ranked) and j not in picks:
                    picks.append(j)
            chosen = [ranked[j] for j in picks]
            if a.spread and w == "bf16":
                seen = {p.plan_hash() for p in chosen}
                chosen += [p for p in search_spread(SHAPES[name], b, prof) if p.plan_hash() not in seen]
            # the stored winner is timed again beside them, so --store never replaces a faster incumbent
            incumbent = PlanStore().get(ranked[0].key()) if ranked else None
            if incumbent is not None and incumbent.plan_hash() not in {p.plan_hash() for p in chosen}:
                chosen.append(incumbent)
            jobs.append((name, w, b, chosen))
    t0 = time.time()
    with ThreadPoolExecutor(max(1, min(16, (os.cpu_count() or 2)))) as ex:
        list(ex.map(build, [p for *_, ps in jobs for p in ps]))
    print(f"built {sum(len(ps) for *_, ps in jobs)} plans in {time.time() - t0:.0f} s", flush=True)
    out = {"device": torch.cuda.get_device_name(), "profile": prof.to_dict(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": []}
    store = PlanStore()
    current = None
    for name, w, b, plans in jobs:
        if current != (name, w):
            model = None
            torch.cuda.empty_cache()
            model = compress(random_model(name, device="cuda"), w)
            current = (name, w)
        rows = []
        for p in plans:
            dec = MegaKernelDecoder(model, batch=b, profile=prof, plan=p)
            ms, ts = time_decoder(dec, model, b)
            p.measured_ms = ms
            rows.append({"plan_hash": p.plan_hash(), "predicted_ms": p.predicted_ms, "measured_ms": ms, "spread": ts,
                         "threads": p.threads, "smem": {k: p.smem[k] for k in ("peak", "peak_without_ksplit")},
                         "ops": {k: vars(v) for k, v in p.ops.items()}, "attn": vars(p.attn)})
            print(f"  {name} {w} b{b} {p.threads}t {p.plan_hash()} pred {p.predicted_ms:.4f} meas {ms:.4f} "
                  f"smem {p.smem['peak']}/{p.smem['peak_without_ksplit']}", flush=True)
            del dec
        rho = spearman([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])
        win = min(plans, key=lambda p: p.measured_ms)
        win.notes = {"searched": len(plans), "spearman": rho, "device": out["device"], "date": out["date"]}
        if a.store:
            store.put(win)
        out["results"].append({"model": name, "weights": w, "batch": b, "spearman": rho, "winner": win.to_dict(), "candidates": rows})
        print(f"{name} {w} b{b}: winner {win.plan_hash()} {win.measured_ms:.4f} ms; spearman {rho:.2f}", flush=True)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=1))
    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
