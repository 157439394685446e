"""W4A16 GEMV/GEMM on CUDA for decode batches: y[M, N] = x[M, K] @ dequant(W)[N, K]^T, M <= 16.

Contract:
- `w4a16_matmul(x, qweight, scales, offsets, group, in_features, config=None)`: x [M, K] float16/bfloat16 on CUDA,
  qweight the 4-bit layout of `egt.quant.packing` (int32 [N, K/8], 8 codes per word along K), scales/offsets
  [N, G] float16 (offsets None = symmetric, code 8 is zero), group 32/64/128/256 or -1 (per channel). Returns
  y [M, N] in x's dtype; fp32 accumulation (tensor cores), the dequantized weight rounded to x's dtype.
- `available()`: a CUDA device and the CUDA C++ kernel library (built with nvcc at first use, see `egt.kernels`).
- `supports(in_features, rows)`: K % 32 == 0 (16-byte aligned rows) and 1 <= rows <= 16; `QuantLinear` falls back
  to dequantize + matmul otherwise.
- config: (row_tiles, splits, warps) to override the heuristic (tests and bench/ use it).
Why CUDA C++ and not Triton: three Triton versions reached 14-29% of copy bandwidth at batch 1 (notes in
bench/results/quant_kernels.notes.md); the time went to nibble unpacking and int->float conversion per weight.
The CUDA kernel dequantizes two weights per LOP3 (magic-number trick; the group scale is applied once per 128
columns in fp32 for groups >= 128, per weight pair with HSUB2 + HFMA2 for groups 32/64) and feeds mma.sync, which
Triton cannot express (register-level byte permutes, fragment layouts).
Programmatic dependent launch on sm_90 is opt-in (EGT_GEMV_PDL=1, `egt.kernels.default_pdl`).
Measured (bench/results/quant_kernels.md, H100, 2026-11-27): M=1 31-35% of the copy bandwidth on the 1.5B shapes
(63-69% of a same-size copy; goal 75%: missed), 1.8-1.9x faster than fp16 cuBLAS; M=16 slower than cuBLAS.
"""
from __future__ import annotations

import torch

from .. import kernels as _k

MAX_M = _k.MAX_M


def available() -> bool:
    return _k.available()


def supports(in_features: int, rows: int) -> bool:
    return _k.supports(in_features, 4, rows)


def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None,
                 group: int, in_features: int, config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """y = x @ dequant(W)^T for x [M, K], M <= 16; see the module docstring."""
    if x.dim() != 2 or x.shape[1] != in_features:
        raise ValueError(f"x must be [M, {in_features}], got {tuple(x.shape)}")
    if x.shape[0] > MAX_M:
        raise ValueError(f"w4a16_matmul handles M <= {MAX_M}; got M={x.shape[0]}")
    return _k.w4_gemv(x, qweight, None, scales, offsets, 4, group, config, pdl=_k.default_pdl())
