"""Layer-adaptive hierarchical N:4 sparsification (2:4 / 1:4 / dense) with 2-bit in-group indices. See issue 4.

Contract:
- `sparsify_model(loaded, plan, cfg, texts, progress)` (called by `egt.compress` before quantization) prunes every
  decoder projection of `loaded.model` (the LM head stays dense: it is tied to the embedding) according to
  `cfg.sparsity`: "2:4" or "1:4" everywhere, or "mix" at average density `cfg.density` (default 0.375, met
  exactly over the pruned modules' weights). It swaps the modules for `SparseLinear` (float kept values) or, when
  `cfg.bits` is set, `SparseQuantLinear` (kept values quantized during the same SparseGPT sweep, so the error of
  both is compensated; group size `cfg.group_size` or 128, asymmetric: exactly the plan `egt.quant.quantize_model`
  then asks `quantize_kept` for, which returns the module unchanged), and
  returns the plan with `sparsity`, `bits`, `group_size`, `symmetric` set for every pruned module and the analysis
  in `plan.meta["sparsify"]`. Modules left dense are untouched (the quantizer handles them).
- `SparsifyOptions` holds the choices measured in eval/sparsify_eval.py (defaults = what measured best there):
  mask method (SparseGPT-style compensation beat Wanda), importance metric (KL of pruning a layer alone beat block
  influence and the OWL outlier ratio), assignment granularity (one pattern per layer beat per-module), the
  size of the importance set, and the calibration mode (sequential-module had the lowest validation KL at 2:4). `egt compress` may set them through optional
  `CompressConfig` attributes `sparse_method`, `sparse_metric`, `sparse_granularity`, `calibration_mode`.
- Calibration mode (`SparsifyOptions.calibration`): "oneshot" prunes every module with statistics of the dense
  model (`egt.calibrate.collect_stats`); "sequential" prunes decoder layer by layer, each layer calibrated on the
  hidden states of the layers before it as already pruned (`egt.calibrate.sequential_stats`, as llm-compressor
  does); "sequential-module" goes one step finer (o_proj sees the pruned q/k/v, the MLP the pruned attention,
  down_proj the pruned gate/up). Sequential modes hold one stage's Hessians at a time. The "mix" assignment is
  planned on dense-model statistics in every mode (without Gram matrices unless granularity="module" needs them).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

import torch

from ..calibrate import collect_stats, sequential_stats, tokenize_texts
from ..modules import get_module, set_module
from ..plan import CompressionPlan, LinearPlan, linear_modules
from . import assign as A
from . import importance as I
from . import pattern as P
from ..quant.quantizer import QuantizedGroups
from .modules import SparseLinear, SparseQuantLinear, _quantize_values

METHODS = ("wanda", "sparsegpt", "wanda+obs")
METRICS = ("alone_kl", "block_influence", "outlier_ratio")
CALIBRATIONS = ("oneshot", "sequential", "sequential-module")


@dataclass
class SparsifyOptions:
    method: str = "sparsegpt"  # mask choice inside groups of 4 (+ whether pruning error is compensated)
    metric: str = "alone_kl"  # layer importance used by "mix"
    granularity: str = "layer"  # "layer": one pattern per layer; "module": per module within the budget
    allow_dense: bool = True  # "mix" may keep the most important layers dense
    importance_texts: int = 8
    importance_tokens: int = 128
    group_size: int = 128  # INT4 group (kept values) when cfg.group_size is None
    symmetric: bool = False
    calibration: str = "sequential-module"  # see CALIBRATIONS and the module docstring

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.granularity not in ("layer", "module"):
            raise ValueError(f"granularity must be 'layer' or 'module', got {self.granularity!r}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")


def prunable_modules(model) -> dict[str, tuple[int, int]]:
    return {n: s for n, s in linear_modules(model).items() if n != "lm_head"}


def layer_costs(model, cap, stats, metric: str) -> tuple[dict[str, list[float]], bool]:
    """Per-layer cost of each pattern under `metric`, and whether dense is a sensible third choice.

    alone_kl measures the cost of both patterns directly, so the DP can trade dense / 2:4 / 1:4. The two proxies
    only rank layers; they give 1:4 a cost equal to the score and 2:4 none, so the DP picks the least important
    layers for 1:4 (the paper's scheme) without an invented scale between the patterns.
    """
    if metric == "alone_kl":
        return {p: I.alone_kl(model, cap, stats, p) for p in ("2:4", "1:4")}, True
    score = I.block_influence(cap) if metric == "block_influence" else I.outlier_ratio(model, stats)
    return {"2:4": [0.0] * len(score), "1:4": list(score)}, False


def plan_mix(model, tokenizer, texts, stats, density: float, opts: SparsifyOptions, progress: bool = False,
             cap=None, costs: tuple[dict[str, list[float]], bool] | None = None) -> tuple[dict[str, str], dict]:
    """Patterns per module at exactly `density`; `cap` / `costs` (from `layer_costs`) may be passed to reuse them."""
    t0 = time.perf_counter()
    if cap is None:
        seqs = tokenize_texts(tokenizer, texts[: opts.importance_texts], opts.importance_tokens)
        cap = I.capture(model, seqs)
    costs, dense_ok = costs if costs is not None else layer_costs(model, cap, stats, opts.metric)
    shapes = prunable_modules(model)
    sizes = {n: o * i for n, (o, i) in shapes.items()}
    by_layer = [I.layer_modules(model, i) for i in range(len(model.layers))]
    merr = I.module_errors(model, stats) if opts.granularity == "module" else {}
    items, groups = A.costs_for(costs, merr, by_layer, sizes, opts.granularity, opts.allow_dense and dense_ok)
    chosen = A.assign_exact(items, density)
    patterns = {m: p for g, p in zip(groups, chosen) for m in g}
    kept = sum(sizes[m] * A.DENSITY[p] for m, p in patterns.items())
    report = {"metric": opts.metric, "granularity": opts.granularity, "layer_costs": costs,
              "importance_tokens": cap.tokens, "target_density": density,
              "achieved_density": kept / sum(sizes.values()), "seconds": round(time.perf_counter() - t0, 1)}
    if progress:
        print(f"[egt] sparsify mix: density {report['achieved_density']:.6f} (target {density}), "
              f"{sum(p == '1:4' for p in patterns.values())} modules 1:4, "
              f"{sum(p == '2:4' for p in patterns.values())} 2:4, {sum(p == 'dense' for p in patterns.values())} dense")
    return patterns, report


@contextlib.contextmanager
def _one_thread():
    # Many small tensor ops: on a shared 2-core machine OpenMP spin-waits cost far more than a second thread gains.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _build(lp: LinearPlan, ws: torch.Tensor, mask: torch.Tensor, grid, bias, sq_norm, dtype):
    """Packed module from a pruned weight (zeros off the mask) and, for the joint sweep, its quantization grid."""
    n = P.n_of(lp.sparsity)
    if not lp.quantized:
        m = SparseLinear.from_dense(lp, ws.to(dtype), mask, bias)
        m.in_sq_norm = sq_norm  # plain attribute (not saved): weights a later quantize_kept's clip search
        return m
    vals, idx = P.compact(ws, mask, n)
    if grid is None:
        return _quantize_values(vals, idx, lp, ws.shape[1], bias, P.compact_columns(sq_norm, idx, n).float())
    # The sweep already rounded every kept value onto its group's grid: recover the integer codes exactly.
    scales, offsets = grid
    g = vals.shape[1] if lp.group_size == -1 else lp.group_size
    rep = lambda t: t.double().repeat_interleave(g, 1)[:, : vals.shape[1]]  # noqa: E731
    if offsets is None:
        codes = torch.round(vals.double() / rep(scales)) + 2 ** (lp.bits - 1)
    else:
        codes = torch.round((vals.double() - rep(offsets)) / rep(scales))
    codes = codes.clamp(0, 2 ** lp.bits - 1).to(torch.uint8)
    return SparseQuantLinear.from_codes(lp, QuantizedGroups(codes, scales, offsets), idx, ws.shape[1], bias)


def sparsify_linear(lin, lp: LinearPlan, stats, method: str):
    """The packed module for one nn.Linear under `lp` (sparsity 2:4/1:4, float or quantized kept values)."""
    return _sparsify_batch([lin], lp, [stats], method)[0]


def _sparsify_batch(lins: list, lp: LinearPlan, stats: list, method: str) -> list:
    """Same-shaped linears under one plan; the SparseGPT sweep runs batched over them."""
    n = P.n_of(lp.sparsity)
    quant = (lp.bits, lp.group_size, lp.symmetric) if lp.quantized else None
    ws = [lin.weight.data.float() for lin in lins]
    masks = [P.wanda_mask(w, st.sq_norm, n) for w, st in zip(ws, stats)] if method != "sparsegpt" else None
    if method == "wanda":
        res = [(w * m, m, None) for w, m in zip(ws, masks)]
    else:
        out = P.obs_prune(torch.stack(ws), torch.stack([st.hessian for st in stats]), n,
                          mask=None if masks is None else torch.stack(masks), quant=quant)
        grids = [None] * len(ws) if quant is None else [
            (out[2][0][j], None if out[2][1] is None else out[2][1][j]) for j in range(len(ws))]
        res = [(out[0][j], out[1][j], grids[j]) for j in range(len(ws))]
    return [_build(lp, w, m, g, None if lin.bias is None else lin.bias.data, st.sq_norm, lin.weight.dtype)
            for (w, m, g), lin, st in zip(res, lins, stats)]


def apply_patterns(model, patterns: dict[str, str], stats, bits: int | None, group_size: int, symmetric: bool,
                   method: str, progress: bool = False, batch: int = 16) -> dict[str, LinearPlan]:
    """Swap every module with a non-dense pattern for its packed form; returns their LinearPlans."""
    groups: dict[tuple, list[str]] = {}
    for name, pat in patterns.items():
        if pat != "dense":
            w = get_module(model, name).weight
            groups.setdefault((name.rsplit(".", 1)[1], pat, tuple(w.shape)), []).append(name)
    out = {}
    t0 = time.perf_counter()
    with _one_thread():
        for (_, pat, _), names in groups.items():
            lp = LinearPlan(bits=bits or 16, group_size=group_size, symmetric=symmetric, sparsity=pat)
            for c in range(0, len(names), batch):
                chunk = names[c:c + batch]
                mods = _sparsify_batch([get_module(model, x) for x in chunk], lp, [stats[x] for x in chunk], method)
                for x, m in zip(chunk, mods):
                    set_module(model, x, m)
                    out[x] = lp
            if progress:
                print(f"[egt] sparsify: {len(out)}/{sum(map(len, groups.values()))} modules "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
    return out


def apply_patterns_sequential(model, tokenizer, texts: list[str], patterns: dict[str, str], bits: int | None,
                              group_size: int, symmetric: bool, method: str, per: str = "layer",
                              max_tokens: int = 256, seed: int = 0, progress: bool = False) -> dict[str, LinearPlan]:
    """`apply_patterns` with sequential calibration: stage by stage (per decoder layer, or per group of modules
    reading one input with per="module"), each pruned with statistics of the model as pruned so far."""
    out: dict[str, LinearPlan] = {}
    todo = [n for n, p in patterns.items() if p != "dense"]

    def on_stage(_layer, stats):
        out.update(apply_patterns(model, {n: patterns[n] for n in stats}, stats, bits, group_size, symmetric, method))

    sequential_stats(model, tokenizer, texts, on_stage, max_tokens=max_tokens, modules=todo, seed=seed, per=per,
                     progress=progress)
    return out


def sparsify_model(loaded, plan: CompressionPlan, cfg, texts: list[str], progress: bool = True,
                   options: SparsifyOptions | None = None, stats=None) -> CompressionPlan:
    if options is None:
        # Optional CompressConfig attributes, if present (the CLI may expose them): sparse_method, sparse_metric,
        # sparse_granularity.
        d = SparsifyOptions()
        options = SparsifyOptions(method=getattr(cfg, "sparse_method", None) or d.method,
                                  metric=getattr(cfg, "sparse_metric", None) or d.metric,
                                  granularity=getattr(cfg, "sparse_granularity", None) or d.granularity,
                                  calibration=getattr(cfg, "calibration_mode", None) or d.calibration)
    opts = options
    opts.validate()
    if cfg.sparsity not in ("2:4", "1:4", "mix"):
        raise ValueError(f"sparsity must be 2:4, 1:4 or mix, got {cfg.sparsity!r}")
    if cfg.bits not in (None, 3, 4, 8):
        raise ValueError(f"--bits must be 3, 4 or 8, got {cfg.bits}")
    model = loaded.model
    shapes = prunable_modules(model)
    for name, (_, in_f) in shapes.items():
        P.check_shape(in_f, 1)
    t0 = time.perf_counter()
    oneshot = opts.calibration == "oneshot"
    need_plan = cfg.sparsity == "mix"
    if stats is None and (oneshot or need_plan):
        # Sequential modes need dense statistics only to plan a mix, and Gram matrices only for granularity="module".
        gram = oneshot or opts.granularity == "module"
        stats = collect_stats(model, loaded.tokenizer, texts, modules=list(shapes), progress=progress, gram=gram)
    report: dict = {"options": asdict(opts)}
    if cfg.sparsity == "mix":
        density = cfg.density if cfg.density is not None else 0.375
        with _one_thread():
            patterns, report["mix"] = plan_mix(model, loaded.tokenizer, texts, stats, density, opts, progress)
    else:
        patterns = {n: cfg.sparsity for n in shapes}
    group = cfg.group_size or opts.group_size
    if oneshot:
        lps = apply_patterns(model, patterns, stats, cfg.bits, group, opts.symmetric, opts.method, progress)
    else:
        stats = None  # free the planning statistics before streaming
        lps = apply_patterns_sequential(model, loaded.tokenizer, texts, patterns, cfg.bits, group, opts.symmetric,
                                        opts.method, per="module" if opts.calibration == "sequential-module"
                                        else "layer", seed=getattr(cfg, "seed", 0), progress=progress)
    layers = dict(plan.layers)
    layers.update(lps)
    sizes = {n: o * i for n, (o, i) in shapes.items()}
    report["density"] = sum(sizes[n] * A.DENSITY[p] for n, p in patterns.items()) / sum(sizes.values())
    report["seconds"] = round(time.perf_counter() - t0, 1)
    meta = dict(plan.meta)
    meta["sparsify"] = report
    return CompressionPlan(plan.method, layers, meta)
