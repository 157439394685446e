"""W4A16 GEMV kernels (dense INT4, 2:4 and 1:4 sparse INT4) beside copy bandwidth and fp16 cuBLAS, one run, one card.

Run on the GPU machine:  python bench/quant_kernels.py --out-dir bench/results
Per weight shape [N out x K in] and batch M it times, in the same process on the same card:
    copy          a copy moving the same bytes as the call (graph of rotated copies) -> "% of same-size copy"
    fp16 cuBLAS   torch.matmul(x, W16.T)
    dense INT4    egt.quant.w4a16_matmul (g128 asymmetric; at M=1 also g128 sym, g32 asym, per-channel sym)
    2:4, 1:4      egt.sparsify.sparse_w4_gemv (INT4 g128 asymmetric kept values + 2-bit indices), M=1
Every call is one node of a CUDA graph that rotates over > 4x L2 of distinct weight copies (weights stream from
HBM); median of 9 replays, per call. floor = bytes / copy bandwidth (1 GiB device copy, read + write, measured at
start and end). A config sweep (row tiles x split-K) at M=1 shows how far the shipped heuristic is from the best.
Writes quant_kernels.{json,md} and sparse_kernels.{json,md} into --out-dir; the "before" column is read from the
previous files there (Triton kernels, an earlier run: not a same-run ratio).
"""
from __future__ import annotations

import argparse
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


def time_kernel(x, weights, n, group, config=None):
    """us per call, rotating over copies of the packed weight."""
    per = nbytes(*weights)
    copies = [weights] + [tuple(None if t is None else t.clone() for t in weights) for _ in range(copies_for(per) - 1)]
    fns = [lambda c=c: K.w4_gemv(x, c[0], c[1], c[2], c[3], n, group, config) for c in copies]
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


def bench(quick: bool):
    torch.manual_seed(0)
    bw = copy_bandwidth()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows, sweep = [], []
    for (n_out, k_in) in MAIN + ([] if quick else SMALL):
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
                cfg = K.heuristic_config(n_out, kept, m, n, sms)
                us = time_kernel(x, wts, n, group)
                nb = nbytes(*wts) + nbytes(x) + m * n_out * 2
                kind = {4: "dense int4", 2: "2:4 int4", 1: "1:4 int4"}[n]
                r = row(kind, n_out, k_in, m, group, sym, us, nb, bw, copy_same_size(nb), fp16_us, cfg)
                rows.append(r)
                print(json.dumps(r), flush=True)
                if m == 1 and group == 128 and not sym and (n_out, k_in) in MAIN:
                    nch = -(-kept // 128)
                    cands = sorted({(1, s, w) for s in (1, 2, 3, 4, 6) for w in K.WARPS if s <= nch})
                    for c in cands:
                        t = time_kernel(x, wts, n, group, c)
                        sweep.append({"kernel": kind, "N": n_out, "K": k_in, "config": list(c), "us": round(t, 2),
                                      "heuristic": list(c) == list(cfg)})
                del wts
    bw_end = copy_bandwidth()
    return bw, bw_end, rows, sweep


def previous(out_dir: Path):
    """Earlier Triton figures (other run) keyed by (kernel, N, K, M, group, sym), if the old files are there."""
    before = {}
    try:
        old = json.loads((out_dir / "quant_kernels.json").read_text())
        for r in old["rows"]:
            if "kernel" not in r:  # the Triton-era layout (dense rows only)
                before[("dense int4", r["N"], r["K"], r["M"], r["group"], r["sym"])] = r["us"]
            elif r.get("before_triton_us") is not None:  # carried over by an earlier run of this script
                before[(r["kernel"], r["N"], r["K"], r["M"], r["group"], r["sym"])] = r["before_triton_us"]
    except Exception:
        pass
    try:
        old = json.loads((out_dir / "sparse_kernels.json").read_text())
        for key, res in old.get("results", {}).items():
            b, shape = key.split(" ")
            n_out, k_in = map(int, shape[2:-1].split("x"))
            for kind in ("2:4 int4", "1:4 int4"):
                if kind in res and b == "B=1":
                    before[(kind, n_out, k_in, 1, 128, False)] = round(res[kind]["us"], 2)
    except Exception:
        pass
    return before


def write(out_dir: Path, info, bw, bw_end, rows, sweep, before, command):
    for r in rows:
        r["before_triton_us"] = before.get((r["kernel"], r["N"], r["K"], r["M"], r["group"], r["sym"]),
                                           r.get("before_triton_us"))
    res = dict(info, command=command, copy_GBps_start=round(bw, 1), copy_GBps_end=round(bw_end, 1), rows=rows,
               sweep=sweep)
    (out_dir / "quant_kernels.json").write_text(json.dumps(res, indent=1))
    head = [f"Card: **{info['card']}** ({info['nvidia_smi']}), {info['date']}, torch {info['torch']}. "
            f"Command: `{command}`. Copy bandwidth (1 GiB device copy, read+write): {bw:.0f} GB/s at start, "
            f"{bw_end:.0f} GB/s at end. Each call is a node of one CUDA graph rotating over > 4x L2 of weight copies; "
            "median of 9 replays. floor = bytes / copy bandwidth; 'same-size copy' = a copy moving the same bytes, "
            "timed the same way. 'before (Triton)' = the previous Triton kernels, measured 2026-11-27 09:35-10:14 UTC on an "
            "NVIDIA H100 80GB HBM3 (another card and run: context only, not a ratio).", ""]
    lines = ["# W4A16 GEMV (CUDA C++, egt/kernels/w4_gemv.cu): bandwidth", ""] + head + [
        "| N (out) | K (in) | M | kernel | group | sym | us | floor us | % of copy | % of same-size copy | fp16 cuBLAS us | vs fp16 | before (Triton) us |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = "ch" if r["group"] == -1 else r["group"]
        lines.append(f"| {r['N']} | {r['K']} | {r['M']} | {r['kernel']} | {g} | {r['sym']} | {r['us']} | {r['floor_us']} | "
                     f"{r['of_copy']:.0%} | {r['of_copy_same']:.0%} | {r['fp16_us']} | {r['speedup_vs_fp16']}x | "
                     f"{r['before_triton_us'] if r['before_triton_us'] is not None else ''} |")
    if sweep:
        lines += ["", "## Config sweep at M=1 (row tiles per warp, split-K, warps per block); * = the heuristic's pick", "",
                  "| kernel | N x K | " + " | ".join(["configs (us)"]) + " |", "|---|---|---|"]
        keyset = sorted({(s["kernel"], s["N"], s["K"]) for s in sweep}, key=str)
        for kind, n_out, k_in in keyset:
            items = [s for s in sweep if (s["kernel"], s["N"], s["K"]) == (kind, n_out, k_in)]
            best = min(items, key=lambda s: s["us"])
            cells = ", ".join(f"{tuple(s['config'])}{'*' if s['heuristic'] else ''} {s['us']}" for s in items)
            lines.append(f"| {kind} | {n_out}x{k_in} | best {tuple(best['config'])} {best['us']} us; {cells} |")
    (out_dir / "quant_kernels.md").write_text("\n".join(lines) + "\n")
    # Sparse view: speed-ups over dense INT4 measured in this run.
    sp = []
    for n_out, k_in in MAIN + SMALL:
        d = next((r for r in rows if r["kernel"] == "dense int4" and (r["N"], r["K"], r["M"], r["group"], r["sym"]) ==
                  (n_out, k_in, 1, 128, False)), None)
        if d is None:
            continue
        ent = {"N": n_out, "K": k_in, "dense_us": d["us"], "dense_floor_us": d["floor_us"], "fp16_us": d["fp16_us"]}
        for kind, key in (("2:4 int4", "2:4"), ("1:4 int4", "1:4")):
            s = next((r for r in rows if r["kernel"] == kind and (r["N"], r["K"], r["M"]) == (n_out, k_in, 1)), None)
            if s:
                copy_us = lambda r: r["bytes"] / r["copy_same_size_GBps"] / 1e3  # noqa: E731
                ent[key] = {"us": s["us"], "floor_us": s["floor_us"], "of_copy": s["of_copy"],
                            "of_copy_same": s["of_copy_same"], "speedup_vs_dense": round(d["us"] / s["us"], 2),
                            "copy_bound": round(copy_us(d) / copy_us(s), 2),
                            "byte_ratio": round(d["bytes"] / s["bytes"], 2), "before_triton_us": s["before_triton_us"]}
        sp.append(ent)
    (out_dir / "sparse_kernels.json").write_text(json.dumps(dict(info, command=command, copy_GBps_start=round(bw, 1),
                                                                 rows=sp), indent=1))
    lines = ["# Sparse W4A16 GEMV: 2:4 and 1:4 INT4 against dense INT4 (same run, batch 1)", ""] + head + [
        "Goals (issue 4): 2:4 >= 1.25x and 1:4 >= 1.8x dense INT4. 'bytes' = dense bytes / sparse bytes (the ideal "
        "speed-up of a bandwidth-bound kernel with no fixed cost); 'copy' = time of a same-size copy of the dense bytes / "
        "of the sparse bytes (what a standalone launch of that size can gain at best on this card).", "",
        "| weight [out x in] | dense INT4 us (floor) | 2:4 us (floor) | 2:4 vs dense | 2:4 bound: bytes / copy | 1:4 us (floor) | "
        "1:4 vs dense | 1:4 bound: bytes / copy | fp16 cuBLAS us | before (Triton) 2:4 / 1:4 us |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in sp:
        a, b = e.get("2:4", {}), e.get("1:4", {})
        lines.append(f"| {e['N']}x{e['K']} | {e['dense_us']} ({e['dense_floor_us']}) | {a.get('us', '-')} ({a.get('floor_us', '-')}) | "
                     f"{a.get('speedup_vs_dense', '-')}x | {a.get('byte_ratio', '-')}x / {a.get('copy_bound', '-')}x | "
                     f"{b.get('us', '-')} ({b.get('floor_us', '-')}) | {b.get('speedup_vs_dense', '-')}x | "
                     f"{b.get('byte_ratio', '-')}x / {b.get('copy_bound', '-')}x | {e['fp16_us']} | "
                     f"{a.get('before_triton_us') or '-'} / {b.get('before_triton_us') or '-'} |")
    (out_dir / "sparse_kernels.md").write_text("\n".join(lines) + "\n")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--before-dir", default=str(ROOT / "bench" / "results"), help="where the previous results are")
    ap.add_argument("--quick", action="store_true", help="M=1, the three 1.5B-class shapes, g128 asym only")
    a = ap.parse_args(argv)
    if not K.available():
        print("needs CUDA and nvcc (or a built kernel library)", file=sys.stderr)
        return 2
    before = previous(Path(a.before_dir))
    info = device_info()
    bw, bw_end, rows, sweep = bench(a.quick)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = write(out, info, bw, bw_end, rows, sweep, before, "python bench/quant_kernels.py" + (" --quick" if a.quick else ""))
    print((out / "quant_kernels.md").read_text())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
