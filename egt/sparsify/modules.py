"""Packed N:4 sparse linear modules (the storage that the plan, the format and the kernels share).

Contract:
- `SparseLinear(lp, out, in, bias)`: float kept values `values` [out, in*N/4] (model dtype) plus `indices`
  uint8 [out, in*N/16] (four 2-bit in-group positions per byte, first in the low bits).
- `SparseQuantLinear(lp, out, in, bias)`: the compacted kept values [out, in*N/4] quantized exactly as
  `egt.quant.QuantLinear` stores a dense weight of that shape (groups of `lp.group_size` kept values along a row;
  `qweight` int32 in `egt.quant.packing`'s layout, `scales` and, when asymmetric, `offsets` float16 [out, G];
  value = scales * code + offsets, or scales * (code - 2^(bits-1)) symmetric), plus `indices` as above.
  `quantize_kept(lp)` is the hook `egt.quant.quantize_model` calls on sparse modules.
- Both are constructible empty from `(LinearPlan, out_features, in_features, bias)` and hold all their data in
  buffers, so `egt.format.load_compressed` fills them with `load_state_dict`. Both register with
  `egt.modules.register_kind` at import.
- forward: on CUDA, 4 bits, fp16/bf16, at most 16 rows, `SparseQuantLinear` runs the sparse W4A16 GEMV kernel;
  everywhere else (and always for `SparseLinear`) the reference path expands to a dense weight and calls
  `F.linear`, so sparse models run on any device.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modules import cached_dense_weight, register_kind
from ..plan import LinearPlan
from ..quant.packing import pack, packed_words, unpack
from ..quant.quantizer import CLIP_GRID, QuantizedGroups, dequantize_groups, num_groups, quantize_groups
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
        w = cached_dense_weight(self, x.dtype, lambda: self.dense_weight(x.dtype))
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

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

    def quantize_kept(self, lp: LinearPlan) -> nn.Module:
        """Called by `egt.quant.quantize_model`: quantize the kept values (RTN with a clip search weighted by the
        kept inputs' energy when the sparsifier left it in `col_weight`)."""
        if lp.sparsity != self.plan.sparsity:
            raise ValueError(f"plan {lp.describe()} does not match this module's {self.plan.sparsity}")
        idx = P.unpack_indices(self.indices)
        norm = getattr(self, "in_sq_norm", None)
        cw = None if norm is None else P.compact_columns(norm.to(idx.device), idx, self.n).float()
        return _quantize_values(self.values, idx, lp, self.in_features, self.bias, cw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._reference(x)


class SparseQuantLinear(_SparseBase):
    def __init__(self, lp: LinearPlan, out_features: int, in_features: int, bias: bool = False):
        if not lp.quantized:
            raise ValueError(f"SparseQuantLinear stores quantized kept values, not {lp.describe()}")
        super().__init__(lp, out_features, in_features, bias)
        self.bits, self.group_size = lp.bits, lp.group_size
        g = num_groups(self.kept, lp.group_size)
        self.register_buffer("qweight", torch.zeros(out_features, packed_words(self.kept, lp.bits), dtype=torch.int32))
        self.register_buffer("scales", torch.zeros(out_features, g, dtype=torch.float16))
        self.register_buffer("offsets", None if lp.symmetric else torch.zeros(out_features, g, dtype=torch.float16))

    @classmethod
    def from_codes(cls, lp: LinearPlan, codes: QuantizedGroups, idx: torch.Tensor, in_features: int,
                   bias: torch.Tensor | None = None) -> "SparseQuantLinear":
        out_f = codes.q.shape[0]
        m = cls(lp, out_f, in_features, bias is not None).to(codes.q.device)  # where the codes are (CPU or GPU)
        if codes.q.shape != (out_f, m.kept) or codes.scale.shape != m.scales.shape:
            raise ValueError(f"codes {tuple(codes.q.shape)} / scales {tuple(codes.scale.shape)} do not match the plan")
        if (codes.offset is None) != lp.symmetric:
            raise ValueError("codes and plan disagree about symmetry")
        m.qweight.copy_(pack(codes.q, lp.bits))
        m.indices.copy_(P.pack_indices(idx))
        m.scales.copy_(codes.scale)
        if codes.offset is not None:
            m.offsets.copy_(codes.offset)
        if bias is not None:
            m.bias.data = bias.detach().float().clone()
        return m

    def codes(self) -> torch.Tensor:
        return unpack(self.qweight, self.bits, self.kept)

    def kept_values(self) -> torch.Tensor:
        return dequantize_groups(self.codes(), self.scales, self.offsets, self.bits, self.group_size)

    def quantize_kept(self, lp: LinearPlan) -> nn.Module:
        """Called by `egt.quant.quantize_model`; already quantized to `lp` (the joint sweep) -> self."""
        if lp == self.plan:
            return self
        return _quantize_values(self.kept_values(), P.unpack_indices(self.indices), lp, self.in_features, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if x.is_cuda and self.bits == 4 and x.dtype in (torch.float16, torch.bfloat16):
            from .kernels import available, sparse_w4_gemv, supports

            if supports(self.in_features, self.n, rows) and available():
                y = sparse_w4_gemv(x.reshape(rows, -1), self.qweight, self.indices, self.scales, self.offsets,
                                   self.n, self.group_size).reshape(*x.shape[:-1], self.out_features)
                return y if self.bias is None else y + self.bias.to(y.dtype)
        return self._reference(x)

    def _apply(self, fn, recurse=True):
        # Scales/offsets stay float16 whatever model.to(dtype) asks, as in QuantLinear (bytes = storage_bits).
        kept = {n: self._buffers[n] for n in ("scales", "offsets") if self._buffers.get(n) is not None}
        super()._apply(fn, recurse)
        for n, t in kept.items():
            self._buffers[n] = t.to(device=self._buffers[n].device)
        return self


def _quantize_values(values: torch.Tensor, idx: torch.Tensor, lp: LinearPlan, in_features: int, bias,
                     col_weight: torch.Tensor | None = None) -> SparseQuantLinear:
    """Round-to-nearest with egt.quant's clipped group quantizer, on the compacted kept values."""
    clip = CLIP_GRID if col_weight is not None else None
    qg = quantize_groups(values.float(), lp.bits, lp.group_size, lp.symmetric, clip, col_weight)
    return SparseQuantLinear.from_codes(lp, qg, idx, in_features, bias)


def _is_sparse_float(lp: LinearPlan) -> bool:
    return lp.sparsity != "dense" and not lp.quantized


def _is_sparse_quant(lp: LinearPlan) -> bool:
    return lp.sparsity != "dense" and lp.quantized


register_kind(_is_sparse_float, SparseLinear)
register_kind(_is_sparse_quant, SparseQuantLinear)
