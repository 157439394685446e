"""Adaptive group quantization (weight-only INT3/INT4/INT8) for egt; see issue 3.

Public API:
- `quantize_model(loaded, plan, cfg, texts, progress)` -> `CompressionPlan`: the stage `egt.compress` calls. It
  collects calibration statistics (`egt.calibrate.collect_stats`), measures every layer's sensitivity to every
  candidate (bits, group, symmetry) (`sensitivity`), allocates candidates under the average bits-per-weight budget
  with a multiple-choice knapsack DP (`allocate`), quantizes each layer (GPTQ by default, `gptq`), swaps in
  `QuantLinear` modules and returns the plan describing them.
- Building blocks other stages may import: `quantize_groups`, `dequantize_groups`, `fake_quantize` (codes),
  `pack`, `unpack` (bit layout), `gptq_quantize`, `QuantLinear` (the packed module, layout in `linear`),
  `w4a16_matmul` (CUDA kernel).
- Importing this package registers `QuantLinear` as the module kind for dense quantized `LinearPlan`s.

What the budget covers: every compressible linear (`egt.plan.linear_modules`) except an LM head tied to the input
embedding, which stays in float as the embedding (quantizing it would add a second copy, not save bytes). bpw =
sum of `LinearPlan.storage_bits` over those modules / their weight count.

Config read from `cfg` (`egt.compress.CompressConfig`): bits (lowest precision of any layer), budget (average bpw;
default bits + 0.25), group_size (fix the group; with no budget: uniform quantization at that group), seed.
Optional attributes, if present: `quant_refine` ("gptq" | "clip" | "rtn" | "awq" | "awq+gptq";
"clip" = round-to-nearest with a per-group range search, "awq" = activation-aware scaling then "clip"), `quant_metric` (a
`sensitivity.METRICS` name), `quant_symmetric` (uniform mode).
Calibration (`cfg.calibration_mode`, default `DEFAULT_CALIBRATION`): the plans are chosen on statistics of the model
as it enters this stage; "sequential"/"sequential-module" then run GPTQ (and RTN+clip) stage by stage on the
statistics of the model with its earlier layers already quantized (`egt.calibrate.sequential_stats`); "oneshot"
quantizes every layer with the first statistics. AWQ always runs one-shot (it rescales with those statistics).
Sparse layers (already swapped by `egt.sparsify`) keep their pattern; they are given `bits`/`group_size`
(default 128, asymmetric), their storage counts against the budget, and their module's
`quantize_kept(plan: LinearPlan) -> nn.Module` is called to quantize the kept values.
"""
from __future__ import annotations

import contextlib
import time

import torch

from ..calibrate import collect_stats, sequential_stats
from ..modules import get_module, register_kind, set_module
from ..plan import CompressionPlan, LinearPlan, linear_modules
from .allocate import InfeasibleBudget, Option, allocate
from .gptq import gptq_quantize, gptq_quantize_batch
from .kernels import w4a16_matmul
from .linear import QuantLinear, is_quant_plan
from .packing import pack, unpack
from .quantizer import CLIP_GRID, QuantizedGroups, dequantize_groups, fake_quantize, quantize_groups
from .sensitivity import METRICS, candidate_plans, layer_errors, output_fisher

register_kind(is_quant_plan, QuantLinear)

REFINES = ("gptq", "clip", "rtn", "awq", "awq+gptq")
# Defaults chosen by measurement on the default model (eval/results/quant.md, quant_sensitivity.md): GPTQ beat
# RTN+clip and AWQ+clip at 4.25 and 3.25 bpw; the Fisher-weighted output error ranked single-layer KL best
# (Spearman 0.67 vs <= 0.43 for weight, output, Hessian and relative output error).
DEFAULT_REFINE = "gptq"
DEFAULT_METRIC = "fisher"
# Sequential calibration per group of modules sharing an input lowered held-out KL vs one-shot in every GPTQ row
# measured (eval/results/sparsify.md, "Sequential calibration of egt.quant").
CALIBRATIONS = ("oneshot", "sequential", "sequential-module")
DEFAULT_CALIBRATION = "sequential-module"

__all__ = ["quantize_model", "quantize_groups", "dequantize_groups", "fake_quantize", "pack", "unpack",
           "gptq_quantize", "QuantLinear", "w4a16_matmul", "InfeasibleBudget", "QuantizedGroups", "REFINES"]


@contextlib.contextmanager
def _threads(n: int):
    # Many small tensor ops: one thread avoids OpenMP spin-waits on a shared 2-core machine.
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def quantized_names(model) -> dict[str, tuple[int, int]]:
    """{name: (out, in)} of the modules the quantizer owns (see "What the budget covers")."""
    shapes = linear_modules(model)
    if model.shape.tie_embeddings:
        shapes.pop("lm_head", None)
    return shapes


def _log(progress, msg):
    if progress:
        print(f"[egt.quant] {msg}", flush=True)


def choose_plans(model, tokenizer, texts, names, bits, budget, group_size, fixed, metric, progress, stats=None,
                 seed=0):
    """Sensitivity + allocation: returns ({name: LinearPlan}, meta)."""
    shapes = quantized_names(model)
    weights = sum(o * i for o, i in shapes.values())
    cands = candidate_plans(bits, group_size)
    t0 = time.perf_counter()
    fisher = output_fisher(model, tokenizer, texts, names, seed=seed) if metric == "fisher" else {}
    options = {}
    for n in names:
        w = get_module(model, n).weight
        errs = layer_errors(w, stats[n], fisher.get(n), cands, seed=seed, metrics=(metric,))
        o, i = shapes[n]
        options[n] = [Option(lp, lp.storage_bits(o, i), e[metric]) for lp, e in zip(cands, errs)]
    for n, lp in fixed.items():
        o, i = shapes[n]
        options[n] = [Option(lp, lp.storage_bits(o, i), 0.0)]
    _log(progress, f"sensitivity of {len(names)} layers x {len(cands)} candidates ({metric}) in "
                   f"{time.perf_counter() - t0:.1f}s")
    chosen = allocate(options, budget * weights, weights=weights)
    predicted = sum(o.error for o in chosen.values())
    meta = {"solver": "multiple-choice knapsack DP (egt.quant.allocate)", "metric": metric,
            "candidates": [lp.describe() for lp in cands], "predicted_error": predicted}
    return {n: o.plan for n, o in chosen.items()}, meta


def quantize_layers(model, stats, plans: dict[str, LinearPlan], refine: str) -> None:
    """Quantize every dense layer in `plans` with `refine` and swap in QuantLinear modules."""
    if refine not in REFINES:
        raise ValueError(f"refine must be one of {REFINES}, got {refine!r}")
    names = list(plans)
    codes: dict[str, QuantizedGroups] = {}
    if refine == "gptq":
        by_shape: dict[tuple, list[str]] = {}
        for n in names:
            by_shape.setdefault(tuple(get_module(model, n).weight.shape), []).append(n)
        for group in by_shape.values():
            ws = [get_module(model, n).weight for n in group]
            hs = [stats[n].xtx for n in group]
            specs = [(plans[n].bits, plans[n].group_size, plans[n].symmetric) for n in group]
            codes.update(zip(group, gptq_quantize_batch(ws, hs, specs, clip=CLIP_GRID)))
    else:
        for n in names:
            lp = plans[n]
            w = get_module(model, n).weight
            clip = None if refine == "rtn" else CLIP_GRID
            colw = None if refine == "rtn" else torch.diagonal(stats[n].xtx).float()
            codes[n] = quantize_groups(w, lp.bits, lp.group_size, lp.symmetric, clip, colw)
    for n in names:
        old = get_module(model, n)
        new = QuantLinear.from_linear(old, plans[n], codes[n])
        set_module(model, n, new.to(device=old.weight.device))


def quantize_model(loaded, plan: CompressionPlan, cfg, texts: list[str], progress: bool = True) -> CompressionPlan:
    """Quantize `loaded.model` in place (see the package docstring); returns the updated plan."""
    model, tok = loaded.model, loaded.tokenizer
    bits = cfg.bits
    if bits not in (3, 4, 8):
        raise ValueError(f"bits must be 3, 4 or 8, got {bits}")
    refine = getattr(cfg, "quant_refine", None) or DEFAULT_REFINE
    metric = getattr(cfg, "quant_metric", None) or DEFAULT_METRIC
    if refine not in REFINES:
        raise ValueError(f"quant_refine must be one of {REFINES}, got {refine!r}")
    if metric not in METRICS:
        raise ValueError(f"quant_metric must be one of {METRICS}, got {metric!r}")
    calibration = getattr(cfg, "calibration_mode", None) or DEFAULT_CALIBRATION
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration_mode must be one of {CALIBRATIONS}, got {calibration!r}")
    shapes = quantized_names(model)
    weights = sum(o * i for o, i in shapes.values())
    sparse = {n: plan.for_module(n) for n in shapes if plan.for_module(n).sparsity != "dense"}
    dense = [n for n in shapes if n not in sparse]
    fixed = {n: LinearPlan(bits=bits, group_size=cfg.group_size or 128, symmetric=False, sparsity=lp.sparsity)
             for n, lp in sparse.items()}
    uniform = cfg.budget is None and cfg.group_size is not None
    if not uniform:
        # Fail fast, before any calibration work, on a budget no allocation can meet.
        budget = cfg.budget if cfg.budget is not None else bits + 0.25
        cands = candidate_plans(bits, cfg.group_size)
        least = sum(min(lp.storage_bits(*shapes[n]) for lp in cands) for n in dense)
        least += sum(lp.storage_bits(*shapes[n]) for n, lp in fixed.items())
        if least > budget * weights:
            raise InfeasibleBudget(f"budget of {budget} bits per weight is infeasible with --bits {bits}: the "
                                   f"cheapest allowed choice for every layer needs {least / weights:.4f}")
    t0 = time.perf_counter()
    with _threads(1):
        stats = collect_stats(model, tok, texts, modules=dense, progress=progress, seed=cfg.seed)
        _log(progress, f"calibration statistics of {len(dense)} layers in {time.perf_counter() - t0:.1f}s")
        if refine.startswith("awq"):
            from .awq import apply_awq

            awq_alpha = apply_awq(model, stats, bits, cfg.group_size or 128)
        if uniform:
            sym = bool(getattr(cfg, "quant_symmetric", False))
            plans = {n: LinearPlan(bits=bits, group_size=cfg.group_size, symmetric=sym) for n in dense}
            meta = {"solver": "uniform"}
        else:
            budget = cfg.budget if cfg.budget is not None else bits + 0.25
            plans, meta = choose_plans(model, tok, texts, dense, bits, budget, cfg.group_size, fixed, metric,
                                       progress, stats=stats, seed=cfg.seed)
            meta["budget_bpw"] = budget
            plans = {n: p for n, p in plans.items() if n in dense}
        t1 = time.perf_counter()
        how = {"awq": "clip", "awq+gptq": "gptq"}.get(refine, refine)
        if calibration == "oneshot" or refine.startswith("awq") or not plans:
            quantize_layers(model, stats, plans, how)
        else:
            stats = None  # the stream holds one stage's statistics at a time

            def on_stage(_layer, st):
                quantize_layers(model, st, {n: plans[n] for n in st}, how)

            sequential_stats(model, tok, texts, on_stage, modules=list(plans), seed=cfg.seed,
                             per="module" if calibration == "sequential-module" else "layer")
        _log(progress, f"{refine} quantization ({calibration}) of {len(plans)} layers in "
                       f"{time.perf_counter() - t1:.1f}s")
    for n, lp in fixed.items():
        mod = get_module(model, n)
        if not hasattr(mod, "quantize_kept"):
            raise NotImplementedError(f"{n}: sparse module {type(mod).__name__} has no quantize_kept(plan)")
        set_module(model, n, mod.quantize_kept(lp))
    layers = dict(plan.layers)
    layers.update(plans)
    layers.update(fixed)
    new = CompressionPlan(plan.method, layers, dict(plan.meta))
    stored = sum(new.for_module(n).storage_bits(o, i) for n, (o, i) in shapes.items())
    new.meta["quant"] = {**meta, "refine": refine, "calibration": calibration, "bits": bits, "bpw": stored / weights,
                         "weights": weights, "covers": "all linears except an LM head tied to the embedding",
                         "calibration_texts": len(texts), "seconds": round(time.perf_counter() - t0, 1)}
    _log(progress, f"{stored / weights:.4f} bits per weight over {len(shapes)} layers")
    return new
