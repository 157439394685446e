"""Group-wise weight quantizers: INT3 / INT4 / INT8, symmetric or asymmetric, groups of 32/64/128/256 or per channel.

Contract (importable by `egt.sparsify` and anything else that needs codes):
- `quantize_groups(w, bits, group, sym, clip=None)` -> `QuantizedGroups(q, scale, offset)`:
    * `w` [out, in] float; groups run along the input dimension, `group` columns each (`-1` = the whole row, i.e.
      per output channel). The last group of a row may be shorter when `in % group != 0`.
    * `q` [out, in] uint8 codes in [0, 2**bits - 1].
    * `scale` [out, G] float16, G = ceil(in / group).
    * `offset` [out, G] float16 for asymmetric, `None` for symmetric.
    * Decoding (`dequantize_groups`): asymmetric  w ~= scale * q + offset   (offset = value of code 0, i.e. the
      usual zero point z stored as -z * scale, so the kernel needs one FMA per weight);
      symmetric   w ~= scale * (q - 2**(bits-1))  (no stored offset).
    Scales and offsets are rounded to float16 *before* the codes are chosen, so codes are optimal for the stored
    parameters and a round trip through storage is exact.
- `clip`: None = plain min/max range (round-to-nearest, "RTN"). A sequence of shrink ratios (e.g. `CLIP_GRID`)
  searches, per group, the range shrink that minimises the (optionally `col_weight`-weighted, [in] or [out, in])
  squared error; this is the cheap part of what GPTQ/AWQ-style methods gain.
- `fake_quantize(w, ...)` = dequantize(quantize(w)) in w's dtype.
All functions are pure and run on any device.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

VALID_BITS = (3, 4, 8)
CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


class QuantizedGroups(NamedTuple):
    q: torch.Tensor  # [out, in] uint8 codes
    scale: torch.Tensor  # [out, G] float16
    offset: torch.Tensor | None  # [out, G] float16 (asymmetric) or None (symmetric)


def check_args(bits: int, group: int, in_features: int) -> int:
    """Validate (bits, group) and return the effective group length along the input dimension."""
    if bits not in VALID_BITS:
        raise ValueError(f"bits must be one of {VALID_BITS}, got {bits}")
    if group == -1:
        return in_features
    if group not in (32, 64, 128, 256):
        raise ValueError(f"group must be 32, 64, 128, 256 or -1 (per channel), got {group}")
    return group


def num_groups(in_features: int, group: int) -> int:
    g = in_features if group == -1 else group
    return -(-in_features // g)


def _grouped(w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] -> ([out, G, g] padded with NaN-free zeros, validity mask [G, g])."""
    out_f, in_f = w.shape
    n = -(-in_f // g)
    pad = n * g - in_f
    wp = torch.nn.functional.pad(w, (0, pad)) if pad else w
    # a comparison, not `valid[in_f:] = False`: that assignment copies a host scalar, which CUDA graph capture forbids
    valid = torch.arange(n * g, device=w.device) < in_f
    return wp.reshape(out_f, n, g), valid.view(n, g)


def _params(lo: torch.Tensor, hi: torch.Tensor, bits: int, sym: bool):
    """fp16-rounded (scale, offset) for group ranges [lo, hi] (offset None when symmetric)."""
    qmax = 2 ** bits - 1
    tiny = torch.finfo(torch.float16).tiny
    if sym:
        half = 2 ** (bits - 1)
        # Codes span [-half, half-1]: use the larger of the two one-sided requirements.
        scale = torch.maximum(hi.clamp(min=0) / (half - 1), (-lo).clamp(min=0) / half)
        scale = scale.clamp(min=tiny).half().float()
        return scale, None
    scale = ((hi - lo) / qmax).clamp(min=tiny).half().float()
    offset = lo.half().float()
    return scale, offset


def _codes(wg: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, bits: int) -> torch.Tensor:
    qmax = 2 ** bits - 1
    if offset is None:
        half = 2 ** (bits - 1)
        return (torch.round(wg / scale.unsqueeze(-1)) + half).clamp(0, qmax)
    return torch.round((wg - offset.unsqueeze(-1)) / scale.unsqueeze(-1)).clamp(0, qmax)


def _decode(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, bits: int) -> torch.Tensor:
    if offset is None:
        return (q - 2 ** (bits - 1)) * scale.unsqueeze(-1)
    return q * scale.unsqueeze(-1) + offset.unsqueeze(-1)


@torch.no_grad()
def quantize_groups(w: torch.Tensor, bits: int, group: int, sym: bool, clip: Sequence[float] | None = None,
                    col_weight: torch.Tensor | None = None) -> QuantizedGroups:
    """Quantize `w` [out, in] group-wise; see the module docstring for the exact encoding."""
    if w.dim() != 2:
        raise ValueError(f"w must be 2-D [out, in], got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("w contains NaN or Inf")
    g = check_args(bits, group, w.shape[1])
    wf = w.float()
    wg, valid = _grouped(wf, g)
    big = torch.finfo(torch.float32).max
    lo_full = torch.where(valid, wg, torch.full_like(wg, big)).amin(-1)
    hi_full = torch.where(valid, wg, torch.full_like(wg, -big)).amax(-1)
    ratios = list(clip) if clip else [1.0]
    cw = None
    if col_weight is not None and len(ratios) > 1:
        cw = col_weight.float().to(w.device)
        cw, _ = _grouped(cw.view(1, -1) if cw.dim() == 1 else cw, g)  # [1 or out, G, g], zero-padded
    best_err, best = None, None
    for r in ratios:
        if sym:
            lo, hi = lo_full * r, hi_full * r
        else:
            # Shrink around the group centre so both ends move in.
            mid = (lo_full + hi_full) / 2
            lo, hi = mid + (lo_full - mid) * r, mid + (hi_full - mid) * r
        scale, offset = _params(lo, hi, bits, sym)
        q = _codes(wg, scale, offset, bits)
        if len(ratios) == 1:
            best = (q, scale, offset)
            break
        err = (_decode(q, scale, offset, bits) - wg).pow(2) * valid
        if cw is not None:
            err = err * cw
        err = err.sum(-1)
        if best is None:
            best_err, best = err, (q, scale, offset)
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = (torch.where(better.unsqueeze(-1), q, best[0]), torch.where(better, scale, best[1]),
                None if offset is None else torch.where(better, offset, best[2]))
    q, scale, offset = best
    q = q.reshape(w.shape[0], -1)[:, : w.shape[1]].to(torch.uint8)
    return QuantizedGroups(q.contiguous(), scale.half().contiguous(),
                           None if offset is None else offset.half().contiguous())


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, bits: int, group: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Codes + parameters -> weights [out, in] in `dtype` (computed in float32)."""
    out_f, in_f = q.shape
    g = check_args(bits, group, in_f)
    qg, _ = _grouped(q.float(), g)
    w = _decode(qg, scale.float(), None if offset is None else offset.float(), bits)
    return w.reshape(out_f, -1)[:, :in_f].to(dtype)


def fake_quantize(w: torch.Tensor, bits: int, group: int, sym: bool, clip: Sequence[float] | None = None,
                  col_weight: torch.Tensor | None = None) -> torch.Tensor:
    qg = quantize_groups(w, bits, group, sym, clip, col_weight)
    return dequantize_groups(qg.q, qg.scale, qg.offset, bits, group, dtype=w.dtype)
