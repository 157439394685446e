"""Layer and module importance for choosing N:4 patterns, measured on calibration text.

Contract:
- `capture(model, seqs)` runs the dense model once over a few token sequences and keeps, per sequence, the hidden
  state entering every decoder layer and the dense next-token log-probabilities (the reference for KL).
- Three layer-importance candidates, each a list with one float per decoder layer (higher = more important):
  * `block_influence(cap)`: 1 - cos(input, output) of each block, mean over tokens (ShortGPT's BI);
  * `outlier_ratio(model, stats)`: share of weights whose Wanda score |W|*||X|| exceeds 5x the module's mean
    score, size-weighted over the layer's modules (the OWL idea);
  * `alone_kl(model, cap, stats, pattern)`: KL(dense || model with only this layer pruned to `pattern`), i.e. the
    measured end-loss increase of sparsifying that layer alone.
- `assignment_kl(model, cap, stats, patterns)` measures the end KL of a whole per-module assignment; it is what the
  candidates are judged against (`egt.sparsify.sparsify_model` records which candidate predicted it best).
- `module_errors(model, stats, patterns)`: Hessian-weighted reconstruction error tr(dW H dW^T) of every module at
  every pattern; it splits a layer's measured cost among its modules (the module level of the hierarchy).
Weights are swapped in place and always restored, also on error.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..plan import linear_modules
from . import pattern as P

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def layer_of(name: str) -> int:
    return int(name.split(".")[1])


def layer_modules(model, i: int) -> list[str]:
    return [f"layers.{i}.{'self_attn' if k in PROJECTIONS[:4] else 'mlp'}.{k}" for k in PROJECTIONS]


@dataclass
class Capture:
    seqs: list[torch.Tensor]
    hidden: list[list[torch.Tensor]]  # [seq][layer] hidden entering the layer; [seq][-1] = after the last layer
    logp: list[torch.Tensor]  # [seq] dense log-probs [T, V] (float32)

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.seqs)


@torch.inference_mode()
def capture(model, seqs: list[torch.Tensor]) -> Capture:
    hidden, logp = [], []
    n_layers = len(model.layers)
    for ids in seqs:
        got: list[torch.Tensor] = []
        hooks = [layer.register_forward_pre_hook(lambda _m, args: got.append(args[0].detach().clone()))
                 for layer in model.layers]
        hooks.append(model.norm.register_forward_pre_hook(lambda _m, args: got.append(args[0].detach().clone())))
        try:
            logits = _forward(model, ids)
        finally:
            for h in hooks:
                h.remove()
        assert len(got) == n_layers + 1
        hidden.append(got)
        logp.append(F.log_softmax(logits.float(), -1))
    return Capture(seqs, hidden, logp)


def _forward(model, ids: torch.Tensor, start: int = 0, x: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [T, V] of one sequence; with `start` > 0 the run begins at layer `start` from hidden `x`."""
    ids = ids.view(1, -1).to(model.device)
    t = ids.shape[1]
    cache = model.setup_cache(1, t)
    slots = torch.arange(t, device=model.device)
    if start == 0:
        return model(ids, slots.view(1, -1), slots, cache, kv_len=t)[0]
    cos, sin = model.rope(slots.view(1, -1), x.dtype)
    mask = (slots.unsqueeze(0) <= slots.unsqueeze(1)).view(1, 1, t, t)
    for i in range(start, len(model.layers)):
        x = model.layers[i](x, cos, sin, cache.k[i], cache.v[i], slots, mask, t)
    return model.lm_head(model.norm(x))[0].float()


def _kl(logp_dense: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Sum over positions of KL(dense || other)."""
    lq = F.log_softmax(logits.float(), -1)
    return (logp_dense.exp() * (logp_dense - lq)).sum()


@contextlib.contextmanager
def pruned(model, stats, patterns: dict[str, str]):
    """Temporarily replace the weights of the named modules by Wanda-pruned copies."""
    saved = {}
    try:
        for name, pat in patterns.items():
            if pat == "dense":
                continue
            lin = model.get_submodule(name)
            saved[name] = lin.weight.data
            mask = P.wanda_mask(lin.weight.data, stats[name].sq_norm, P.n_of(pat))
            lin.weight.data = lin.weight.data * mask
        yield
    finally:
        for name, w in saved.items():
            model.get_submodule(name).weight.data = w


@torch.inference_mode()
def kl_from(model, cap: Capture, start: int) -> float:
    total = 0.0
    for s, ids in enumerate(cap.seqs):
        logits = _forward(model, ids, start, cap.hidden[s][start]) if start else _forward(model, ids)
        total += float(_kl(cap.logp[s], logits))
    return total / cap.tokens


def alone_kl(model, cap: Capture, stats, pattern: str) -> list[float]:
    out = []
    for i in range(len(model.layers)):
        with pruned(model, stats, {m: pattern for m in layer_modules(model, i)}):
            out.append(kl_from(model, cap, i))
    return out


def assignment_kl(model, cap: Capture, stats, patterns: dict[str, str]) -> float:
    first = min((layer_of(m) for m, p in patterns.items() if p != "dense"), default=len(model.layers))
    if first == len(model.layers):
        return 0.0
    with pruned(model, stats, patterns):
        return kl_from(model, cap, first)


def block_influence(cap: Capture) -> list[float]:
    n = len(cap.hidden[0]) - 1
    out = []
    for i in range(n):
        cos = torch.cat([F.cosine_similarity(h[i][0].float(), h[i + 1][0].float(), dim=-1) for h in cap.hidden])
        out.append(float(1 - cos.mean()))
    return out


def outlier_ratio(model, stats, factor: float = 5.0) -> list[float]:
    out = []
    for i in range(len(model.layers)):
        num = den = 0.0
        for name in layer_modules(model, i):
            w = model.get_submodule(name).weight.data
            score = w.abs().double() * stats[name].sq_norm.double().clamp_min(0).sqrt().unsqueeze(0)
            num += float((score > factor * score.mean()).sum())
            den += score.numel()
        out.append(num / den)
    return out


def module_errors(model, stats, patterns=("2:4", "1:4")) -> dict[str, dict[str, float]]:
    """tr(dW H dW^T) per module and pattern, with the Wanda mask and H = mean x x^T."""
    out = {}
    for name in linear_modules(model):
        if name == "lm_head":
            continue
        w = model.get_submodule(name).weight.data.double()
        h = stats[name].hessian
        out[name] = {}
        for pat in patterns:
            mask = P.wanda_mask(w, stats[name].sq_norm, P.n_of(pat))
            dw = w * ~mask
            out[name][pat] = float(((dw @ h) * dw).sum())
    return out


def spearman(a: list[float], b: list[float]) -> float:
    ra = torch.tensor(a, dtype=torch.float64).argsort().argsort().double()
    rb = torch.tensor(b, dtype=torch.float64).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den else 0.0
