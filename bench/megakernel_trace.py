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

POINTS = ["qkv wait start", "qkv wait end", "qkv done", "attn start", "attn done", "attn wait end", "o done",
          "gateup wait end", "gateup done", "down wait end", "down done",
          # stamped by the blocks that run attention items, for their first item only
          "att: qkv ready", "att: q/k/v roped", "att: first K/V in", "att: scores+PV", "att: item end"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=140)
    ap.add_argument("--weights", default="bf16", help="bf16 or w4a16 (see megakernel_check.compress_int4)")
    a = ap.parse_args()
    for name in a.shapes.split(","):
        model = random_model(name, device="cuda")
        if a.weights == "w4a16":
            from megakernel_check import compress_int4
            compress_int4(model)
        dec = MegaKernelDecoder(model, batch=1, trace_layer=a.layer)
        cache = model.setup_cache(1, a.ctx + 64)
        dec.set_inputs([1], [a.ctx], [0], a.ctx)
        for _ in range(10):
            dec.launch(cache, logits=False, advance=True)
        dec.check()
        t = dec.trace.cpu().double()
        t0 = t[:, 0].min()
        rel = (t[:, :len(POINTS)] - t0) / 1e3
        print(f"== {name} {a.weights} layer {a.layer} (us from earliest qkv-wait start) ==")
        for i, p in enumerate(POINTS):
            col = rel[t[:, i] > 0, i].sort().values  # blocks that stamped this point
            if len(col):
                print(f"  {p:18s} min {col[0]:7.2f}  med {col[len(col) // 2]:7.2f}  max {col[-1]:7.2f}  "
                      f"({len(col)} blocks)")
        del model, dec, cache
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
