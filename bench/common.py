"""Shared GPU benchmark helpers: device description, copy bandwidth, CUDA-graph timing with weight rotation.

Contract:
- `device_info()` -> dict(card, nvidia_smi, torch, cuda, date): what every result file records.
- `copy_bandwidth(nbytes=1 GiB)` -> GB/s of a large device-to-device copy, counting bytes read + written (the
  memory ceiling; floor of a kernel = its bytes / this).
- `copy_same_size(nbytes)` -> GB/s of copies that move `nbytes` in total (nbytes/2 read + nbytes/2 written), timed
  exactly like a kernel (one CUDA graph over enough distinct buffers to defeat L2): what a "perfect" kernel of
  that size could do in a standalone launch.
- `time_graph(fns, reps)` -> median microseconds per call of one CUDA graph that calls every fn once (launch gaps
  removed; host launch cost excluded).
- `copies_for(nbytes)` -> how many distinct copies of an operand of nbytes a timing must rotate over so that the
  total exceeds 4x the card's L2 (each call then streams its operand from HBM).
- `time_decode_steps(dec, cache, batch, ctx)` -> (median, sorted) ms per MegaKernel decode step: one launch per
  step with device-fed tokens, every timed run restarting at context `ctx`.
"""
from __future__ import annotations

import statistics
import subprocess
import time

import torch


def device_info() -> dict:
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        smi = ""
    return {"card": torch.cuda.get_device_name(), "nvidia_smi": smi, "torch": torch.__version__,
            "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def l2_bytes() -> int:
    return getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)


def copies_for(nbytes: int) -> int:
    return max(4, -(-4 * l2_bytes() // max(nbytes, 1)))


def time_graph(fns, reps: int = 9) -> float:
    """Median microseconds per function call of a CUDA graph that calls every fn once."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns[:2]:
            f()  # first use (build, load, scratch allocation) outside the capture
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):  # the stream the warm-up used (per-stream scratch is already there)
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
    del g
    return statistics.median(times)


def copy_bandwidth(nbytes: int = 1 << 30, reps: int = 10) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1000)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(times) / 1e9


def copy_same_size(nbytes: int) -> float:
    half = max(nbytes // 2, 16)
    n = copies_for(nbytes)
    srcs = [torch.empty(half, dtype=torch.uint8, device="cuda") for _ in range(n)]
    dsts = [torch.empty(half, dtype=torch.uint8, device="cuda") for _ in range(n)]
    us = time_graph([lambda s=s, d=d: d.copy_(s) for s, d in zip(srcs, dsts)])
    del srcs, dsts
    return 2 * half / (us * 1e-6) / 1e9


def time_decode_steps(dec, cache, batch: int, ctx: int, n: int = 100, reps: int = 5, warmup: int = 5):
    """ms per decode step of a MegaKernelDecoder: `warmup` launches, then `reps` runs of `n` launches (advance=True:
    each step feeds its argmax to the next), every run restarting at context `ctx`, so the cache needs rows up to
    ctx + max(n, warmup). Returns (median, sorted times)."""
    def start():
        dec.set_inputs([1] * batch, [ctx] * batch, [0] * batch, ctx)

    start()
    for _ in range(warmup):
        dec.launch(cache, logits=False, advance=True)
    dec.check()
    ts = []
    for _ in range(reps):
        start()
        s, e = torch.cuda.Event(True), torch.cuda.Event(True)
        s.record()
        for _ in range(n):
            dec.launch(cache, logits=False, advance=True)
        e.record()
        dec.check()
        ts.append(s.elapsed_time(e) / n)
    ts.sort()
    return ts[len(ts) // 2], ts
