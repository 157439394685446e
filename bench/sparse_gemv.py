"""Sparse (2:4, 1:4) vs dense INT4 GEMV at decode batches 1-16 (GPU only), same run, same card.

    python bench/sparse_gemv.py [--batches 1,2,4,8,16]  (prints a table with fp16 cuBLAS beside; the committed
                                                         batch-1 figures come from bench/quant_kernels.py, which
                                                         times every kernel in one run)
    python bench/sparse_gemv.py --sweep [--batches ...] (also times every (1, splits, warps) config of each kernel:
                                                         SWEEP lines with the heuristic's pick flagged, then a
                                                         table of its pick against the best)
    ncu ... python bench/sparse_gemv.py --profile [--baseline-so PATH]
                                                        (one launch of each kernel at batch 1, plus fp16 cuBLAS and a
                                                         same-size copy, then the same launches of the baseline
                                                         library if given, for Nsight Compute; no timing)
Timing and floors as in bench/quant_kernels.py (bench/common.py helpers).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import copy_bandwidth, device_info  # noqa: E402
from quant_kernels import Baseline, K, make, nbytes, time_fp16, time_kernel  # noqa: E402

SHAPES = [(8960, 1536), (1536, 8960), (1536, 1536)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--baseline-so", default=None)
    a = ap.parse_args()
    if a.profile:
        return profile(Baseline(a.baseline_so) if a.baseline_so else None)
    info = device_info()
    bw = copy_bandwidth()
    print(f"{info['card']} {info['date']}: copy bandwidth {bw:.0f} GB/s")
    print("| batch | weight | fp16 cuBLAS us | dense us | 2:4 us | 2:4 vs dense | 1:4 us | 1:4 vs dense |")
    print("|---|---|---|---|---|---|---|---|")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    sweep = []
    for b in map(int, a.batches.split(",")):
        for n_out, k_in in SHAPES:
            x = torch.randn(b, k_in, device="cuda", dtype=torch.float16)
            us = {}
            for n in (4, 2, 1):
                if K.supports(k_in, n, b):
                    w = make(n_out, k_in, n, 128, False, n_out + n)
                    us[n] = time_kernel(x, w, n, 128)
                    if a.sweep:
                        pick = K.heuristic_config(n_out, k_in * n // 4, b, n, sms, 128)
                        for splits in (1, 2, 3, 4, 6, 8):
                            for warps in K.WARPS:
                                t = time_kernel(x, w, n, 128, config=(1, splits, warps))
                                r = {"batch": b, "N": n_out, "K": k_in, "n": n, "config": [1, splits, warps],
                                     "us": round(t, 2), "pick": [1, splits, warps] == list(pick)}
                                sweep.append(r)
                                print("SWEEP", r, flush=True)
                    del w
            fp16 = time_fp16(x, n_out, k_in)
            print(f"| {b} | {n_out}x{k_in} | {fp16:.2f} | {us[4]:.2f} | {us[2]:.2f} | {us[4] / us[2]:.2f}x | {us[1]:.2f} | "
                  f"{us[4] / us[1]:.2f}x |", flush=True)
    if sweep:
        print("| batch | weight | n | heuristic config | us | best config | us |")
        print("|---|---|---|---|---|---|---|")
        for key in dict.fromkeys((r["batch"], r["N"], r["K"], r["n"]) for r in sweep):
            rs = [r for r in sweep if (r["batch"], r["N"], r["K"], r["n"]) == key]
            pick = next(r for r in rs if r["pick"]) if any(r["pick"] for r in rs) else None
            best = min(rs, key=lambda r: r["us"])
            print(f"| {key[0]} | {key[1]}x{key[2]} | {key[3]} | {pick and pick['config']} | {pick and pick['us']} | "
                  f"{best['config']} | {best['us']} |")
    return 0


def profile(base=None) -> int:
    """One launch per kernel (weights fresh, so nothing is in L2 beyond what ncu's cache control leaves)."""
    for n_out, k_in in SHAPES[:2]:
        x = torch.randn(1, k_in, device="cuda", dtype=torch.float16)
        for n in (4, 2, 1):
            w = make(n_out, k_in, n, 128, False, n_out + n)
            K.w4_gemv(x, w[0], w[1], w[2], w[3], n, 128)
            if base is not None:
                base(x, w[0], w[1], w[2], w[3], n, 128)
            if n == 4:
                nb = nbytes(*w)
                src = torch.empty(nb // 2, dtype=torch.uint8, device="cuda")
                torch.empty_like(src).copy_(src)  # a same-size copy kernel
        w16 = torch.randn(n_out, k_in, device="cuda", dtype=torch.float16)
        torch.matmul(x, w16.T)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
