"""Calibration: run text through the model and collect what each linear module sees.

Contract:
- `collect_stats(model, tokenizer, texts)` returns {module name: LinearStats} for every compressible linear
  (`egt.plan.linear_modules`), with the input Gram matrix X^T X (float64; GPTQ/SparseGPT Hessians), per-column
  squared norms (Wanda), mean |x| per column (AWQ), and a capped random sample of input rows for measuring output
  reconstruction error ||XW - XW'|| directly. One forward pass of the model as it is: every module's statistics
  describe the same (e.g. dense) model. With `gram=False` the [in, in] Gram matrices are not accumulated (`xtx` is
  None): enough for Wanda masks and layer-importance analysis, at a fraction of the memory.
- `sequential_stats(model, tokenizer, texts, on_stage)` streams the same texts through the decoder layer by layer:
  the statistics handed to `on_stage` for a module come from the model as the earlier `on_stage` calls left it
  (e.g. already pruned / quantized), which is how GPTQ/SparseGPT are meant to be calibrated. Only the hidden
  states of the calibration tokens and one stage's statistics are held at a time (collect_stats holds every
  module's float64 X^T X at once). `per="layer"`: one stage per decoder layer (what llm-compressor's sequential
  pipeline does); `per="module"`: one stage per group of modules reading the same input (q/k/v, o, gate/up, down),
  so o_proj is calibrated on the already-compressed q/k/v, the MLP on the compressed attention, and so on. When
  `on_stage` changes nothing, every module's statistics equal collect_stats's (tests/test_sparsify.py).
- Modules that read the same tensor (q/k/v, gate/up) share one `LinearStats` object: read it, never mutate it.
- `tokenize_texts` turns raw calibration strings into token tensors once, so every stage sees the same tokens.
Quantization and sparsification both read these statistics; neither captures activations on its own.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from .plan import linear_modules


@dataclass
class LinearStats:
    xtx: torch.Tensor | None  # [in, in] float64, sum over tokens of x x^T (None when collected with gram=False)
    sq_norm: torch.Tensor  # [in] float64, sum over tokens of x_j^2 (= diag of xtx)
    abs_mean: torch.Tensor  # [in] float64, mean over tokens of |x_j|
    sample: torch.Tensor  # [n_rows, in] float32, random rows of X (for direct error measurement)
    tokens: int

    @property
    def hessian(self) -> torch.Tensor:
        """Mean x x^T: the Hessian of the layer-wise squared error, up to a factor 2."""
        if self.xtx is None:
            raise ValueError("these statistics were collected without Gram matrices (gram=False)")
        return self.xtx / max(self.tokens, 1)


def tokenize_texts(tokenizer, texts: list[str], max_tokens: int = 256) -> list[torch.Tensor]:
    out = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]
        if len(ids) >= 2:
            out.append(torch.tensor(ids))
    if not out:
        raise ValueError("calibration texts produced no tokens")
    return out


class _Accumulator:
    """Forward hooks that sum X^T X, x^2, |x| and keep random rows of the inputs of the hooked modules."""

    def __init__(self, gen: torch.Generator, per_call: int, sample_rows: int, gram: bool = True):
        self.gen, self.per_call, self.sample_rows, self.gram = gen, per_call, sample_rows, gram
        self.acc: dict[str, dict] = {}
        self.hooks = []

    def attach(self, model, names) -> "_Accumulator":
        for n in names:
            self.hooks.append(model.get_submodule(n).register_forward_hook(self._hook(n)))
        return self

    def detach(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []

    def _hook(self, name):
        def hook(_mod, inputs, _out):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64).cpu()
            a = self.acc.get(name)
            if a is None:
                d = x.shape[1]
                a = self.acc[name] = {"xtx": torch.zeros(d, d, dtype=torch.float64) if self.gram else None,
                                      "sq": torch.zeros(d, dtype=torch.float64),
                                      "abs": torch.zeros(d, dtype=torch.float64), "rows": [], "n": 0}
            if self.gram:
                a["xtx"] += x.T @ x
            else:
                a["sq"] += (x * x).sum(0)
            a["abs"] += x.abs().sum(0)
            a["n"] += x.shape[0]
            # Keep a few random rows per call so memory stays bounded (~sample_rows per module in all).
            keep = torch.randperm(x.shape[0], generator=self.gen)[: self.per_call]
            a["rows"].append(x[keep].float())
        return hook

    def finish(self) -> dict[str, LinearStats]:
        out = {}
        for n, a in self.acc.items():
            rows = torch.cat(a["rows"])
            pick = torch.randperm(rows.shape[0], generator=self.gen)[: self.sample_rows]
            sq = torch.diagonal(a["xtx"]).clone() if self.gram else a["sq"]
            out[n] = LinearStats(a["xtx"], sq, a["abs"] / a["n"], rows[pick].contiguous(), a["n"])
        self.acc = {}
        return out


@torch.inference_mode()
def collect_stats(model, tokenizer, texts: list[str], max_tokens: int = 256, sample_rows: int = 512,
                  modules: list[str] | None = None, seed: int = 0, progress: bool = True,
                  gram: bool = True) -> dict[str, LinearStats]:
    names = modules or list(linear_modules(model))
    # q/k/v read the same tensor, and so do gate/up: hook one module of each family and share its statistics.
    source = {n: _shared_input(n) for n in names}
    hooked = sorted(set(source.values()))
    seqs = tokenize_texts(tokenizer, texts, max_tokens)
    acc = _Accumulator(torch.Generator().manual_seed(seed), max(1, -(-sample_rows // len(seqs))), sample_rows, gram)
    acc.attach(model, hooked)
    try:
        from tqdm.auto import tqdm

        it = tqdm(seqs, desc="calibration", disable=not progress, leave=False)
        for ids in it:
            ids = ids.to(model.device).view(1, -1)
            t = ids.shape[1]
            cache = model.setup_cache(1, t)
            slots = torch.arange(t, device=model.device)
            model(ids, slots.view(1, -1), slots, cache, kv_len=t)
    finally:
        acc.detach()
    shared = acc.finish()
    return {n: shared[source[n]] for n in names}


def _shared_input(name: str) -> str:
    """The module whose input `name` also reads (itself when none): q/k/v share one, gate/up another."""
    for siblings in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
        prefix, _, kind = name.rpartition(".")
        if kind in siblings[1:]:
            return f"{prefix}.{siblings[0]}"
    return name


def _stages(model, names: list[str], per: str) -> tuple[list[list[list[str]]], list[str]]:
    """Per decoder layer, its stages (lists of module names, forward order); and the modules outside the layers."""
    order = {n: k for k, n in enumerate(linear_modules(model))}  # registration order = forward order (Llama)
    n_layers = len(model.layers)
    by_layer: list[list[str]] = [[] for _ in range(n_layers)]
    outside = []
    for n in sorted(names, key=lambda x: order.get(x, len(order))):
        parts = n.split(".")
        if parts[0] == "layers" and len(parts) > 1 and parts[1].isdigit() and int(parts[1]) < n_layers:
            by_layer[int(parts[1])].append(n)
        elif n == "lm_head":
            outside.append(n)
        else:
            raise ValueError(f"{n!r} is neither a decoder-layer module nor lm_head")
    stages = []
    for mods in by_layer:
        if per == "layer":
            stages.append([mods] if mods else [])
        else:  # one stage per shared input, in forward order
            groups: dict[str, list[str]] = {}
            for n in mods:
                groups.setdefault(_shared_input(n), []).append(n)
            stages.append(list(groups.values()))
    return stages, outside


class _StageDone(Exception):
    """Raised by a forward hook once a stage's statistics are complete, to skip the rest of the layer."""


def _stop_forward(_mod, _inputs, _out):
    raise _StageDone


def sequential_stats(model, tokenizer, texts: list[str],
                     on_stage: Callable[[int, dict[str, LinearStats]], None] | None = None, *,
                     max_tokens: int = 256, sample_rows: int = 512, modules: list[str] | None = None,
                     seed: int = 0, per: str = "layer", progress: bool = False) -> list[torch.Tensor]:
    """Calibrate stage by stage on the model as the earlier stages left it; see the module docstring.

    `on_stage(layer_index, {module: LinearStats})` is called once per stage in forward order (layer index
    `len(model.layers)` for modules outside the decoder, i.e. lm_head, whose input is the final norm's output); it
    may replace or modify that stage's modules (e.g. `egt.modules.set_module`) but nothing earlier. The hidden
    states entering the next layer are computed with the layer as `on_stage` left it. Returns the hidden states
    after the last layer (before the final norm), one [1, T, hidden] tensor per calibration sequence.
    """
    if per not in ("layer", "module"):
        raise ValueError(f"per must be 'layer' or 'module', got {per!r}")
    names = modules or list(linear_modules(model))
    order = {n: k for k, n in enumerate(linear_modules(model))}
    stages, outside = _stages(model, names, per)
    seqs = tokenize_texts(tokenizer, texts, max_tokens)
    gen = torch.Generator().manual_seed(seed)
    per_call = max(1, -(-sample_rows // len(seqs)))
    dev = model.device
    with torch.inference_mode():
        xs, ctx = [], []
        for ids in seqs:
            ids = ids.to(dev).view(1, -1)
            t = ids.shape[1]
            slots = torch.arange(t, device=dev)
            cos, sin = model.rope(slots.view(1, -1), model.dtype)
            mask = (slots.unsqueeze(0) <= slots.unsqueeze(1)).view(1, 1, t, t)  # causal, as model.forward builds it
            xs.append(model.embed_tokens(ids))
            ctx.append((cos, sin, slots, mask, t))
    s = model.shape

    def run_layer(i: int) -> list[torch.Tensor]:
        out = []
        with torch.inference_mode():
            for x, (cos, sin, slots, mask, t) in zip(xs, ctx):
                k = torch.zeros(1, s.kv_heads, t, s.head_dim, dtype=model.dtype, device=dev)
                try:
                    out.append(model.layers[i](x, cos, sin, k, torch.zeros_like(k), slots, mask, t))
                except _StageDone:
                    pass
        return out

    def calibrate(i: int, stage: list[str], forward: Callable[[], object]) -> None:
        source = {n: _shared_input(n) for n in stage}
        hooked = sorted(set(source.values()), key=lambda n: order.get(n, len(order)))
        acc = _Accumulator(gen, per_call, sample_rows).attach(model, hooked)
        # The rest of the layer after the stage's last module is not needed for its statistics: stop there.
        stop = model.get_submodule(hooked[-1]).register_forward_hook(_stop_forward)
        try:
            forward()
        finally:
            stop.remove()
            acc.detach()
        shared = acc.finish()
        if on_stage is not None:
            with torch.no_grad():
                on_stage(i, {n: shared[source[n]] for n in stage})

    t0 = time.perf_counter()
    for i, layer_stages in enumerate(stages):
        for stage in layer_stages:
            calibrate(i, stage, lambda i=i: run_layer(i))
        xs = run_layer(i)  # the inputs of layer i+1, through layer i as compressed
        if progress:
            print(f"[egt] sequential calibration: layer {i + 1}/{len(stages)} ({time.perf_counter() - t0:.0f}s)",
                  flush=True)
    if outside:
        def head():
            with torch.inference_mode():
                for x in xs:
                    try:
                        model.lm_head(model.norm(x))
                    except _StageDone:
                        pass
        calibrate(len(stages), outside, head)
    return xs
