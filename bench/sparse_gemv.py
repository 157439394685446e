"""Sparse (2:4, 1:4) vs dense INT4 GEMV at decode batch sizes, beside the copy-bandwidth floor (GPU only).

    python bench/sparse_gemv.py --out bench/results/sparse_kernels.json

For every 1.5B-class weight shape [out, in] (8960x1536 gate/up, 1536x8960 down, 1536x1536 q/o), in one run on one
card, it times:
- the dense INT4 kernel of the quantization issue (`egt.quant.w4a16_matmul`, g128 asymmetric) - the baseline;
- egt.sparsify's kernel with n=4 (the same code as the sparse kernels, dense weight: isolates the format's effect);
- egt.sparsify's 2:4 and 1:4 INT4 kernels (select variant; the gather variant too);
- fp16 cuBLAS (torch.matmul) for reference.
Timing: each variant is replayed from one CUDA graph that calls it on R different weight copies (together > 4x the
L2 cache, so weights stream from HBM as in a decode step), median over repeats, per call. Floor = bytes the call
must read / measured device-to-device copy bandwidth (read + write bytes of a 1 GiB copy per second).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from egt.quant import w4a16_matmul  # noqa: E402
from egt.quant.packing import pack  # noqa: E402
from egt.quant.quantizer import quantize_groups  # noqa: E402
from egt.sparsify import pattern as P  # noqa: E402
from egt.sparsify.kernels import sparse_w4_gemv  # noqa: E402

SHAPES = [(8960, 1536), (1536, 8960), (1536, 1536)]
GROUP = 128


def copy_bandwidth(nbytes: int = 1 << 30, reps: int = 20) -> float:
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * nbytes / statistics.median(times)


def graph_time(fn_list, repeats: int = 15) -> float:
    """Median seconds per call of the functions in fn_list, replayed back to back from one CUDA graph."""
    for f in fn_list[:2]:
        f()  # compile / autotune outside the capture
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fn_list:
            f()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fn_list:
            f()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        g.replay()
        en.record()
        torch.cuda.synchronize()
        times.append(st.elapsed_time(en) / 1e3 / len(fn_list))
    return statistics.median(times)


def make_weights(out_f: int, in_f: int, n: int, seed: int):
    """Packed INT4 weight of one variant (codes, indices, scales, offsets), built on CPU then moved."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.02
    if n == 4:
        vals, idx = w, None
    else:
        vals, idx = P.compact(w, P.magnitude_mask(w, n), n)
    qg = quantize_groups(vals, 4, GROUP, False)
    return (pack(qg.q, 4).cuda(), None if idx is None else P.pack_indices(idx).cuda(), qg.scale.cuda(),
            qg.offset.cuda())


def nbytes(t) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def bench_shape(out_f: int, in_f: int, batch: int, l2_bytes: int, variants: list[str], bw: float) -> dict:
    res = {}
    x = torch.randn(batch, in_f, device="cuda", dtype=torch.float16)
    for v in variants:
        n = {"dense int4 (egt.quant)": 4, "egt kernel n=4 (dense int4)": 4, "2:4 int4": 2, "2:4 int4 gather": 2,
             "1:4 int4": 1, "1:4 int4 gather": 1, "fp16 cuBLAS": 0}[v]
        if n == 0:
            base = torch.randn(out_f, in_f, device="cuda", dtype=torch.float16)
            per = nbytes(base)
        else:
            base = make_weights(out_f, in_f, n, seed=out_f * 7 + in_f + n)
            per = sum(nbytes(t) for t in base)
        reps = max(4, -(-4 * l2_bytes // per))  # copies: > 4x L2 in total
        if n == 0:
            copies = [base] + [torch.randn_like(base) for _ in range(reps - 1)]
            fns = [lambda w=w: torch.matmul(x, w.T) for w in copies]
        else:
            # Copies differ in bytes (clone + perturb the codes) so no cache line is shared between them.
            copies = [base]
            for r in range(1, reps):
                q = base[0].clone() ^ r
                copies.append((q,) + tuple(None if t is None else t.clone() for t in base[1:]))
            if v == "dense int4 (egt.quant)":
                fns = [lambda c=c: w4a16_matmul(x, c[0], c[2], c[3], GROUP, in_f) for c in copies]
            else:
                gather = v.endswith("gather")
                fns = [lambda c=c: sparse_w4_gemv(x, c[0], c[1], c[2], c[3], n, GROUP, gather=gather) for c in copies]
        t = graph_time(fns)
        read = per + nbytes(x)
        res[v] = {"us": t * 1e6, "bytes": read, "GBps": read / t / 1e9, "floor_us": read / bw * 1e6,
                  "pct_of_copy_bw": 100 * read / t / bw, "copies": reps}
        del copies, fns, base
        torch.cuda.empty_cache()
    ref = res.get("dense int4 (egt.quant)")
    for v, r in res.items():
        if ref:
            r["speedup_vs_dense_int4_quant"] = ref["us"] / r["us"]
        if "egt kernel n=4 (dense int4)" in res:
            r["speedup_vs_egt_n4"] = res["egt kernel n=4 (dense int4)"]["us"] / r["us"]
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sparse_kernels.json"))
    ap.add_argument("--batches", default="1,2,4,8")
    a = ap.parse_args()
    prop = torch.cuda.get_device_properties(0)
    l2 = getattr(prop, "L2_cache_size", 50 << 20)
    bw = copy_bandwidth()
    out = {"card": prop.name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": "python bench/sparse_gemv.py", "torch": torch.__version__, "copy_bandwidth_GBps": bw / 1e9,
           "l2_bytes": l2, "group": GROUP, "results": {}}
    import triton

    out["triton"] = triton.__version__
    print(f"{prop.name}: copy bandwidth {bw / 1e9:.0f} GB/s", flush=True)
    variants = ["dense int4 (egt.quant)", "egt kernel n=4 (dense int4)", "2:4 int4", "1:4 int4", "2:4 int4 gather",
                "1:4 int4 gather", "fp16 cuBLAS"]
    batches = [int(b) for b in a.batches.split(",")]
    for b in batches:
        for out_f, in_f in SHAPES:
            vs = variants if b == 1 else ["dense int4 (egt.quant)", "egt kernel n=4 (dense int4)", "2:4 int4", "1:4 int4"]
            if b > 1 and (out_f, in_f) != (8960, 1536):
                continue
            key = f"B={b} W[{out_f}x{in_f}]"
            out["results"][key] = bench_shape(out_f, in_f, b, l2, vs, bw)
            for v, r in out["results"][key].items():
                print(f"{key:22s} {v:30s} {r['us']:7.2f} us  {r['pct_of_copy_bw']:5.1f}% of copy bw  "
                      f"x{r.get('speedup_vs_dense_int4_quant', float('nan')):.2f} vs dense int4", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    Path(a.out).with_suffix(".table.md").write_text(table(out))
    return 0


def table(out: dict) -> str:
    lines = [f"{out['card']}, {out['date']}, torch {out['torch']}, triton {out['triton']}, copy bandwidth "
             f"{out['copy_bandwidth_GBps']:.0f} GB/s (read+write of a 1 GiB device copy), INT4 g{out['group']} asymmetric.",
             "", "| batch, weight [out x in] | kernel | us/call | floor us | % of copy bw | vs dense INT4 (egt.quant) | "
             "vs egt n=4 kernel |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, res in out["results"].items():
        for v, r in res.items():
            lines.append(f"| {key} | {v} | {r['us']:.2f} | {r['floor_us']:.2f} | {r['pct_of_copy_bw']:.1f} | "
                         f"{r.get('speedup_vs_dense_int4_quant', float('nan')):.2f}x | "
                         f"{r.get('speedup_vs_egt_n4', float('nan')):.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
