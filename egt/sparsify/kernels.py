"""Sparse (2:4, 1:4) and dense W4A16 GEMV on CUDA, for decode batches of 1-16 rows.

Contract:
- `sparse_w4_gemv(x [B, in], qweight, indices, scales, offsets, n, group, config=None)` computes x @ W^T for the
  packed N:4 INT4 weight of `SparseQuantLinear` (kept-value codes in egt.quant's int32 layout, 2-bit in-group
  positions four per byte, fp16 scales and optional offsets per group of `group` kept values:
  w = scale * code + offset); `n=4` with `indices=None` is the dense INT4 kernel on a `QuantLinear` weight.
- Output dtype = x dtype; fp32 accumulation. 1 <= B <= 16. `supports(in, n, rows)`: kept values per row a multiple
  of 32 (in % 64 for 2:4, % 128 for 1:4); `SparseQuantLinear` falls back to its reference path otherwise.
- Checked against the dense-expanded dequantized weight in float32 (tests/test_sparsify_kernels.py, CUDA only).

How (egt/kernels/w4_gemv.cu): the same streaming loop as the dense kernel; each group of 4 columns is expanded
in registers from its kept values to 4 dense values with two byte permutes whose selectors come from a 16-entry
table indexed by the group's 2-bit positions, then multiplied on the tensor cores with the unmodified activations.
Only the packed bytes (4 bits per kept value + 2 bits of position) stream from DRAM. Programmatic dependent launch
on sm_90 is opt-in (EGT_GEMV_PDL=1, `egt.kernels.default_pdl`).
"""
from __future__ import annotations

import torch

from .. import kernels as _k


def available() -> bool:
    return _k.available()


def supports(in_features: int, n: int, rows: int) -> bool:
    return _k.supports(in_features, n, rows)


def sparse_w4_gemv(x: torch.Tensor, qweight: torch.Tensor, indices: torch.Tensor | None, scales: torch.Tensor,
                   offsets: torch.Tensor | None, n: int, group: int,
                   config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """y [B, out] = x [B, in] @ W^T; see the module docstring."""
    if x.dim() != 2 or not 1 <= x.shape[0] <= _k.MAX_M:
        raise ValueError(f"x must be [B, in] with 1 <= B <= {_k.MAX_M}, got {tuple(x.shape)}")
    return _k.w4_gemv(x, qweight, indices, scales, offsets, n, group, config, pdl=_k.default_pdl())
