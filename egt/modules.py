"""Swapping `nn.Linear` modules for packed ones, driven by the plan.

Contract:
- A packed module kind registers a factory with `register_kind(predicate, factory)`. `factory(plan, out, in, bias)`
  returns an empty module whose buffers `load_state_dict` fills; `predicate(plan)` says whether the kind stores a
  `LinearPlan`. The quantizer and the sparsifier register their kinds at import; this module knows neither.
- `install_compressed_modules(model, plan)` replaces every linear that the plan compresses, so loading a compressed
  directory is: build the float skeleton, install the packed modules, load the tensors.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .plan import CompressionPlan, LinearPlan, linear_modules

_KINDS: list[tuple[Callable[[LinearPlan], bool], Callable[..., nn.Module]]] = []


def register_kind(predicate: Callable[[LinearPlan], bool], factory: Callable[..., nn.Module]) -> None:
    _KINDS.append((predicate, factory))


def _load_kinds() -> None:
    # Importing the subpackages registers their module kinds.
    from . import quant, sparsify  # noqa: F401


def empty_module(lp: LinearPlan, out_features: int, in_features: int, bias: bool) -> nn.Module:
    _load_kinds()
    for predicate, factory in reversed(_KINDS):
        if predicate(lp):
            return factory(lp, out_features, in_features, bias)
    raise NotImplementedError(f"no packed module kind stores {lp.describe()}")


def cached_dense_weight(module: nn.Module, dtype: torch.dtype, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The reference path's dense weight, rebuilt only when the packed buffers change.

    Decoding dequantizes every weight at every step otherwise, which made compressed models several times slower
    than fp32 ones on CPU. The key holds each buffer's in-place version counter, so `load_state_dict` or a
    re-pack invalidates it. The cost is one dense copy of each packed weight in host memory (the fp32 model's
    size). On a GPU nothing is cached: decode uses the packed kernels, and a dense copy per layer would undo the
    compression in GPU memory for the few reference calls left (prefill of long prompts).
    """
    if torch.is_grad_enabled() or any(b.is_cuda for b in module.buffers(recurse=False)):
        return build()
    key = (dtype, tuple((n, b.device, b._version) for n, b in module.named_buffers(recurse=False) if b is not None))
    hit = module.__dict__.get("_egt_dense_cache")
    if hit is None or hit[0] != key:
        hit = module.__dict__["_egt_dense_cache"] = (key, build())
    return hit[1]


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def install_compressed_modules(model: nn.Module, plan: CompressionPlan) -> None:
    for name, (out_f, in_f) in linear_modules(model).items():
        lp = plan.for_module(name)
        if lp.quantized or lp.sparsity != "dense":
            old = get_module(model, name)
            set_module(model, name, empty_module(lp, out_f, in_f, getattr(old, "bias", None) is not None))
