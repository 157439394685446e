"""N:4 masks, SparseGPT-style compensation, and the 2-bit-index packed format.

Contract:
- `wanda_mask(w, sq_norm, n)`: keep, in every group of 4 consecutive inputs of every row, the `n` weights with the
  largest |W_ij| * ||X_j|| (Wanda). Exactly `n` per group, ties broken by position.
- `obs_prune(w, hessian, n, ...)`: SparseGPT-style pruning: walk the columns, zero the pruned weights and spread
  their error over the not-yet-visited columns through the inverse Hessian. The mask is either chosen on the fly
  by the SparseGPT score w^2 / [H^-1]_jj^2 or fixed in advance (e.g. a Wanda mask). With `quant` the kept values are
  also quantized during the sweep (joint sparsify + quantize, the error of both is compensated).
- `compact(w, mask, n)` -> (values [out, in*n/4], idx [out, in*n/4] in 0..3): kept values in group order, each
  with its position inside its group of 4. `expand(values, idx, n, in)` is the exact inverse onto a dense matrix.
- `pack_indices` / `unpack_indices`: four 2-bit positions per byte, the first in the low bits.
- Quantization grids and codes come from `egt.quant.quantizer` (value = scale * code + offset, or
  scale * (code - 2^(bits-1)) when symmetric). A group of 128 kept values of a 2:4 row spans 256 original columns,
  the same span for every row, which is what lets the sweep below quantize group by group.
- `storage_report(out, in, lp)`: bytes of the packed format, of dense fp16, and of standard CSR (int32 column
  indices, int32 row pointers, values at the same precision), so the comparison in reports is explicit.
"""
from __future__ import annotations

import math

import torch

from ..plan import LinearPlan
from ..quant.quantizer import quantize_groups

M = 4  # every pattern here is N:4; the 2-bit index addresses a position inside a group of 4


def n_of(sparsity: str) -> int:
    if sparsity not in ("2:4", "1:4"):
        raise ValueError(f"sparsity must be '2:4' or '1:4', got {sparsity!r}")
    return int(sparsity.split(":")[0])


def check_shape(in_features: int, n: int) -> None:
    # The packed indices hold 4 positions per byte, so each row must keep a multiple of 4 values.
    if in_features % M or (in_features // M * n) % 4:
        raise ValueError(f"in_features={in_features} does not fit {n}:4 packing (needs a multiple of {16 // n})")


def topn_in_groups(score: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean mask keeping the n largest scores of every group of 4 along the last dim (any leading dims)."""
    in_f = score.shape[-1]
    if in_f % M:
        raise ValueError(f"{in_f} columns is not a multiple of {M}")
    g = score.reshape(*score.shape[:-1], in_f // M, M)
    keep = torch.topk(g, n, dim=-1, sorted=False).indices
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(score.shape)


def wanda_mask(w: torch.Tensor, sq_norm: torch.Tensor, n: int) -> torch.Tensor:
    score = w.abs().double() * sq_norm.double().clamp_min(0).sqrt().unsqueeze(0)
    return topn_in_groups(score, n)


def magnitude_mask(w: torch.Tensor, n: int) -> torch.Tensor:
    return topn_in_groups(w.abs(), n)


# ---------------------------------------------------------------------------------------------------------------
# SparseGPT-style sweep


def _inverse_hessian_chol(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of H^-1 (float64) and the dead-input mask, for one [in, in] Hessian."""
    h = hessian.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    for extra in (0.0, 0.1, 1.0):  # more damping only if the Cholesky factorisation fails
        try:
            hh = h + extra * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
            hinv = torch.cholesky_inverse(torch.linalg.cholesky(hh))
            return torch.linalg.cholesky(hinv, upper=True), dead
        except RuntimeError:
            continue
    raise RuntimeError("Hessian is not positive definite even with damping")


def obs_prune(w: torch.Tensor, hessian: torch.Tensor, n: int, mask: torch.Tensor | None = None,
              quant: tuple[int, int, bool] | None = None, damp: float = 0.01, block: int = 128):
    """Prune (and optionally quantize) `w` [out, in] column by column with inverse-Hessian error feedback.

    Also takes a batch: w [G, out, in] with hessian [G, in, in] (e.g. one projection kind of every layer), swept
    together so the Python loop over columns runs once for all of them; rows never interact, so this is exactly
    G independent sweeps. The sweep runs in float32 (H^-1 factor computed in float64), as GPTQ/SparseGPT do.
    mask: fixed kept-mask, or None to choose it by the SparseGPT score w^2 / [H^-1]_jj^2 group by group as the
      sweep reaches it (with quant: for a whole span at its start, since the span's grid needs its kept values).
    quant: (bits, group_size over kept values, symmetric); the quantization grid of a span is set from the
      current (already compensated) kept weights when the sweep reaches the span.
    Returns (w_new float32 with zeros at pruned positions and, with quant, dequantized kept values; kept mask;
    with quant also (scales, offsets or None) [out, groups], float16, of the grid each group was rounded to).
    """
    single = w.dim() == 2
    if single:
        w, hessian = w.unsqueeze(0), hessian.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    G, out_f, in_f = w.shape
    check_shape(in_f, n)
    factors = [_inverse_hessian_chol(h, damp) for h in hessian]
    hinv = torch.stack([f[0] for f in factors]).float()  # [G, in, in]
    dead = torch.stack([f[1] for f in factors])  # [G, in]
    W = w.float().clone().masked_fill_(dead.unsqueeze(1), 0.0)
    diag = torch.diagonal(hinv, dim1=1, dim2=2)  # [G, in]
    # A span is the original-column range of one quantization group of kept values.
    if quant is not None:
        bits, gsize, sym = quant
        span = in_f if gsize == -1 else min(in_f, gsize * M // n)
        qmax, half = 2 ** bits - 1, 2 ** (bits - 1)
    else:
        span = block
    step = math.gcd(span, block)
    keep = torch.zeros(G, out_f, in_f, dtype=torch.bool) if mask is None else mask.clone()
    grids = []
    for i1 in range(0, in_f, step):
        i2 = min(i1 + step, in_f)
        if quant is not None and i1 % span == 0:
            s2 = min(i1 + span, in_f)
            if mask is None:
                keep[..., i1:s2] = topn_in_groups(W[..., i1:s2] ** 2 / diag[:, None, i1:s2] ** 2, n)
            kept = W[..., i1:s2][keep[..., i1:s2]].reshape(G * out_f, -1)
            g = quantize_groups(kept, bits, -1, sym)  # one group: this span's kept values
            scale = g.scale.float().view(G, out_f)
            zero = None if sym else g.offset.float().view(G, out_f)
            grids.append((g.scale.view(G, out_f), None if sym else g.offset.view(G, out_f)))
        W1 = W[..., i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        H1 = hinv[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            if mask is None and quant is None and i % M == 0:
                # SparseGPT: pick each group's mask when the sweep reaches it, from the compensated weights.
                d4 = torch.diagonal(H1, dim1=1, dim2=2)[:, i:i + M]
                keep[..., i1 + i:i1 + i + M] = topn_in_groups(W1[..., i:i + M] ** 2 / d4[:, None, :] ** 2, n)
            col = W1[..., i]  # [G, out]
            k = keep[..., i1 + i]
            if quant is None:
                q = col * k
            elif sym:
                q = ((torch.clamp(torch.round(col / scale) + half, 0, qmax) - half) * scale) * k
            else:
                q = (torch.clamp(torch.round((col - zero) / scale), 0, qmax) * scale + zero) * k
            err = (col - q) / H1[:, i, i].unsqueeze(1)
            W1[..., i:] -= err.unsqueeze(2) * H1[:, i, i:].unsqueeze(1)
            W1[..., i] = q
            Err1[..., i] = err
        W[..., i1:i2] = W1
        W[..., i2:] -= torch.bmm(Err1, hinv[:, i1:i2, i2:])
    out = [W[0] if single else W, keep[0] if single else keep]
    if quant is not None:
        scales = torch.stack([g[0] for g in grids], -1)
        offsets = None if sym else torch.stack([g[1] for g in grids], -1)
        out.append((scales[0], None if offsets is None else offsets[0]) if single else (scales, offsets))
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------------
# Packed format


def compact(w: torch.Tensor, mask: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept values and their in-group positions, group by group; each group must keep exactly n."""
    out_f, in_f = w.shape
    check_shape(in_f, n)
    g = mask.reshape(out_f, in_f // M, M)
    counts = g.sum(-1)
    if not bool((counts == n).all()):
        raise ValueError(f"mask is not {n}:4: a group keeps {int(counts[counts != n][0])} values")
    # Positions of the kept entries in ascending order: sort (not-kept, position) keys.
    pos = torch.arange(M, device=g.device).expand_as(g)
    key = (~g).to(torch.int64) * M + pos
    idx = key.sort(-1).indices[..., :n]  # [out, groups, n]
    vals = torch.gather(w.reshape(out_f, in_f // M, M), -1, idx)
    return vals.reshape(out_f, -1).contiguous(), idx.reshape(out_f, -1).to(torch.uint8).contiguous()


def expand(values: torch.Tensor, idx: torch.Tensor, n: int, in_features: int) -> torch.Tensor:
    out_f, k = values.shape
    if k * M != in_features * n or idx.shape != values.shape:
        raise ValueError(f"compacted shape {tuple(values.shape)} does not match {n}:4 of {in_features} inputs")
    cols = torch.arange(k, device=values.device).div(n, rounding_mode="floor") * M + idx.long()
    return torch.zeros(out_f, in_features, dtype=values.dtype, device=values.device).scatter_(1, cols, values)


def compact_columns(v: torch.Tensor, idx: torch.Tensor, n: int) -> torch.Tensor:
    """v [in] gathered at every kept value's original column: [out, in*n/4]."""
    cols = torch.arange(idx.shape[1], device=idx.device).div(n, rounding_mode="floor") * M + idx.long()
    return v[cols]


def pack_indices(idx: torch.Tensor) -> torch.Tensor:
    out_f, k = idx.shape
    if k % 4:
        raise ValueError(f"{k} indices per row is not a multiple of 4")
    if idx.numel() and int(idx.max()) > 3:
        raise ValueError("in-group positions must be within 0..3")
    v = idx.to(torch.uint8).reshape(out_f, k // 4, 4)
    return (v[..., 0] | (v[..., 1] << 2) | (v[..., 2] << 4) | (v[..., 3] << 6)).contiguous()


def unpack_indices(packed: torch.Tensor) -> torch.Tensor:
    # arange, not torch.tensor([...]): a tensor from a host list is a host-to-device copy, which CUDA graph capture
    # of the reference path (shapes the sparse kernel does not take) forbids
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 3).reshape(packed.shape[0], -1)


def storage_report(out_features: int, in_features: int, lp: LinearPlan) -> dict:
    """Bytes of one module: packed (as the plan counts it), dense at the same value precision, dense fp16, CSR."""
    kept = round(out_features * in_features * lp.density)
    packed = lp.storage_bits(out_features, in_features) / 8
    dense_same_bits = LinearPlan(bits=lp.bits, group_size=lp.group_size, symmetric=lp.symmetric).storage_bits(
        out_features, in_features) / 8
    scale_bytes = packed - kept * (lp.bits + (2 if lp.sparsity != "dense" else 0)) / 8
    # Standard CSR: the same values (and scales), an int32 column index per kept value, int32 row pointers.
    csr = kept * lp.bits / 8 + scale_bytes + kept * 4 + (out_features + 1) * 4
    return {"kept": kept, "packed_bytes": packed, "dense_same_precision_bytes": dense_same_bits,
            "dense_fp16_bytes": out_features * in_features * 2, "csr_bytes": csr}
