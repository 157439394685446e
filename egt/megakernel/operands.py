"""INT4, N:4 sparse INT4 and INT3 weights in the MegaKernel's chunk layout (weight kinds "int4", "int4-tc",
"int4-nm", "int4-nm-tc", "int3").

The MegaKernel streams one stage (TR rows x TK columns of one row tile) per ring slot. For bf16 weights a stage is
TR row segments read in place; for INT4 it is one contiguous chunk built here once, when the decoder is made:

    chunk (tile t, K part kp, stage ch), at index (t * KS + kp) * CP + ch, a fixed stride of `stage_vecs` x 16 B:
      codes  [NMAT][TR][TK / 8] int32   egt.quant's packed words for those columns, unchanged (8 codes a word)
      pairs  [NMAT][TR][TK / g] int32   (scale, offset) as two fp16 halves: w = scale * code + offset
      zeros  up to the stride (room for the finest granularity, g = 32)

`g` (the scale granularity) is the largest power of two dividing TK and every group size of the op's matrices
(per-channel counts as a group of K), so a g-column block never straddles a quantization group: q/k/v (or gate/up)
with different adaptive group sizes share one chunk layout, and a layer's g is a run-time value of the kernel.
Symmetric weights store offset = -8 * scale (exact in fp16), so the kernel has one dequantization rule.

Contract:
- `q4_chunks(mats, tr, tk, ksplit, layout, rpw)`: `mats` is one list per matrix of the op (NMAT = len(mats)) of the
  `QuantLinear` modules whose rows stack into it (q, k, v for the QKV op). Returns (int32 [chunks, words], lg).
  layout "rows" keeps each row's packed words (CUDA-core kernel); "tc" reorders the codes of a chunk into
  tensor-core fragments (same bytes, same pairs region).
- `q4_dequant(chunks, lg, n, k, nmat, tr, tk, ksplit, layout, rpw)`: the dense float32 weights [nmat, n, k] the chunks
  encode (the tests' inverse; the kernel computes the same products).
- `nm_chunks(mats, tr, tk, ksplit, layout, rpw)` / `nm_dequant(...)`: the same for one layer of an "int4-nm" op: 4-bit
  `SparseQuantLinear` modules with one N:4 pattern (or dense `QuantLinear`, N = 4, in the INT4 layout above);
  returns (chunks, lg, n). layout "rows" (csrc S4W, CUDA cores) or "tc" (csrc S4TC, sparse tensor cores, kind
  "int4-nm-tc"); both in `nm_chunks`' docstring; the stride is the INT4 one.
- `q3_chunks(mats, tr, tk, ksplit)` / `q3_dequant(...)`: the same for one layer of an "int3" op: 3-bit
  `QuantLinear` modules (32 codes in 12 bytes, `bits3_words`), or the INT4 "rows" chunk where the op holds a
  4-bit module in this layer (3-bit parts widened: exact); returns (chunks, lg, bits).
- Memory: the chunks are a second copy of the op's INT4 weights (the modules keep theirs for the torch path).
"""
from __future__ import annotations

import math

import torch

from ..quant.packing import pack
from ..sparsify.pattern import unpack_indices
from .schedule import ceil_div, q4_chunk_vecs

MIN_LG = 5  # one 16-byte code vector (32 columns) never straddles a scale block


def _group(mod) -> int:
    return mod.in_features if mod.group_size in (-1, None) or mod.group_size >= mod.in_features else mod.group_size


def scale_lg(mats, tk: int) -> int:
    g = tk
    for part in mats:
        for mod in part:
            g = math.gcd(g, _group(mod))
    lg = (g & -g).bit_length() - 1  # largest power of two dividing g
    if lg < MIN_LG:
        raise ValueError(f"INT4 group sizes {[_group(m) for p in mats for m in p]} with stage width {tk} give a "
                         f"scale block of {1 << lg} columns; the MegaKernel needs multiples of 32")
    return lg


def _pairs(mod, lg: int, kept: int | None = None) -> torch.Tensor:
    """(scale, offset) fp16 pairs as int32 [rows, K >> lg] of a quantized module: one per 2^lg columns (kept values
    for a sparse module, whose groups count `kept` values). Symmetric codes decode as (q - 2^(bits-1)) * scale, so
    their offset is -2^(bits-1) * scale (exact in fp16)."""
    k, g = (kept, _kept_group(mod)) if kept else (mod.in_features, _group(mod))
    col = torch.arange(0, k, 1 << lg, device=mod.scales.device)
    s = mod.scales[:, col // g].float()
    o = mod.offsets[:, col // g].float() if mod.offsets is not None else -float(1 << (mod.bits - 1)) * s
    return torch.stack([s.half(), o.half()], dim=-1).contiguous().view(torch.int32).squeeze(-1)


def _matrix(parts, lg: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed 4-bit words [n, K/8], (scale, offset) pairs as int32 [n, K >> lg]) of row-stacked QuantLinear parts.
    3-bit parts are widened to 4-bit words (the same codes, scales and offsets: exact)."""
    words, pairs = [], []
    for mod in parts:
        if getattr(mod, "bits", None) not in (3, 4) or hasattr(mod, "indices") or mod.in_features % 32:
            raise ValueError(f"{type(mod).__name__} is not a 3- or 4-bit QuantLinear with K a multiple of 32")
        pairs.append(_pairs(mod, lg))
        words.append(mod.qweight if mod.bits == 4 else pack(mod.codes(), 4))
    return torch.cat(words), torch.cat(pairs)


def _quad_columns(k: int, rpw: int) -> torch.Tensor:
    """The order in which a "tc" chunk takes a row's K columns: fragment position (k-step i, part p, column
    8c + 2t + e of the part) of each quad of 64 P columns (P = 16 / rpw) -> column of the row. 16 and 4 rows a warp:
    32 (P (i >> 1) + p) + 8t + 4 (i & 1) + 2c + e, so the B fragments of lane t for part p of k-steps 2hh and 2hh+1
    are the 8 consecutive columns 32 (P hh + p) + 8t .. of x (one 16-byte shared-memory load, csrc Q4TC `quads` and
    `frag_quads`), and each of those halves lies inside one 32-column scale block. 8 rows a warp: the natural order
    (its lane adds both parts of a k-step before the scale, so they must share a block)."""
    parts = 16 // rpw
    if parts == 2:
        return torch.arange(k)
    i, p, c, t, e = torch.meshgrid(*(torch.arange(n) for n in (4, parts, 2, 4, 2)), indexing="ij")
    quad = (32 * (parts * (i >> 1) + p) + 8 * t + 4 * (i & 1) + 2 * c + e).reshape(-1)
    return (torch.arange(0, k, 64 * parts).unsqueeze(1) + quad).reshape(-1)


def _tc_words(codes: torch.Tensor, nmat: int, nt: int, tr: int, ksplit: int, cp: int, tk: int, rpw: int) -> torch.Tensor:
    """Codes [nmat, nt*tr, K] -> words [chunks, nmat*tr*tk/8] in mma.m16n8k16 A-fragment order (csrc Q4TC): per
    (matrix, group of rpw rows, quad of 4 k-steps) 32 lanes x 4 words. A k-step covers 16 P columns (P = 16 / rpw)
    of rpw rows (taken in `_quad_columns` order), and its fragment row m = p*rpw + r holds row r's columns
    16p .. 16p+15. Lane (g, t), word i (k-step) holds fragment rows g, g+8 x columns 2t, 2t+1, 2t+8, 2t+9, nibble
    e*4 + c*2 + h = (row h*8+g, column c*8+2t+e)."""
    parts, rg = 16 // rpw, tr // rpw
    quads = tk // (64 * parts)
    codes = codes[..., _quad_columns(codes.shape[-1], rpw).to(codes.device)]
    a = codes.view(nmat, nt, rg, rpw, ksplit, cp, quads, 4, parts, 16)  # m nt rg r ks cp q i p col
    a = a.permute(0, 1, 2, 4, 5, 6, 7, 8, 3, 9)                           # m nt rg ks cp q i p r col
    v = a.reshape(nmat, nt, rg, ksplit, cp, quads, 4, 2, 8, 2, 4, 2)      # m nt rg ks cp q i h g c t e
    v = v.permute(1, 3, 4, 0, 2, 5, 8, 10, 6, 11, 9, 7)                   # nt ks cp m rg q g t i e c h
    v = v.reshape(-1, 8).to(torch.int64)
    words = (v << torch.arange(0, 32, 4, device=v.device)).sum(-1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32).view(nt * ksplit * cp, -1)


def q4_chunks(mats, tr: int, tk: int, ksplit: int, layout: str = "rows", rpw: int = 16) -> tuple[torch.Tensor, int]:
    """layout: "rows" (csrc Q4W: each row's packed words as stored) or "tc" (csrc Q4TC: tensor-core fragments of
    `rpw` rows a warp, 16, 8 or 4)."""
    nmat = len(mats)
    lg = scale_lg(mats, tk)
    mw = [_matrix(parts, lg) for parts in mats]
    n, k = mw[0][0].shape[0], mw[0][0].shape[1] * 8
    if any(w.shape != mw[0][0].shape for w, _ in mw):
        raise ValueError("the matrices of one op must have the same shape")
    if k % (ksplit * tk) or tk % 32:
        raise ValueError(f"K={k} does not split into {ksplit} parts of whole {tk}-column stages of 32-code vectors")
    nt, cp, sps = ceil_div(n, tr), k // ksplit // tk, tk >> lg
    rows = nt * tr
    words = torch.zeros(nmat, rows, k // 8, dtype=torch.int32, device=mw[0][0].device)
    pairs = torch.zeros(nmat, rows, k >> lg, dtype=torch.int32, device=words.device)
    for m, (w, p) in enumerate(mw):
        words[m, :n], pairs[m, :n] = w, p
    chunks = nt * ksplit * cp
    # [nmat, nt, tr, ks, cp, x] -> [nt, ks, cp, nmat, tr, x]: one chunk per (tile, part, stage), matrices then rows
    if layout == "tc":
        if rpw not in (16, 8, 4) or tr % rpw or tk % (64 * 16 // rpw):
            raise ValueError(f"tensor-core INT4 needs groups of 16, 8 or 4 rows and quads of 64 x 16/rows columns, "
                             f"not {rpw} rows a warp with TR={tr} TK={tk}")
        shifts = torch.arange(0, 32, 4, device=words.device, dtype=torch.int32)
        codes = ((words.unsqueeze(-1) >> shifts) & 0xF).view(nmat, rows, k)
        words = _tc_words(codes, nmat, nt, tr, ksplit, cp, tk, rpw)
    elif layout == "rows":
        words = words.view(nmat, nt, tr, ksplit, cp, tk // 8).permute(1, 3, 4, 0, 2, 5).reshape(chunks, -1)
    else:
        raise ValueError(f"unknown INT4 chunk layout {layout!r}")
    pairs = pairs.view(nmat, nt, tr, ksplit, cp, sps).permute(1, 3, 4, 0, 2, 5).reshape(chunks, -1)
    stride = 4 * sum(q4_chunk_vecs(nmat, tr, tk))
    out = torch.zeros(chunks, stride, dtype=torch.int32, device=words.device)
    out[:, :words.shape[1]] = words
    out[:, words.shape[1]:words.shape[1] + pairs.shape[1]] = pairs
    return out.contiguous(), lg


def q4_dequant(chunks: torch.Tensor, lg: int, n: int, k: int, nmat: int, tr: int, tk: int, ksplit: int,
               layout: str = "rows", rpw: int = 16) -> torch.Tensor:
    nt, cp, sps = ceil_div(n, tr), k // ksplit // tk, tk >> lg
    cw = nmat * tr * tk // 8
    shifts = torch.arange(0, 32, 4, device=chunks.device, dtype=torch.int32)
    nib = (chunks[:, :cw].unsqueeze(-1) >> shifts) & 0xF
    if layout == "tc":
        parts, rg = 16 // rpw, tr // rpw
        quads = tk // (64 * parts)
        v = nib.reshape(nt, ksplit, cp, nmat, rg, quads, 8, 4, 4, 2, 2, 2)  # nt ks cp m rg q g t i e c h
        v = v.permute(3, 0, 4, 1, 2, 5, 8, 11, 6, 10, 7, 9)                 # m nt rg ks cp q i h g c t e
        v = v.reshape(nmat, nt, rg, ksplit, cp, quads, 4, parts, rpw, 16)   # m nt rg ks cp q i p r col
        codes = v.permute(0, 1, 2, 8, 3, 4, 5, 6, 7, 9).reshape(nmat, nt * tr, k).float()
        codes[..., _quad_columns(k, rpw).to(codes.device)] = codes.clone()
    else:
        words = nib.reshape(nt, ksplit, cp, nmat, tr, tk)
        codes = words.permute(3, 0, 4, 1, 2, 5).reshape(nmat, nt * tr, k).float()
    pairs = chunks[:, cw:cw + nmat * tr * sps].reshape(nt, ksplit, cp, nmat, tr, sps)
    pairs = pairs.permute(3, 0, 4, 1, 2, 5).reshape(nmat, nt * tr, k >> lg)
    so = pairs.contiguous().view(torch.float16).view(nmat, nt * tr, k >> lg, 2).float()
    scale = so[..., 0].repeat_interleave(1 << lg, dim=-1)
    offset = so[..., 1].repeat_interleave(1 << lg, dim=-1)
    return (scale * codes + offset)[:, :n]


# ---- N:4 sparse INT4 (weight kind "int4-nm", csrc S4W) ------------------------------------------------------------
def _kept_group(mod) -> int:
    return mod.kept if mod.group_size in (-1, None) or mod.group_size >= mod.kept else mod.group_size


def nm_of(mats) -> int:
    """Kept values per group of 4 shared by all the modules of one (layer, op): 4 for dense QuantLinear."""
    ns = {getattr(mod, "n", 4) for part in mats for mod in part}
    if len(ns) != 1:
        raise ValueError(f"the matrices of one op mix N:4 patterns {sorted(ns)}; the MegaKernel needs one pattern per "
                         "op in a layer (compress with sparse granularity 'layer')")
    return ns.pop()


def nm_chunks(mats, tr: int, tk: int, ksplit: int, layout: str = "rows",
              rpw: int = 16) -> tuple[torch.Tensor, int, int]:
    """(int32 [chunks, words], lg, n) of one op in one layer. `mats` as in `q4_chunks`, every module either a 4-bit
    `SparseQuantLinear` (all with the same N) or a 4-bit `QuantLinear` (N = 4: the `q4_chunks` chunk of the same
    layout). Chunk (tile, part, stage) for N <= 2, stride as for INT4, layout "rows" (csrc S4W):
      codes [NMAT][TR][WR] int32, WR = TK*N/32 words of 8 kept codes
      index [NMAT][TR][WR] int16, the 2-bit positions of a word's kept values (egt.sparsify's bytes, 2 a word)
      pairs [NMAT][TR][(TK*N/4) >> lg] (scale, offset) fp16 pairs at the next 4-byte boundary; lg counts kept values
    Layout "tc" (csrc S4TC: mma.sp.m16n8k32, A = the kept codes, 2 of every 4 columns; see `_sp_fragments`), for
    rpw = 16 or 8 rows a warp (P = 16 / rpw column parts a fragment, a quad of 64 P columns):
      codes [NMAT][TR/rpw][TK/64P quads][32 lanes] x N int32 (A fragments), then
      meta  [NMAT][TR/rpw][TK/64P quads][32 lanes] x 2N bytes (the lane's sparsity metadata), then
      pairs as above. The 16 N kept values of a 64-column quad (rpw 16) or of a k-step (rpw 8) must share one scale
      block (2^lg >= 16 N)."""
    n = nm_of(mats)
    if layout not in ("rows", "tc"):
        raise ValueError(f"unknown N:4 chunk layout {layout!r}")
    if n == 4:
        buf, lg = q4_chunks(mats, tr, tk, ksplit, layout, rpw)
        return buf, lg, 4
    nmat = len(mats)
    kk = tk * n // 4  # kept values a stage holds per row
    g = kk
    for part in mats:
        for mod in part:
            if getattr(mod, "bits", None) != 4 or not hasattr(mod, "indices"):
                raise ValueError(f"{type(mod).__name__} is not a 4-bit SparseQuantLinear")
            g = math.gcd(g, _kept_group(mod))
    lg = (g & -g).bit_length() - 1
    if tk % 32 or lg < 3:
        raise ValueError(f"{n}:4 stages of {tk} columns with kept groups "
                         f"{sorted({_kept_group(m) for p in mats for m in p})} give scale blocks of {1 << lg} kept "
                         "values; the MegaKernel needs whole 8-value words")
    codes, index, pairs = [], [], []
    for parts in mats:
        c, i, p = [], [], []
        for mod in parts:
            p.append(_pairs(mod, lg, mod.kept))
            c.append(mod.qweight)
            i.append(mod.indices.contiguous().view(torch.int16))
        codes.append(torch.cat(c)), index.append(torch.cat(i)), pairs.append(torch.cat(p))
    rows_n, k = codes[0].shape[0], mats[0][0].in_features
    if any(c.shape != codes[0].shape for c in codes):
        raise ValueError("the matrices of one op must have the same shape")
    if k % (ksplit * tk):
        raise ValueError(f"K={k} does not split into {ksplit} parts of whole {tk}-column stages")
    nt, cp, wr, sps = ceil_div(rows_n, tr), k // ksplit // tk, tk * n // 32, kk >> lg
    chunks, rows = nt * ksplit * cp, nt * tr

    def tiled(parts, per_stage, dtype):
        t = torch.zeros(nmat, rows, parts[0].shape[1], dtype=dtype, device=parts[0].device)
        for m, x in enumerate(parts):
            t[m, :rows_n] = x
        t = t.view(nmat, nt, tr, ksplit, cp, per_stage).permute(1, 3, 4, 0, 2, 5).reshape(chunks, -1)
        return t.contiguous().view(torch.uint8)

    pb = tiled(pairs, sps, torch.int32)
    if layout == "tc":
        parts = 16 // rpw if rpw in (16, 8) else 0
        if not parts or tr % rpw or tk % (64 * parts) or (1 << lg) < 16 * n:
            raise ValueError(f"sparse tensor-core INT4 needs groups of 16 or 8 rows, quads of 64 x 16/rows columns "
                             f"and scale blocks of {16 * n}+ kept values, not {rpw} rows a warp with TR={tr} TK={tk} "
                             f"and {1 << lg}")
        cb, ib = _sp_fragments(mats, n, nt, tr, ksplit, cp, tk, rpw)
    else:
        cb, ib = tiled(codes, wr, torch.int32), tiled(index, wr, torch.int16)
    p0 = (cb.shape[1] + ib.shape[1] + 3) // 4 * 4
    stride = 16 * sum(q4_chunk_vecs(nmat, tr, tk))
    assert p0 + pb.shape[1] <= stride, "an N:4 chunk outgrew the INT4 stride"
    out = torch.zeros(chunks, stride, dtype=torch.uint8, device=cb.device)
    out[:, :cb.shape[1]] = cb
    out[:, cb.shape[1]:cb.shape[1] + ib.shape[1]] = ib
    out[:, p0:p0 + pb.shape[1]] = pb
    return out.view(torch.int32), lg, n


# mma.sp.m16n8k32 (bf16) operand layout, measured on an H100 (bench/mma_sp_layout.cu): lane (g, t) holds A
# registers r = 0..3 with the two kept values of row g + 8 (r & 1), 4-column group t + 4 (r >> 1) of the 32-column
# k-step (low half: the value at the first index of the metadata nibble). With sparsity selector s, lanes with
# t >> 1 == s give the metadata: nibble i of lane (g, t) is (first index | second index << 2) of row g + 8 (i >> 2),
# group 4 (t & 1) + (i & 3). A quad (64 columns) is two k-steps, step s read with selector s, so every lane loads
# one metadata word a quad. Unordered index pairs are valid (measured on sm_90): a 1:4 group is (kept, kept ^ 1)
# with the value in the low half and a zero in the high half, so only the kept position is stored (2 bits a nibble).
def _sp_maps(nt: int, tr: int, ksplit: int, cp: int, tk: int, device, rpw: int = 16):
    """Index maps of one op's "tc" chunks, each [nt, ks, cp, rg, quads, lanes, ...]: the (row, 4-column group) of
    every A register (.., step, reg) and of every metadata nibble (.., nibble). With rpw < 16 rows a warp, fragment
    row m is row m % rpw, part m // rpw: groups 8 * part .. of a k-step of 32 * 16/rpw columns (csrc S4TC)."""
    parts = 16 // rpw
    rg, quads = tr // rpw, tk // (64 * parts)
    ar = lambda n: torch.arange(n, device=device)
    tile, ks, c, rgi, q, lane = (ar(nt).view(-1, 1, 1, 1, 1, 1), ar(ksplit).view(1, -1, 1, 1, 1, 1),
                                 ar(cp).view(1, 1, -1, 1, 1, 1), ar(rg).view(1, 1, 1, -1, 1, 1),
                                 ar(quads).view(1, 1, 1, 1, -1, 1), ar(32).view(1, 1, 1, 1, 1, -1))
    g, t = lane >> 2, lane & 3
    row0 = tile * tr + rgi * rpw
    grp0 = ((ks * cp + c) * tk + q * 64 * parts) // 4  # first 4-column group of the quad
    s, r = ar(2).view(2, 1), ar(4).view(1, 4)
    fm = g[..., None, None] + 8 * (r & 1)  # fragment row of register r
    a_row = row0[..., None, None] + fm % rpw
    a_grp = grp0[..., None, None] + 8 * parts * s + 8 * (fm // rpw) + t[..., None, None] + 4 * (r >> 1)
    i = ar(8)
    fm = g[..., None] + 8 * (i >> 2)  # fragment row of nibble i
    m_row = row0[..., None] + fm % rpw
    m_grp = grp0[..., None] + 8 * parts * (t[..., None] >> 1) + 8 * (fm // rpw) + 4 * (t[..., None] & 1) + (i & 3)
    return a_row, a_grp, m_row, m_grp


def _kept(mats, n: int, rows: int):
    """Codes and in-group positions [nmat, rows, groups, n] (int64) of one op's sparse modules, rows zero-padded."""
    codes, pos = [], []
    for parts in mats:
        c = torch.cat([m.codes() for m in parts]).to(torch.int64)
        p = torch.cat([unpack_indices(m.indices) for m in parts]).to(torch.int64)
        # padding rows: code 0 at positions 0 .. n-1 (a metadata nibble's two indices must differ)
        pad = torch.arange(c.shape[1], device=c.device) % n
        codes.append(torch.cat([c, c.new_zeros(rows - c.shape[0], c.shape[1])]))
        pos.append(torch.cat([p, pad.expand(rows - p.shape[0], -1)]))
    shape = (len(mats), rows, -1, n)
    return torch.stack(codes).view(shape), torch.stack(pos).view(shape)


def _sp_fragments(mats, n: int, nt: int, tr: int, ksplit: int, cp: int, tk: int,
                  rpw: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(code bytes, metadata bytes) [chunks, ...] of the "tc" layout of an N:4 op (N = 1 or 2)."""
    codes, pos = _kept(mats, n, nt * tr)
    a_row, a_grp, m_row, m_grp = _sp_maps(nt, tr, ksplit, cp, tk, codes.device, rpw)
    nmat = codes.shape[0]
    mi = torch.arange(nmat, device=codes.device).view(-1, *([1] * a_row.dim()))
    a = codes[mi, a_row, a_grp]                                # [nmat, nt, ks, cp, rg, q, lane, step, reg, n]
    mi = mi.squeeze(-1)
    p = pos[mi, m_row, m_grp]                                  # [nmat, ..., lane, nibble, n]
    if n == 2:
        # step word: nibble r = the low (first-index) code of register r, nibble r + 4 its high code
        word = (a[..., 0] << (4 * torch.arange(4, device=a.device))).sum(-1) \
            + (a[..., 1] << (4 * torch.arange(4, 8, device=a.device))).sum(-1)   # [.., lane, step]
        meta = ((p[..., 0] | (p[..., 1] << 2)) << (4 * torch.arange(8, device=a.device))).sum(-1)  # [.., lane]
        meta_dtype = torch.int32
    else:
        # one word a quad: nibble 4 step + r = the code of register r of that step
        word = (a[..., 0].flatten(-2) << (4 * torch.arange(8, device=a.device))).sum(-1, keepdim=True)
        meta = (p[..., 0] << (2 * torch.arange(8, device=a.device))).sum(-1)       # 2 bits a nibble
        meta_dtype = torch.int16
    chunks = nt * ksplit * cp
    order = lambda x: x.movedim(0, 3).reshape(chunks, -1)     # [nt, ks, cp, nmat, rg, q, lane, ...] per chunk
    bits = 16 if n == 1 else 32
    word = torch.where(word >= 2 ** 31, word - 2 ** 32, word).to(torch.int32)
    meta = torch.where(meta >= 2 ** (bits - 1), meta - 2 ** bits, meta).to(meta_dtype)
    return order(word).contiguous().view(torch.uint8), order(meta).contiguous().view(torch.uint8)


def _untile(t: torch.Tensor, per_stage: int, nt: int, ksplit: int, cp: int, nmat: int, tr: int) -> torch.Tensor:
    """Chunk-major [chunks, nmat*tr*per_stage] -> row-major [nmat, rows, ksplit*cp*per_stage] (the tests' inverses)."""
    t = t.reshape(nt, ksplit, cp, nmat, tr, per_stage).permute(3, 0, 4, 1, 2, 5)
    return t.reshape(nmat, nt * tr, ksplit * cp * per_stage)


def _sp_unfragment(b: torch.Tensor, n: int, nt: int, tr: int, ksplit: int, cp: int, tk: int, nmat: int, k: int,
                   rpw: int = 16):
    """The inverse of `_sp_fragments` as the tensor cores read it: codes and in-group positions [nmat, rows,
    kept] (int64) from each A register and the metadata nibble that covers the same (row, group)."""
    rg, quads = tr // rpw, tk // (64 * (16 // rpw))
    rows, lanes = nt * tr, nmat * rg * quads * 32
    words = b[:, :4 * n * lanes].contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    meta = b[:, 4 * n * lanes:6 * n * lanes].contiguous().view(torch.int32 if n == 2 else torch.int16)
    meta = meta.to(torch.int64) & (0xFFFFFFFF if n == 2 else 0xFFFF)
    shape = (nt, ksplit, cp, nmat, rg, quads, 32)
    words, meta = words.view(*shape, -1).movedim(3, 0), meta.view(shape).movedim(3, 0)
    a_row, a_grp, m_row, m_grp = _sp_maps(nt, tr, ksplit, cp, tk, b.device, rpw)
    nib = torch.arange(8, device=b.device)
    if n == 2:  # [.., lane, step, reg, (low, high)]
        a = torch.stack([(words[..., None] >> (4 * nib[:4])) & 0xF, (words[..., None] >> (4 * nib[4:])) & 0xF], -1)
        m = (meta[..., None] >> (4 * nib)) & 0xF
        p = torch.stack([m & 3, m >> 2], -1)                                     # [.., lane, nibble, 2]
    else:
        a = ((words >> (4 * nib)) & 0xF).view(*words.shape[:-1], 2, 4, 1)
        p = ((meta[..., None] >> (2 * nib)) & 3)[..., None]                     # the kept value's position
    codes = torch.zeros(nmat, rows, k // 4, n, dtype=torch.int64, device=b.device)
    pos = torch.zeros_like(codes)
    mi = torch.arange(nmat, device=b.device).view(-1, *([1] * a_row.dim()))
    codes[mi, a_row, a_grp] = a
    pos[mi.squeeze(-1), m_row, m_grp] = p
    return codes.flatten(-2), pos.flatten(-2)


def nm_dequant(chunks: torch.Tensor, lg: int, n: int, rows_n: int, k: int, nmat: int, tr: int, tk: int,
               ksplit: int, layout: str = "rows", rpw: int = 16) -> torch.Tensor:
    """The dense float32 weights [nmat, rows_n, k] that `nm_chunks` output encodes (the tests' inverse)."""
    if n == 4:
        return q4_dequant(chunks, lg, rows_n, k, nmat, tr, tk, ksplit, layout, rpw)
    nt, cp, wr, kk = ceil_div(rows_n, tr), k // ksplit // tk, tk * n // 32, tk * n // 4
    sps = kk >> lg
    b = chunks.contiguous().view(torch.uint8)
    x = nmat * tr * wr
    p0 = (6 * x + 3) // 4 * 4
    so = _untile(b[:, p0:p0 + 4 * nmat * tr * sps].contiguous().view(torch.int32), sps, nt, ksplit, cp, nmat, tr)
    if layout == "tc":
        codes, pos = _sp_unfragment(b, n, nt, tr, ksplit, cp, tk, nmat, k, rpw)
        codes = codes.float()
    else:
        words = _untile(b[:, :4 * x].contiguous().view(torch.int32), wr, nt, ksplit, cp, nmat, tr)
        idx = _untile(b[:, 4 * x:6 * x].contiguous().view(torch.int16), wr, nt, ksplit, cp, nmat, tr)
        shifts = torch.arange(0, 32, 4, device=b.device, dtype=torch.int32)
        codes = ((words.unsqueeze(-1) >> shifts) & 0xF).flatten(-2).float()          # [nmat, rows, kept]
        pos = ((idx.to(torch.int32).unsqueeze(-1) >> (2 * torch.arange(8, device=b.device, dtype=torch.int32))) & 3)
        pos = pos.flatten(-2).long()                                                   # [nmat, rows, kept]
    sh = so.contiguous().view(torch.float16).view(*so.shape, 2).float()
    vals = sh[..., 0].repeat_interleave(1 << lg, -1) * codes + sh[..., 1].repeat_interleave(1 << lg, -1)
    kept = vals.shape[-1]
    col = torch.arange(kept, device=b.device) // n * 4 + pos
    dense = torch.zeros(nmat, nt * tr, k, device=b.device)
    dense.scatter_(-1, col, vals)
    return dense[:, :rows_n]


# ---- INT3 (weight kind "int3", csrc Q3W) --------------------------------------------------------------------------
def bits3_words(codes: torch.Tensor) -> torch.Tensor:
    """3-bit codes [..., 32] -> int32 words [..., 3] in csrc Bits3's order: byte j of word i < 3 holds columns 8i+2j
    (bits 0-2) and 8i+2j+1 (bits 3-5); columns 24+2j and 24+2j+1 put their low two bits in bits 6-7 of byte j of
    words 0 and 1, their high bit in bits 6 and 7 of byte j of word 2."""
    q = codes.to(torch.int64).view(*codes.shape[:-1], 4, 4, 2)  # [..., i, j, e]: column 8i + 2j + e
    byte = q[..., :3, :, 0] | (q[..., :3, :, 1] << 3)          # [..., 3 words, 4 bytes]
    last = q[..., 3, :, :]                                       # [..., j, e]
    byte[..., 0, :] |= (last[..., 0] & 3) << 6
    byte[..., 1, :] |= (last[..., 1] & 3) << 6
    byte[..., 2, :] |= ((last[..., 0] >> 2) << 6) | ((last[..., 1] >> 2) << 7)
    words = (byte << torch.arange(0, 32, 8, device=codes.device)).sum(-1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def bits3_codes(words: torch.Tensor) -> torch.Tensor:
    """The inverse of `bits3_words`: int32 words [..., 3] -> codes [..., 32] (int64)."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    byte = (w.unsqueeze(-1) >> torch.arange(0, 32, 8, device=w.device)) & 0xFF  # [..., 3, 4]
    head = torch.stack([byte & 7, (byte >> 3) & 7], -1)                        # [..., 3, j, e]
    lo = torch.stack([byte[..., 0, :] >> 6, byte[..., 1, :] >> 6], -1)         # [..., j, e]
    hi = torch.stack([(byte[..., 2, :] >> 6) & 1, byte[..., 2, :] >> 7], -1)
    return torch.cat([head, (lo | (hi << 2)).unsqueeze(-3)], -3).flatten(-3)


def q3_chunks(mats, tr: int, tk: int, ksplit: int) -> tuple[torch.Tensor, int, int]:
    """(int32 [chunks, words], lg, bits) of one op in one layer, `mats` as in `q4_chunks`, every module a 3- or 4-bit
    `QuantLinear`. All 3-bit: the INT3 chunk (csrc Q3W), stride as for INT4:
      codes [NMAT][TR][TK/32][3] int32 (`bits3_words`), then pairs [NMAT][TR][TK >> lg] at the next 16 bytes.
    Any 4-bit module: the whole op of this layer is the INT4 "rows" chunk (3-bit parts widened, exact), bits = 4."""
    bits = {getattr(mod, "bits", None) for part in mats for mod in part}
    if bits - {3, 4} or any(hasattr(mod, "indices") for part in mats for mod in part):
        raise ValueError(f"the int3 kind reads 3- and 4-bit QuantLinear modules, not {sorted(bits, key=str)}-bit "
                         "or sparse ones")
    if 4 in bits:
        buf, lg = q4_chunks(mats, tr, tk, ksplit, "rows")
        return buf, lg, 4
    nmat, lg = len(mats), scale_lg(mats, tk)
    codes, pairs = [], []
    for parts in mats:
        if any(mod.in_features % 32 for mod in parts):
            raise ValueError("INT3 rows must hold whole 32-code blocks (K a multiple of 32)")
        codes.append(torch.cat([mod.codes() for mod in parts]))
        pairs.append(torch.cat([_pairs(mod, lg) for mod in parts]))
    n, k = codes[0].shape
    if any(c.shape != codes[0].shape for c in codes):
        raise ValueError("the matrices of one op must have the same shape")
    if k % (ksplit * tk) or tk % 32:
        raise ValueError(f"K={k} does not split into {ksplit} parts of whole {tk}-column stages of 32-code vectors")
    nt, cp, sps = ceil_div(n, tr), k // ksplit // tk, tk >> lg
    rows, chunks = nt * tr, nt * ksplit * cp
    q = torch.zeros(nmat, rows, k, dtype=torch.uint8, device=codes[0].device)
    p = torch.zeros(nmat, rows, k >> lg, dtype=torch.int32, device=q.device)
    for m in range(nmat):
        q[m, :n], p[m, :n] = codes[m], pairs[m]
    words = bits3_words(q.view(nmat, rows, k // 32, 32)).view(nmat, nt, tr, ksplit, cp, tk // 32 * 3)
    words = words.permute(1, 3, 4, 0, 2, 5).reshape(chunks, -1)
    p = p.view(nmat, nt, tr, ksplit, cp, sps).permute(1, 3, 4, 0, 2, 5).reshape(chunks, -1)
    p0 = ceil_div(words.shape[1], 4) * 4  # pairs start at a 16-byte boundary
    out = torch.zeros(chunks, 4 * sum(q4_chunk_vecs(nmat, tr, tk)), dtype=torch.int32, device=q.device)
    assert p0 + p.shape[1] <= out.shape[1], "an INT3 chunk outgrew the INT4 stride"
    out[:, :words.shape[1]] = words
    out[:, p0:p0 + p.shape[1]] = p
    return out.contiguous(), lg, 3


def q3_dequant(chunks: torch.Tensor, lg: int, bits: int, n: int, k: int, nmat: int, tr: int, tk: int,
               ksplit: int) -> torch.Tensor:
    """The dense float32 weights [nmat, n, k] that `q3_chunks` output encodes (the tests' inverse)."""
    if bits == 4:
        return q4_dequant(chunks, lg, n, k, nmat, tr, tk, ksplit, "rows")
    nt, cp, sps = ceil_div(n, tr), k // ksplit // tk, tk >> lg
    cw = nmat * tr * tk // 32 * 3
    p0 = ceil_div(cw, 4) * 4


    words = _untile(chunks[:, :cw], tk // 32 * 3, nt, ksplit, cp, nmat, tr)
    codes = bits3_codes(words.reshape(nmat, nt * tr, k // 32, 3)).reshape(nmat, -1, k)
    so = _untile(chunks[:, p0:p0 + nmat * tr * sps], sps, nt, ksplit, cp, nmat, tr).contiguous().view(torch.float16)
    so = so.view(nmat, nt * tr, k >> lg, 2).float()
    scale = so[..., 0].repeat_interleave(1 << lg, dim=-1)
    offset = so[..., 1].repeat_interleave(1 << lg, dim=-1)
    return (scale * codes.float() + offset)[:, :n]
