"""W4A16 GEMV kernels (dense INT4, 2:4 and 1:4 sparse INT4) beside copy bandwidth and fp16 cuBLAS, one run, one card.

Run on the GPU machine:  python bench/quant_kernels.py --out-dir bench/results [--baseline-so PATH]
1. Isolated calls, per weight shape [N out x K in] and batch M, in the same process on the same card:
    copy          a copy moving the same bytes as the call (graph of rotated copies) -> "% of same-size copy"
    fp16 cuBLAS   torch.matmul(x, W16.T)
    dense INT4    egt.kernels.w4_gemv n=4 (g128 asymmetric; at M=1 also g128 sym, g32 asym, per-channel sym)
    2:4, 1:4      egt.kernels.w4_gemv n=2 / n=1 (INT4 g128 asymmetric kept values + 2-bit indices), M=1
    PDL           at M=1 the same graph with programmatic dependent launch (consecutive independent calls overlap)
    before        --baseline-so: the previous kernel library (built from an earlier commit's w4_gemv.cu), same run
   Every call is one node of a CUDA graph that rotates over > 4x L2 of distinct weight copies (weights stream
   from HBM); median of 9 replays, per call. A config sweep (split-K x warps) at M=1 checks the heuristic.
2. Layer chain: the 7 projections of a qwen2.5-1.5b layer (q 1536x1536, k/v 256x1536, o 1536x1536, gate/up
   8960x1536, down 1536x8960) x 28 layers with distinct weights, each projection reading the previous one's output
   (q, k, v <- layer input; o <- q; gate, up <- o; down <- gate; next layer <- down), one CUDA graph: dense INT4,
   2:4 and 1:4 with and without PDL, the same chain as plain copies of the same bytes, and fp16 cuBLAS. Reported
   per layer: time, bytes / time, % of copy bandwidth, floor.
floor = bytes / copy bandwidth (1 GiB device copy, read + write, measured at start and end).
Writes quant_kernels.{json,md} and sparse_kernels.{json,md} into --out-dir.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from common import copies_for, copy_bandwidth, copy_same_size, device_info, time_graph  # noqa: E402
from egt import kernels as K  # noqa: E402
from egt.quant.packing import pack  # noqa: E402
from egt.quant.quantizer import quantize_groups  # noqa: E402
from egt.sparsify import pattern as P  # noqa: E402

MAIN = [(1536, 8960), (8960, 1536), (1536, 1536)]
SMALL = [(576, 1536), (1536, 576)]
# qwen2.5-1.5b decoder layer: (name, out, in, input) in execution order; input = the projection whose output it reads
LAYER = [("q", 1536, 1536, "in"), ("k", 256, 1536, "in"), ("v", 256, 1536, "in"), ("o", 1536, 1536, "q"),
         ("gate", 8960, 1536, "o"), ("up", 8960, 1536, "o"), ("down", 1536, 8960, "gate")]
LAYERS = 28
KINDS = {4: "dense int4", 2: "2:4 int4", 1: "1:4 int4"}


def nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def make(n_out, k_in, n, group, sym, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n_out, k_in, device="cuda", generator=g) * 0.02
    idx = None
    if n != 4:
        wc = w.cpu()  # pattern.compact builds its position table on the CPU
        w, i = P.compact(wc, P.magnitude_mask(wc, n), n)
        w, idx = w.cuda(), P.pack_indices(i).cuda()
    qg = quantize_groups(w, 4, group, sym)
    return pack(qg.q, 4), idx, qg.scale, qg.offset


class Baseline:
    """The previous kernel library (an earlier commit's w4_gemv.cu built as a .so), called with its own ABI and
    launch heuristic, so before/after figures come from the same run on the same card."""

    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        self.lib.egt_w4_gemv.argtypes = [ctypes.POINTER(K._Params)] + [ctypes.c_int] * 5 + [ctypes.c_void_p]
        self.lib.egt_w4_gemv.restype = ctypes.c_int
        self.path = path

    @staticmethod
    def config(out_f, kept, m, n, sms):  # the v7 heuristic (bench/results/quant_kernels.notes.md)
        nchunks = -(-kept // 128)
        warps = 4 if -(-out_f // 16) >= 2 * sms else (8 if nchunks <= 16 else 16)
        splits, units = 1, 16 * (1 if n == 4 else 4 // n)
        while m * -(-nchunks // splits) * units * 16 > 96 * 1024:
            splits += 1
        return splits, warps

    def __call__(self, x, qw, idx, sc, of, n, group):
        m, in_f = x.shape
        kept, out_f = in_f * n // 4, qw.shape[0]
        splits, warps = self.config(out_f, kept, m, n, torch.cuda.get_device_properties(0).multi_processor_count)
        nchunks = -(-kept // 128)
        cps = -(-nchunks // splits)
        splits = -(-nchunks // cps)
        ng, gshift = K._gshift(kept, group)
        y = torch.empty(m, out_f, device=x.device, dtype=x.dtype)
        stream = torch.cuda.current_stream().cuda_stream
        ws, cnt = K._scratch_for(0, stream, splits * m * out_f if splits > 1 else 0, -(-out_f // 16))
        p = K._Params(x.data_ptr(), qw.data_ptr(), 0 if idx is None else idx.data_ptr(), sc.data_ptr(),
                      0 if of is None else of.data_ptr(), y.data_ptr(), ws.data_ptr(), cnt.data_ptr(),
                      m, out_f, in_f, kept, qw.shape[1], ng, gshift, splits, cps)
        err = self.lib.egt_w4_gemv(ctypes.byref(p), 0, K.MODE[n], int(of is None), 1, warps, ctypes.c_void_p(stream))
        if err:
            raise RuntimeError(f"baseline kernel failed: {err}")
        return y


def time_kernel(x, weights, n, group, config=None, pdl=False, fn=None):
    """us per call, rotating over copies of the packed weight (fn: another implementation, e.g. the baseline)."""
    per = nbytes(*weights)
    copies = [weights] + [tuple(None if t is None else t.clone() for t in weights) for _ in range(copies_for(per) - 1)]
    if fn is None:
        fns = [lambda c=c: K.w4_gemv(x, c[0], c[1], c[2], c[3], n, group, config, pdl=pdl) for c in copies]
    else:
        fns = [lambda c=c: fn(x, c[0], c[1], c[2], c[3], n, group) for c in copies]
    us = time_graph(fns)
    del copies, fns
    return us


def time_fp16(x, n_out, k_in):
    w = torch.randn(n_out, k_in, device="cuda", dtype=torch.float16)
    ws = [w] + [torch.randn_like(w) for _ in range(copies_for(nbytes(w)) - 1)]
    us = time_graph([lambda w=w: torch.matmul(x, w.T) for w in ws])
    del ws
    return us


def row(kind, n_out, k_in, m, group, sym, us, nb, bw, same, fp16_us, config):
    gbps = nb / (us * 1e-6) / 1e9
    return {"kernel": kind, "N": n_out, "K": k_in, "M": m, "group": group, "sym": sym, "config": list(config),
            "us": round(us, 2), "bytes": nb, "floor_us": round(nb / (bw * 1e9) * 1e6, 2), "GBps": round(gbps, 1),
            "of_copy": round(gbps / bw, 3), "copy_same_size_GBps": round(same, 1), "of_copy_same": round(gbps / same, 3),
            "fp16_us": round(fp16_us, 2), "speedup_vs_fp16": round(fp16_us / us, 2)}


def bench(quick: bool, base: Baseline | None):
    torch.manual_seed(0)
    bw = copy_bandwidth()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows, sweep = [], []
    for (n_out, k_in) in MAIN:
        for m in ((1,) if quick else (1, 4, 16)):
            x = torch.randn(m, k_in, device="cuda", dtype=torch.float16)
            fp16_us = time_fp16(x, n_out, k_in)
            variants = [(4, 128, False)]
            if m == 1:
                variants += [(2, 128, False), (1, 128, False)]
                if not quick:
                    variants += [(4, 128, True), (4, 32, False), (4, -1, True)]
            for n, group, sym in variants:
                if not K.supports(k_in, n, m):
                    continue
                wts = make(n_out, k_in, n, group, sym, seed=n_out + k_in + n)
                kept = k_in * n // 4
                cfg = K.heuristic_config(n_out, kept, m, n, sms, group)
                us = time_kernel(x, wts, n, group)
                nb = nbytes(*wts) + nbytes(x) + m * n_out * 2
                kind = KINDS[n]
                r = row(kind, n_out, k_in, m, group, sym, us, nb, bw, copy_same_size(nb), fp16_us, cfg)
                if m == 1:
                    r["pdl_us"] = _try(lambda: round(time_kernel(x, wts, n, group, pdl=True), 2))
                if base is not None and group == 128 and not sym:
                    r["before_us"] = round(time_kernel(x, wts, n, group, fn=base), 2)
                rows.append(r)
                print(json.dumps(r), flush=True)
                if m == 1 and group == 128 and not sym and (n_out, k_in) in MAIN and not quick:
                    nch = -(-kept // 128)
                    cands = sorted({(1, s, w) for s in (1, 2, 4) for w in K.WARPS if s <= nch})
                    for c in cands:
                        t = time_kernel(x, wts, n, group, c)
                        sweep.append({"kernel": kind, "N": n_out, "K": k_in, "config": list(c), "us": round(t, 2),
                                      "heuristic": list(c) == list(cfg)})
                del wts
    bw_end = copy_bandwidth()
    return bw, bw_end, rows, sweep


PDL_ERRORS: list[str] = []


def _try(f):
    """PDL timings: a failure (e.g. a driver that cannot capture programmatic launches) is recorded, not fatal."""
    try:
        return f()
    except Exception as e:  # noqa: BLE001
        PDL_ERRORS.append(repr(e)[:300])
        torch.cuda.synchronize()
        return None


def layer_chain(bw: float, base: Baseline | None):
    """Per-layer time of 28 qwen2.5-1.5b layers of GEMVs in one CUDA graph (see the module docstring)."""
    res = []

    def run_graph(build):
        """build(x) -> callable that enqueues the chain reading x and returns the last output."""
        x = torch.randn(1, 1536, device="cuda", dtype=torch.float16)
        chain = build(x)
        us = time_graph([chain], reps=9)  # one node list = the whole 28-layer chain
        return us / LAYERS

    for n in (4, 2, 1):
        shapes = {(o, i): make(o, i, n, 128, False, seed=o + i + n) for _, o, i, _ in LAYER}
        one = {name: tuple(None if t is None else t.clone() for t in shapes[(o, i)]) for name, o, i, _ in LAYER}
        del shapes
        layers = [one] + [{k: tuple(None if t is None else t.clone() for t in w) for k, w in one.items()}
                          for _ in range(LAYERS - 1)]
        nb = sum(nbytes(*w) for w in one.values()) + sum(2 * (i + o) for _, o, i, _ in LAYER)  # + x in, y out
        torch.cuda.synchronize()  # weights are written before any PDL launch reads them (the kernel's contract)

        def build(x, pdl=False, fn=None):
            def chain():
                h = x
                for lw in layers:
                    out = {"in": h}
                    for name, o, i, src in LAYER:
                        w = lw[name]
                        out[name] = (fn(out[src], *w, n, 128) if fn is not None
                                     else K.w4_gemv(out[src], *w, n, 128, pdl=pdl))
                    h = out["down"]
                return h
            return chain

        # PDL correctness under the exact bench conditions: the graph-free chain with and without PDL agree bit for bit
        x0 = torch.randn(1, 1536, device="cuda", dtype=torch.float16)
        same = _try(lambda: bool(torch.equal(build(x0, True)(), build(x0, False)())))
        for pdl in (False, True):
            us = _try(lambda: run_graph(lambda x: build(x, pdl))) if pdl else run_graph(lambda x: build(x, pdl))
            if us is None:
                continue
            res.append({"chain": f"{KINDS[n]}" + (" + PDL" if pdl else ""), "n": n, "pdl": pdl, "us_per_layer": round(us, 2),
                        "bytes_per_layer": nb, "pdl_matches_plain": same})
        if base is not None:
            us = run_graph(lambda x: build(x, fn=base))
            res.append({"chain": f"{KINDS[n]} (before)", "n": n, "pdl": False, "us_per_layer": round(us, 2),
                        "bytes_per_layer": nb})
        # The same bytes as plain copies (half read, half written), one copy per projection.
        bufs = [[(torch.empty(max(nbytes(*w) // 2, 16), dtype=torch.uint8, device="cuda"),
                  torch.empty(max(nbytes(*w) // 2, 16), dtype=torch.uint8, device="cuda")) for w in lw.values()]
                for lw in layers]

        def copies():
            for lb in bufs:
                for src, dst in lb:
                    dst.copy_(src)
        us = time_graph([copies]) / LAYERS
        res.append({"chain": f"copy of the {KINDS[n]} bytes", "n": n, "pdl": False, "us_per_layer": round(us, 2),
                    "bytes_per_layer": sum(2 * (nbytes(*w) // 2) for w in one.values())})
        del layers, bufs, one
        torch.cuda.empty_cache()
    w16 = [{name: torch.randn(o, i, device="cuda", dtype=torch.float16) * 0.02 for name, o, i, _ in LAYER}
           for _ in range(LAYERS)]
    x16 = torch.randn(1, 1536, device="cuda", dtype=torch.float16)

    def cublas():
        h = x16
        for lw in w16:
            out = {"in": h}
            for name, o, i, src in LAYER:
                out[name] = torch.matmul(out[src], lw[name].T)
            h = out["down"]
        return h
    us = time_graph([cublas]) / LAYERS
    res.append({"chain": "fp16 cuBLAS", "n": 0, "pdl": False, "us_per_layer": round(us, 2),
                "bytes_per_layer": sum(2 * o * i + 2 * (o + i) for _, o, i, _ in LAYER)})
    del w16
    torch.cuda.empty_cache()
    for r in res:
        r["GBps"] = round(r["bytes_per_layer"] / (r["us_per_layer"] * 1e-6) / 1e9, 1)
        r["of_copy"] = round(r["GBps"] / bw, 3)
        r["floor_us"] = round(r["bytes_per_layer"] / (bw * 1e9) * 1e6, 2)
    return res


def _pct(v):
    return f"{v:.0%}"


def write(out_dir: Path, info, bw, bw_end, rows, sweep, chain, command, base_desc):
    res = dict(info, command=command, pdl_errors=PDL_ERRORS, copy_GBps_start=round(bw, 1), copy_GBps_end=round(bw_end, 1), rows=rows,
               sweep=sweep, chain=chain, baseline=base_desc)
    (out_dir / "quant_kernels.json").write_text(json.dumps(res, indent=1))
    head = [f"Card: **{info['card']}** ({info['nvidia_smi']}), {info['date']}, torch {info['torch']}. "
            f"Command: `{command}`. Copy bandwidth (1 GiB device copy, read+write): {bw:.0f} GB/s at start, "
            f"{bw_end:.0f} GB/s at end. floor = bytes / copy bandwidth. "
            f"'before' = {base_desc or 'not measured'} (same run, same card).", ""]
    find = lambda kind, nn, kk, m=1, g=128, sym=False: next(  # noqa: E731
        (r for r in rows if (r["kernel"], r["N"], r["K"], r["M"], r["group"], r["sym"]) == (kind, nn, kk, m, g, sym)), None)
    ch = {r["chain"]: r for r in chain}
    # Goals, computed from this run's figures.
    goals = ["## Goals (computed from this run)", ""]
    for nn, kk in MAIN:
        d = find("dense int4", nn, kk)
        if d:
            goals.append(f"- Issue 3, dense INT4 {nn}x{kk} at M=1, isolated call: {_pct(d['of_copy'])} of copy bandwidth "
                         f"(goal 75%: **{'met' if d['of_copy'] >= 0.75 else 'missed'}**); {_pct(d['of_copy_same'])} "
                         f"of a same-size copy timed the same way; with PDL back-to-back "
                         f"{_pct(d['bytes'] / (d['pdl_us'] * 1e-6) / 1e9 / bw) if d.get('pdl_us') else 'n/a'} of copy bandwidth.")
    for pdl in ("", " + PDL"):
        c = ch.get("dense int4" + pdl)
        if c:
            goals.append(f"- Issue 3, dense INT4 layer chain{pdl}: {_pct(c['of_copy'])} of copy bandwidth "
                         f"(goal 75%: **{'met' if c['of_copy'] >= 0.75 else 'missed'}**); the chain of plain copies "
                         f"of the same bytes reaches {_pct(ch['copy of the dense int4 bytes']['of_copy'])}.")
    for kind, goal in (("2:4 int4", 1.25), ("1:4 int4", 1.8)):
        for nn, kk in MAIN:
            d, sp = find("dense int4", nn, kk), find(kind, nn, kk)
            if d and sp:
                r1 = d["us"] / sp["us"]
                r2 = d["pdl_us"] / sp["pdl_us"] if d.get("pdl_us") and sp.get("pdl_us") else float("nan")
                goals.append(f"- Issue 4, {kind} vs dense INT4 {nn}x{kk} isolated: {r1:.2f}x (PDL back-to-back "
                             f"{r2:.2f}x; goal {goal}x: **{'met' if r1 >= goal else 'missed'}** isolated, "
                             f"**{'met' if r2 >= goal else 'missed'}** back-to-back).")
        for pdl in ("", " + PDL"):
            d, sp = ch.get("dense int4" + pdl), ch.get(kind + pdl)
            if d and sp:
                r = d["us_per_layer"] / sp["us_per_layer"]
                goals.append(f"- Issue 4, {kind} vs dense INT4, layer chain{pdl}: {r:.2f}x (goal {goal}x: "
                             f"**{'met' if r >= goal else 'missed'}**; bytes ratio "
                             f"{d['bytes_per_layer'] / sp['bytes_per_layer']:.2f}x).")
    lines = ["# W4A16 GEMV (CUDA C++, egt/kernels/w4_gemv.cu): bandwidth", ""] + head + goals + [
        "", "## Layer chain: 28 x (q, k, v, o, gate, up, down) of qwen2.5-1.5b, batch 1, one CUDA graph", "",
        "Each projection reads the previous one's output (q, k, v <- layer input; o <- q; gate, up <- o; down <- gate; "
        "next layer <- down); distinct weights per layer (> 4x L2 in total). us = graph time / 28.", "",
        "| chain | us / layer | bytes / layer | GB/s | % of copy bw | floor us | vs copy chain of same bytes |",
        "|---|---|---|---|---|---|---|"]
    for r in chain:
        cp = ch.get(f"copy of the {KINDS.get(r['n'], '')} bytes") if r["n"] else None
        rel = f"{cp['us_per_layer'] / r['us_per_layer']:.2f}x" if cp and not r["chain"].startswith("copy") else ""
        lines.append(f"| {r['chain']} | {r['us_per_layer']} | {r['bytes_per_layer'] / 1e6:.2f} MB | {r['GBps']} | "
                     f"{_pct(r['of_copy'])} | {r['floor_us']} | {rel} |")
    if chain and not all(r.get("pdl_matches_plain", True) for r in chain):
        lines.append("\n**PDL chain output differed from the plain chain: PDL figures are not valid.**")
    if PDL_ERRORS:
        lines.append("\nPDL errors: " + "; ".join(PDL_ERRORS))
    lines += ["", "## Isolated calls: each call one node of a CUDA graph rotating over > 4x L2 of weight copies; median of 9 replays",
              "", "'same-size copy' = a copy moving the same bytes, timed the same way; 'PDL' = the same graph launched "
              "with programmatic dependent launch (consecutive calls overlap; what a chain of this shape costs).", "",
              "| N (out) | K (in) | M | kernel | group | sym | us | before us | PDL us | floor us | % of copy | % of same-size copy | fp16 cuBLAS us | vs fp16 | config |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = "ch" if r["group"] == -1 else r["group"]
        lines.append(f"| {r['N']} | {r['K']} | {r['M']} | {r['kernel']} | {g} | {r['sym']} | {r['us']} | "
                     f"{r.get('before_us', '')} | {r.get('pdl_us', '')} | {r['floor_us']} | "
                     f"{_pct(r['of_copy'])} | {_pct(r['of_copy_same'])} | {r['fp16_us']} | {r['speedup_vs_fp16']}x | "
                     f"{tuple(r['config'])} |")
    if sweep:
        lines += ["", "## Config sweep at M=1 (row tiles, split-K, warps per block); * = the heuristic's pick", "",
                  "| kernel | N x K | configs (us) |", "|---|---|---|"]
        keyset = sorted({(s_["kernel"], s_["N"], s_["K"]) for s_ in sweep}, key=str)
        for kind, n_out, k_in in keyset:
            items = [s_ for s_ in sweep if (s_["kernel"], s_["N"], s_["K"]) == (kind, n_out, k_in)]
            best = min(items, key=lambda s_: s_["us"])
            cells = ", ".join(f"{tuple(s_['config'])}{'*' if s_['heuristic'] else ''} {s_['us']}" for s_ in items)
            lines.append(f"| {kind} | {n_out}x{k_in} | best {tuple(best['config'])} {best['us']} us; {cells} |")
    (out_dir / "quant_kernels.md").write_text("\n".join(lines) + "\n")
    # Sparse view: speed-ups over dense INT4 measured in this run.
    sp = []
    for n_out, k_in in MAIN:
        d = find("dense int4", n_out, k_in)
        if d is None:
            continue
        ent = {"N": n_out, "K": k_in, "dense_us": d["us"], "dense_pdl_us": d.get("pdl_us"), "dense_floor_us": d["floor_us"],
               "dense_before_us": d.get("before_us"), "fp16_us": d["fp16_us"]}
        for kind, key in (("2:4 int4", "2:4"), ("1:4 int4", "1:4")):
            s_ = find(kind, n_out, k_in)
            if s_:
                copy_us = lambda r: r["bytes"] / r["copy_same_size_GBps"] / 1e3  # noqa: E731
                ent[key] = {"us": s_["us"], "pdl_us": s_.get("pdl_us"), "before_us": s_.get("before_us"),
                            "floor_us": s_["floor_us"], "of_copy": s_["of_copy"], "of_copy_same": s_["of_copy_same"],
                            "speedup_vs_dense": round(d["us"] / s_["us"], 2),
                            "speedup_vs_dense_pdl": round(d["pdl_us"] / s_["pdl_us"], 2) if s_.get("pdl_us") else None,
                            "copy_bound": round(copy_us(d) / copy_us(s_), 2),
                            "byte_ratio": round(d["bytes"] / s_["bytes"], 2)}
        sp.append(ent)
    (out_dir / "sparse_kernels.json").write_text(json.dumps(dict(info, command=command, copy_GBps_start=round(bw, 1),
                                                                 rows=sp, chain=chain), indent=1))
    slines = ["# Sparse W4A16 GEMV: 2:4 and 1:4 INT4 against dense INT4 (same run, batch 1)", ""] + head + [
        "Goals (issue 4): 2:4 >= 1.25x and 1:4 >= 1.8x dense INT4. 'bytes' = dense bytes / sparse bytes (the ideal "
        "speed-up of a bandwidth-bound kernel with no fixed cost); 'copy' = time of a same-size copy of the dense bytes / "
        "of the sparse bytes (what a standalone launch of that size can gain at best on this card); PDL = back-to-back "
        "calls of the same shape with programmatic dependent launch.", "",
        "| weight [out x in] | dense INT4 us (PDL) | 2:4 us (PDL) | 2:4 vs dense (PDL) | 2:4 bound: bytes / copy | "
        "1:4 us (PDL) | 1:4 vs dense (PDL) | 1:4 bound: bytes / copy | before: dense / 2:4 / 1:4 us |",
        "|---|---|---|---|---|---|---|---|---|"]
    for e in sp:
        a, b = e.get("2:4", {}), e.get("1:4", {})
        slines.append(f"| {e['N']}x{e['K']} | {e['dense_us']} ({e['dense_pdl_us']}) | {a.get('us', '-')} ({a.get('pdl_us', '-')}) | "
                      f"{a.get('speedup_vs_dense', '-')}x ({a.get('speedup_vs_dense_pdl', '-')}x) | "
                      f"{a.get('byte_ratio', '-')}x / {a.get('copy_bound', '-')}x | {b.get('us', '-')} ({b.get('pdl_us', '-')}) | "
                      f"{b.get('speedup_vs_dense', '-')}x ({b.get('speedup_vs_dense_pdl', '-')}x) | "
                      f"{b.get('byte_ratio', '-')}x / {b.get('copy_bound', '-')}x | "
                      f"{e.get('dense_before_us') or '-'} / {a.get('before_us') or '-'} / {b.get('before_us') or '-'} |")
    slines += ["", "Layer chain (per layer, 28 layers in one CUDA graph; see quant_kernels.md):", "",
               "| chain | us / layer | vs dense INT4 (same PDL setting) |", "|---|---|---|"]
    for r in chain:
        if r["n"] in (1, 2):
            d = ch.get("dense int4" + (" + PDL" if r["pdl"] else "") + (" (before)" if "(before)" in r["chain"] else ""))
            rel = f"{d['us_per_layer'] / r['us_per_layer']:.2f}x" if d and not r["chain"].startswith("copy") else "-"
            slines.append(f"| {r['chain']} | {r['us_per_layer']} | {rel} |")
    (out_dir / "sparse_kernels.md").write_text("\n".join(slines) + "\n")
    return slines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--baseline-so", default=None, help="previous kernel library (.so) for same-run 'before' figures")
    ap.add_argument("--baseline-desc", default="", help="what --baseline-so is (commit, build command)")
    ap.add_argument("--quick", action="store_true", help="M=1, the three 1.5B-class shapes, g128 asym only")
    ap.add_argument("--no-chain", action="store_true")
    a = ap.parse_args(argv)
    if not K.available():
        print("needs CUDA and nvcc (or a built kernel library)", file=sys.stderr)
        return 2
    base = Baseline(a.baseline_so) if a.baseline_so else None
    info = device_info()
    bw, bw_end, rows, sweep = bench(a.quick, base)
    chain = [] if a.no_chain else layer_chain(bw, base)
    for r in chain:
        print(json.dumps(r), flush=True)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python bench/quant_kernels.py" + (" --quick" if a.quick else "") + (" --no-chain" if a.no_chain else "") + (
        " --baseline-so <v7 .so>" if base else "")
    lines = write(out, info, bw, bw_end, rows, sweep, chain, cmd, a.baseline_desc if base else "")
    print((out / "quant_kernels.md").read_text())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
