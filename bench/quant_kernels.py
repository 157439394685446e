"""Bandwidth of the W4A16 Triton kernel (egt.quant.kernels) beside a copy-bandwidth measurement, same run, same card.

Run on the GPU machine:  python bench/quant_kernels.py --out bench/results/quant_kernels.json
For each weight shape (out N, in K) and batch M it reports, per call:
    us            median time of one kernel call (CUDA graph of R calls, each on a different copy of the weights, so
                  nothing is served from the 50 MB L2; median of 7 graph replays)
    bytes         bytes the call must move: packed int4 weights + fp16 scales (+ offsets) + x + y
    GBps          bytes / time
    of_copy       GBps / the copy bandwidth measured in the same run (large device-to-device copy, read + write)
    of_copy_same  GBps / copy bandwidth of buffers of the same size, timed the same way (graph of R copies)
    fp16_us       cuBLAS fp16 x @ W^T of the same shape, timed the same way (the dense baseline)
The floor of a call is bytes / copy bandwidth; the goal (issue 3) is >= 75% of copy bandwidth at M = 1.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from egt.quant import kernels  # noqa: E402
from egt.quant.packing import pack  # noqa: E402
from egt.quant.quantizer import quantize_groups  # noqa: E402

L2_FLUSH_BYTES = 256 << 20  # rotate over >= 5x the H100's 50 MB L2


def time_graph(fns, reps=7) -> float:
    """Median microseconds per function call of a CUDA graph that calls every fn once."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns:
            f()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1000 / len(fns))
    return statistics.median(times)


def copy_bandwidth(nbytes=1 << 30) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1000)
    del src, dst
    return 2 * nbytes / statistics.median(times) / 1e9


def copy_bandwidth_same_size(nbytes: int) -> float:
    copies = max(4, -(-L2_FLUSH_BYTES // max(nbytes, 1)))
    half = max(nbytes // 2, 1)  # a copy of n/2 bytes reads n/2 and writes n/2: n bytes moved, like the kernel
    srcs = [torch.empty(half, dtype=torch.uint8, device="cuda") for _ in range(copies)]
    dsts = [torch.empty(half, dtype=torch.uint8, device="cuda") for _ in range(copies)]
    us = time_graph([lambda s=s, d=d: d.copy_(s) for s, d in zip(srcs, dsts)])
    return 2 * half / (us * 1e-6) / 1e9


def bench_shape(n, k, m, group, sym, bw):
    w = torch.randn(n, k, device="cuda") * 0.05
    qg = quantize_groups(w, 4, group, sym)
    qw = pack(qg.q, 4)
    wbytes = qw.numel() * 4 + qg.scale.numel() * 2 + (0 if sym else qg.offset.numel() * 2)
    copies = max(4, -(-L2_FLUSH_BYTES // wbytes))
    qws = [qw.clone() for _ in range(copies)]
    scs = [qg.scale.clone() for _ in range(copies)]
    ofs = [None if sym else qg.offset.clone() for _ in range(copies)]
    x = torch.randn(m, k, device="cuda").half()
    cfg, _ = kernels.best_config(x, qw, qg.scale, qg.offset, group, k)
    us = time_graph([lambda i=i: kernels.w4a16_matmul(x, qws[i], scs[i], ofs[i], group, k, config=cfg)
                     for i in range(copies)])
    del qws, scs, ofs
    w16 = w.half()
    c16 = max(4, -(-L2_FLUSH_BYTES // (w16.numel() * 2)))
    ws16 = [w16.clone() for _ in range(c16)]
    us16 = time_graph([lambda i=i: torch.matmul(x, ws16[i].T) for i in range(c16)])
    del ws16
    nbytes = wbytes + x.numel() * 2 + m * n * 2
    gbps = nbytes / (us * 1e-6) / 1e9
    same = copy_bandwidth_same_size(nbytes)
    return {"N": n, "K": k, "M": m, "group": group, "sym": sym, "config": list(cfg), "us": round(us, 2),
            "bytes": nbytes, "GBps": round(gbps, 1), "of_copy": round(gbps / bw, 3),
            "copy_same_size_GBps": round(same, 1), "of_copy_same": round(gbps / same, 3),
            "floor_us": round(nbytes / (bw * 1e9) * 1e6, 2), "fp16_us": round(us16, 2),
            "speedup_vs_fp16": round(us16 / us, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results/quant_kernels.json")
    p.add_argument("--quick", action="store_true", help="M=1 only, g128 asym only")
    a = p.parse_args(argv)
    if not kernels.available():
        print("needs CUDA and Triton", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    bw = copy_bandwidth()
    shapes = [(1536, 8960), (8960, 1536), (1536, 1536), (576, 1536), (1536, 576)]
    rows = []
    for n, k in shapes:
        for m in ((1,) if a.quick else (1, 4, 16)):
            variants = [(128, False)] if (a.quick or m > 1) else [(128, False), (128, True), (32, False), (-1, True)]
            for group, sym in variants:
                r = bench_shape(n, k, m, group, sym, bw)
                rows.append(r)
                print(json.dumps(r), flush=True)
    bw_end = copy_bandwidth()
    gpu = torch.cuda.get_device_name()
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,clocks.max.mem,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        smi = ""
    res = {"card": gpu, "nvidia_smi": smi, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": "python bench/quant_kernels.py" + (" --quick" if a.quick else ""),
           "torch": torch.__version__, "triton": __import__("triton").__version__,
           "copy_GBps_start": round(bw, 1), "copy_GBps_end": round(bw_end, 1), "rows": rows}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    lines = [f"# W4A16 kernel bandwidth ({gpu}, {res['date']})", "",
             f"Command: `{res['command']}`. Copy bandwidth (1 GiB device-to-device, read+write): "
             f"{bw:.0f} GB/s at start, {bw_end:.0f} GB/s at end. Weights rotate over >= 256 MB of copies "
             "(no L2 reuse); times are per call inside a CUDA graph.", "",
             "| N (out) | K (in) | M | group | sym | us | floor us | GB/s | of copy | of same-size copy | fp16 cuBLAS us | speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = "ch" if r["group"] == -1 else r["group"]
        lines.append(f"| {r['N']} | {r['K']} | {r['M']} | {g} | {r['sym']} | {r['us']} | {r['floor_us']} | "
                     f"{r['GBps']} | {r['of_copy']:.0%} | {r['of_copy_same']:.0%} | {r['fp16_us']} | "
                     f"{r['speedup_vs_fp16']}x |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
