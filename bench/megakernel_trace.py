"""Where the time of one MegaKernel layer goes: a traced build stamps %globaltimer at every op boundary of one
layer in every block; this prints, per boundary, the earliest / median / latest block (us from the layer start).

    python bench/megakernel_trace.py [--shapes a,b] [--layer 2]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from egt.models import SHAPES, random_model  # noqa: E402
from egt.megakernel.runtime import MegaKernelDecoder  # noqa: E402

POINTS = {0: "qkv wait start", 1: "qkv wait end", 2: "qkv done", 3: "attn start", 4: "attn done",
          5: "attn wait end", 6: "o done", 7: "gateup wait end", 8: "gateup done", 9: "down wait end", 10: "down done",
          # stamped by the blocks that run attention items, for their first item only
          11: "att: qkv ready", 12: "att: q/k/v roped", 13: "att: first K/V in", 16: "att: q.k done",
          17: "att: softmax done", 14: "att: scores+PV", 15: "att: item end",
          # inside gate/up and down (csrc MK_PROBE): activation staged, first stage in smem / done, last stage in
          # smem, end
          20: "gu: x staged", 21: "gu: stage 0 ready", 22: "gu: stage 0 done", 23: "gu: last ready", 24: "gu: end",
          25: "dn: x staged", 26: "dn: stage 0 ready", 27: "dn: stage 0 done", 28: "dn: last ready", 29: "dn: end"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=140)
    ap.add_argument("--weights", default="bf16", help="a label of megakernel_check.WEIGHT_LABELS (see compress)")
    ap.add_argument("--threads", type=int, default=None, help="trace the search's best plan at this block size "
                                                                 "(default: the stored or searched plan)")
    a = ap.parse_args()
    from megakernel_check import compress
    for name in a.shapes.split(","):
        model = compress(random_model(name, device="cuda"), a.weights)
        plan = None
        if a.threads:
            from egt.megakernel.runtime import weight_kinds
            from egt.megakernel.search import search
            plan = search(model.shape, 1, "device", weights=weight_kinds(model, model.dtype), max_plans=1,
                          thread_options=(a.threads,))[0]
        dec = MegaKernelDecoder(model, batch=1, trace_layer=a.layer, plan=plan)
        cache = model.setup_cache(1, a.ctx + 64)
        dec.set_inputs([1], [a.ctx], [0], a.ctx)
        for _ in range(10):
            dec.launch(cache, logits=False, advance=True)
        dec.check()
        t = dec.trace.cpu().double()
        t0 = t[:, 0].min()
        rel = (t - t0) / 1e3
        print(f"== {name} {a.weights} {dec.plan.threads} threads, layer {a.layer} (us from earliest qkv-wait start) ==")
        for i, p in POINTS.items():
            col = rel[t[:, i] > 0, i].sort().values  # blocks that stamped this point
            if len(col):
                print(f"  {p:18s} min {col[0]:7.2f}  med {col[len(col) // 2]:7.2f}  max {col[-1]:7.2f}  "
                      f"({len(col)} blocks)")
        del model, dec, cache
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
