"""Packed N:4 sparse linear modules (the storage that the plan, the format and the kernels share).

Contract:
- `SparseLinear(lp, out, in, bias)`: float kept values `values` [out, in*N/4] (model dtype) plus `indices`
  uint8 [out, in*N/16] (four 2-bit in-group positions per byte, first in the low bits).
- `SparseQuantLinear(lp, out, in, bias)`: the kept values quantized to INT4 in groups of `lp.group_size` kept values
  along each row: `qweight` uint8 [out, in*N/8] (two codes per byte, first in the low nibble), `scales` [out, G]
  and, when asymmetric, `zeros` [out, G] (float, dtype of the model; value = (code - zero) * scale, zero = 8
  when symmetric), plus `indices` as above.
- Both are constructible empty from `(LinearPlan, out_features, in_features, bias)` and hold all their data in
  buffers, so `egt.format.load_compressed` fills them with `load_state_dict`. Both register with
  `egt.modules.register_kind` at import.
- forward: on CUDA with at most 8 rows, `SparseQuantLinear` runs the sparse W4A16 GEMV kernel (`kernels.py`);
  everywhere else (and always for `SparseLinear`) the reference path expands to a dense weight and calls
  `F.linear`, so sparse models run on any device.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modules import register_kind
from ..plan import LinearPlan
from . import pattern as P


class _SparseBase(nn.Module):
    def __init__(self, lp: LinearPlan, out_features: int, in_features: int, bias: bool):
        super().__init__()
        self.n = P.n_of(lp.sparsity)
        P.check_shape(in_features, self.n)
        self.plan = lp
        self.in_features, self.out_features = in_features, out_features
        self.kept = in_features * self.n // P.M
        self.register_buffer("indices", torch.zeros(out_features, self.kept // 4, dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @property
    def weight(self) -> torch.Tensor:
        """The dense-expanded weight (reference path; also what generic code inspecting `.weight` sees)."""
        return self.dense_weight()

    def kept_values(self) -> torch.Tensor:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def dense_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        vals = self.kept_values()
        if dtype is not None:
            vals = vals.to(dtype)
        return P.expand(vals, P.unpack_indices(self.indices), self.n, self.in_features)

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dense_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.plan.describe()}"


class SparseLinear(_SparseBase):
    def __init__(self, lp: LinearPlan, out_features: int, in_features: int, bias: bool = False):
        super().__init__(lp, out_features, in_features, bias)
        self.register_buffer("values", torch.zeros(out_features, self.kept))

    @classmethod
    def from_dense(cls, lp: LinearPlan, w: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None):
        out_f, in_f = w.shape
        m = cls(lp, out_f, in_f, bias is not None)
        vals, idx = P.compact(w, mask, m.n)
        m.values = vals.to(w.dtype)
        m.indices = P.pack_indices(idx)
        if bias is not None:
            m.bias.data = bias.detach().clone()
        return m

    def kept_values(self) -> torch.Tensor:
        return self.values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._reference(x)


class SparseQuantLinear(_SparseBase):
    def __init__(self, lp: LinearPlan, out_features: int, in_features: int, bias: bool = False):
        if lp.bits != 4:
            raise ValueError(f"sparse quantized storage supports 4 bits, got {lp.bits}")
        super().__init__(lp, out_features, in_features, bias)
        g = self.kept if lp.group_size == -1 else lp.group_size
        self.group = g
        ng = -(-self.kept // g)
        self.register_buffer("qweight", torch.zeros(out_features, self.kept // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, ng))
        if lp.symmetric:
            self.zeros = None
        else:
            self.register_buffer("zeros", torch.zeros(out_features, ng))

    @classmethod
    def from_parts(cls, lp: LinearPlan, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                   idx: torch.Tensor, in_features: int, bias: torch.Tensor | None = None):
        out_f = codes.shape[0]
        m = cls(lp, out_f, in_features, bias is not None)
        if codes.shape != (out_f, m.kept) or scales.shape != m.scales.shape:
            raise ValueError(f"codes {tuple(codes.shape)} / scales {tuple(scales.shape)} do not match the plan")
        m.qweight = P.pack_int4(codes)
        m.indices = P.pack_indices(idx)
        m.scales = scales.float().clone()
        if zeros is not None:
            m.zeros = zeros.float().clone()
        if bias is not None:
            m.bias.data = bias.detach().clone()
        return m

    def kept_values(self) -> torch.Tensor:
        return P.group_dequantize(P.unpack_int4(self.qweight), self.scales, self.zeros, 4, self.group).to(
            self.scales.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if x.is_cuda and 1 <= rows <= 8:
            from .kernels import sparse_w4_gemv, triton_available

            if triton_available():
                y = sparse_w4_gemv(x.reshape(rows, -1), self.qweight, self.indices, self.scales, self.zeros,
                                   self.n, self.group).reshape(*x.shape[:-1], self.out_features)
                return y if self.bias is None else y + self.bias.to(y.dtype)
        return self._reference(x)


def _is_sparse_float(lp: LinearPlan) -> bool:
    return lp.sparsity != "dense" and not lp.quantized


def _is_sparse_int4(lp: LinearPlan) -> bool:
    return lp.sparsity != "dense" and lp.bits == 4


register_kind(_is_sparse_float, SparseLinear)
register_kind(_is_sparse_int4, SparseQuantLinear)
