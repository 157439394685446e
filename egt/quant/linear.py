"""`QuantLinear`: the packed weight-only quantized linear module (the module kind `egt.quant` registers).

Stored tensors (state-dict names, what `egt.format` writes and the MegaKernel reads):
    qweight  int32   [out, W]   codes packed along the input dim, layout in `egt.quant.packing` (bits 3, 4 or 8)
    scales   float16 [out, G]   G = ceil(in / group); group = in for per-channel
    offsets  float16 [out, G]   asymmetric only: decoded weight = scales * q + offsets (offset = value of code 0)
                                symmetric: decoded weight = scales * (q - 2**(bits-1)); no offsets tensor
    bias     float   [out]      only if the original linear had one
Group j of row n covers input columns [j*group, min((j+1)*group, in)).

Contract:
- Constructible empty from `(LinearPlan, out_features, in_features, bias)` (what `egt.format.load_compressed` needs);
  `QuantLinear.from_linear(linear, plan, codes=None)` packs a float linear (or precomputed `QuantizedGroups`).
- `forward(x)`: on CUDA with 4-bit weights, fp16/bf16 x and at most 16 rows, the CUDA W4A16 kernel
  (`egt.quant.kernels`, when `kernels.supports` the width); otherwise (CPU, other bit widths, large batches) the
  reference path: dequantize to x's dtype, then `F.linear`.
- `scales`/`offsets` stay float16 whatever `model.to(dtype)` asks (only their device follows), so bytes on disk and
  in memory are what `LinearPlan.storage_bits` counts.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..modules import cached_dense_weight
from ..plan import LinearPlan
from . import kernels
from .packing import pack, packed_words, unpack
from .quantizer import QuantizedGroups, dequantize_groups, num_groups, quantize_groups

_FP16_BUFFERS = ("scales", "offsets")


class QuantLinear(nn.Module):
    def __init__(self, plan: LinearPlan, out_features: int, in_features: int, bias: bool = False):
        super().__init__()
        if not plan.quantized or plan.sparsity != "dense":
            raise ValueError(f"QuantLinear stores dense int3/int4/int8 weights, not {plan.describe()}")
        self.plan = plan
        self.bits, self.group_size, self.symmetric = plan.bits, plan.group_size, plan.symmetric
        self.in_features, self.out_features = in_features, out_features
        g = num_groups(in_features, plan.group_size)
        self.register_buffer("qweight", torch.zeros(out_features, packed_words(in_features, plan.bits), dtype=torch.int32))
        self.register_buffer("scales", torch.zeros(out_features, g, dtype=torch.float16))
        self.register_buffer("offsets", None if plan.symmetric else torch.zeros(out_features, g, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, plan: LinearPlan, codes: QuantizedGroups | None = None) -> "QuantLinear":
        w = linear.weight.detach()
        m = cls(plan, w.shape[0], w.shape[1], linear.bias is not None)
        if codes is None:
            codes = quantize_groups(w, plan.bits, plan.group_size, plan.symmetric)
        if (codes.offset is None) != plan.symmetric:
            raise ValueError("codes and plan disagree about symmetry")
        m.qweight.copy_(pack(codes.q, plan.bits))
        m.scales.copy_(codes.scale)
        if codes.offset is not None:
            m.offsets.copy_(codes.offset)
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach().float())
        return m.to(w.device)

    def codes(self) -> torch.Tensor:
        return unpack(self.qweight, self.bits, self.in_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [out, in] this module multiplies by."""
        return dequantize_groups(self.codes(), self.scales, self.offsets, self.bits, self.group_size, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = x.numel() // self.in_features
        if (x.is_cuda and self.bits == 4 and x.dtype in (torch.float16, torch.bfloat16)
                and kernels.supports(self.in_features, rows) and kernels.available()):
            y = kernels.w4a16_matmul(x.reshape(rows, self.in_features), self.qweight, self.scales, self.offsets,
                                     self.group_size, self.in_features)
            if self.bias is not None:
                y = y + self.bias.to(y.dtype)
            return y.view(*lead, self.out_features)
        w = cached_dense_weight(self, x.dtype, lambda: self.dequantize(x.dtype))
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def _apply(self, fn, recurse=True):
        # Keep scales/offsets in float16 (only move their device) so storage matches LinearPlan.storage_bits.
        kept = {n: self._buffers[n] for n in _FP16_BUFFERS if self._buffers.get(n) is not None}
        super()._apply(fn, recurse)
        for n, t in kept.items():
            self._buffers[n] = t.to(device=self._buffers[n].device)
        return self

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.plan.describe()}"


def is_quant_plan(plan: LinearPlan) -> bool:
    return plan.quantized and plan.sparsity == "dense"
