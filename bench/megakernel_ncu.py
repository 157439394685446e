"""One MegaKernel decode step for Nsight Compute: builds a random model of a shape with a weights label and runs
`--steps` launches; `ncu --launch-skip` picks one. Where the whole step's stalls sit, per SASS instruction:

    ncu --clock-control none -k egt_megakernel --launch-skip 5 --launch-count 1 --section WarpStateStats \
        --section SourceCounters -o mk python bench/megakernel_ncu.py --shape qwen2.5-1.5b --weights w4a16
    ncu -i mk.ncu-rep --page source --csv --print-source sass | gzip > ncu_source_sass.csv.gz

The SASS addresses map to source lines through `nvdisasm -g` of the cached kernel's cubin
(bench/results/megakernel/session15/run5.sh does all of it; ncu_regions.py there sums the samples by region).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from egt.models import random_model  # noqa: E402
from egt.megakernel.runtime import MegaKernelDecoder  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2.5-1.5b")
    ap.add_argument("--weights", default="w4a16", help="a label of megakernel_check.WEIGHT_LABELS")
    ap.add_argument("--ctx", type=int, default=140)
    ap.add_argument("--steps", type=int, default=6, help="launches in all (ncu --launch-skip picks one)")
    a = ap.parse_args()
    from megakernel_check import compress
    model = compress(random_model(a.shape, device="cuda"), a.weights)
    dec = MegaKernelDecoder(model, batch=1, timeout_s=120.0, kernel_timeout_s=60.0)  # replays are slow
    cache = model.setup_cache(1, a.ctx + a.steps + 1)
    dec.set_inputs([1], [a.ctx], [0], a.ctx)
    for _ in range(a.steps):
        dec.launch(cache, logits=False, advance=True)
        dec.check()
    print(f"{a.shape} {a.weights} plan {dec.plan.plan_hash()} threads {dec.plan.threads}: {a.steps} steps done")


if __name__ == "__main__":
    main()
