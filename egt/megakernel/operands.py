"""INT4 weights in the MegaKernel's chunk layout (weight kind "int4").

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
- `q4_chunks(mats, tr, tk, ksplit, layout)`: `mats` is one list per matrix of the op (NMAT = len(mats)) of the
  `QuantLinear` modules whose rows stack into it (q, k, v for the QKV op). Returns (int32 [chunks, words], lg).
  layout "rows" keeps each row's packed words (CUDA-core kernel); "tc" reorders the codes of a chunk into
  tensor-core fragments (same bytes, same pairs region).
- `q4_dequant(chunks, lg, n, k, nmat, tr, tk, ksplit, layout)`: the dense float32 weights [nmat, n, k] the chunks
  encode (the tests' inverse; the kernel computes the same products).
- Memory: the chunks are a second copy of the op's INT4 weights (the modules keep theirs for the torch path).
"""
from __future__ import annotations

import math

import torch

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


def _matrix(parts, lg: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed words [n, K/8], (scale, offset) pairs as int32 [n, K >> lg]) of row-stacked QuantLinear parts."""
    words, pairs = [], []
    for mod in parts:
        if getattr(mod, "bits", None) != 4 or mod.qweight.shape[1] * 8 != mod.in_features:
            raise ValueError(f"{type(mod).__name__} is not a 4-bit QuantLinear with K a multiple of 8")
        g, k = _group(mod), mod.in_features
        col = torch.arange(0, k, 1 << lg, device=mod.scales.device)
        s = mod.scales[:, col // g].float()
        o = mod.offsets[:, col // g].float() if mod.offsets is not None else -8.0 * s
        pairs.append(torch.stack([s.half(), o.half()], dim=-1).contiguous().view(torch.int32).squeeze(-1))
        words.append(mod.qweight)
    return torch.cat(words), torch.cat(pairs)


def _tc_words(codes: torch.Tensor, nmat: int, nt: int, tr: int, ksplit: int, cp: int, tk: int) -> torch.Tensor:
    """Codes [nmat, nt*tr, K] -> words [chunks, nmat*tr*tk/8] in mma.m16n8k16 A-fragment order (csrc Q4TC): per
    (matrix, 16-row group, 64-column quad) 32 lanes x 4 words; lane (g, t), word i (k-step) holds rows g, g+8 x
    columns 2t, 2t+1, 2t+8, 2t+9 of the k-step, nibble e*4 + c*2 + h = (row h*8+g, column c*8 + 2t + e)."""
    rg, quads = tr // 16, tk // 64
    v = codes.view(nmat, nt, rg, 2, 8, ksplit, cp, quads, 4, 2, 4, 2)  # m nt rg h g ks cp q i c t e
    v = v.permute(1, 5, 6, 0, 2, 7, 4, 10, 8, 11, 9, 3)                 # nt ks cp m rg q g t i e c h
    v = v.reshape(-1, 8).to(torch.int64)
    words = (v << torch.arange(0, 32, 4, device=v.device)).sum(-1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32).view(nt * ksplit * cp, -1)


def q4_chunks(mats, tr: int, tk: int, ksplit: int, layout: str = "rows") -> tuple[torch.Tensor, int]:
    """layout: "rows" (csrc Q4W: each row's packed words as stored) or "tc" (csrc Q4TC: tensor-core fragments)."""
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
        if tr % 16 or tk % 64:
            raise ValueError(f"tensor-core INT4 needs 16-row groups and 64-column quads, not TR={tr} TK={tk}")
        shifts = torch.arange(0, 32, 4, device=words.device, dtype=torch.int32)
        codes = ((words.unsqueeze(-1) >> shifts) & 0xF).view(nmat, rows, k)
        words = _tc_words(codes, nmat, nt, tr, ksplit, cp, tk)
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
               layout: str = "rows") -> torch.Tensor:
    nt, cp, sps = ceil_div(n, tr), k // ksplit // tk, tk >> lg
    cw = nmat * tr * tk // 8
    shifts = torch.arange(0, 32, 4, device=chunks.device, dtype=torch.int32)
    nib = (chunks[:, :cw].unsqueeze(-1) >> shifts) & 0xF
    if layout == "tc":
        rg, quads = tr // 16, tk // 64
        v = nib.reshape(nt, ksplit, cp, nmat, rg, quads, 8, 4, 4, 2, 2, 2)  # nt ks cp m rg q g t i e c h
        codes = v.permute(3, 0, 4, 11, 6, 1, 2, 5, 8, 10, 7, 9).reshape(nmat, nt * tr, k).float()
    else:
        words = nib.reshape(nt, ksplit, cp, nmat, tr, tk)
        codes = words.permute(3, 0, 4, 1, 2, 5).reshape(nmat, nt * tr, k).float()
    pairs = chunks[:, cw:cw + nmat * tr * sps].reshape(nt, ksplit, cp, nmat, tr, sps)
    pairs = pairs.permute(3, 0, 4, 1, 2, 5).reshape(nmat, nt * tr, k >> lg)
    so = pairs.contiguous().view(torch.float16).view(nmat, nt * tr, k >> lg, 2).float()
    scale = so[..., 0].repeat_interleave(1 << lg, dim=-1)
    offset = so[..., 1].repeat_interleave(1 << lg, dim=-1)
    return (scale * codes + offset)[:, :n]
