"""Sensitivity of each linear module to each quantization candidate, measured on calibration data.

Contract:
- `candidate_plans(min_bits, group_size=None)`: the (bits, group, symmetry) options the allocator may choose from.
  `min_bits` is the lowest precision any layer gets (`--bits`); higher bit widths (up to 8) are offered so sensitive
  layers can be upgraded. A fixed `group_size` restricts the options to that group.
- `output_fisher(model, tokenizer, texts)`: per-output-channel mean squared gradient of the log-likelihood of tokens
  sampled from the model's own next-token distribution w.r.t. each linear's output, i.e. the diagonal of the Fisher
  information at that activation (the curvature of KL(p_fp || p_q) around the float model).
- `layer_errors(w, stats, fisher, plans, ...)`: for each candidate, several error metrics of quantizing this one
  layer (estimated on a fixed random subset of output rows, scaled to all rows; rows quantize independently):
    weight      ||W - Wq||^2                                             (plain weight error)
    output      mean over captured rows x of ||(W - Wq) x||^2           (output reconstruction, sampled tokens)
    hessian     tr((W - Wq) H (W - Wq)^T), H = mean x x^T                (the same error over all calibration tokens)
    output_rel  output / mean ||W x||^2                                  (relative reconstruction error)
    fisher      0.5 * sum_o F_o [(W - Wq) H (W - Wq)^T]_oo               (second-order KL estimate, F = output Fisher)
  `fisher` is in the unit of the end metric (nats of KL per token), so errors of different layers add up; the
  comparison of these metrics against measured single-layer KL is `eval/quant_sensitivity.py`.
Quantized weights for the metrics use the same quantizer as the final model's "clip" refinement (RTN with a range
search weighted by diag(H)), since running GPTQ for every candidate would cost ~20x more; GPTQ lowers the errors
roughly uniformly, which the allocation is insensitive to.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..calibrate import LinearStats, tokenize_texts
from ..plan import LinearPlan
from ..transformer import KVCache
from .quantizer import CLIP_GRID, fake_quantize

METRICS = ("weight", "output", "hessian", "output_rel", "fisher")


def candidate_plans(min_bits: int, group_size: int | None = None) -> list[LinearPlan]:
    if min_bits not in (3, 4, 8):
        raise ValueError(f"bits must be 3, 4 or 8, got {min_bits}")
    groups = (32, 64, 128, 256, -1) if group_size is None else (group_size,)
    out = []
    for bits in (b for b in (3, 4) if b >= min_bits):
        for g in groups:
            for sym in (False, True):
                out.append(LinearPlan(bits=bits, group_size=g, symmetric=sym))
    # 8 bits is nearly lossless at any group; two cheap options suffice.
    for g in ((128, -1) if group_size is None else (group_size,)):
        out.append(LinearPlan(bits=8, group_size=g, symmetric=True))
    return out


def output_fisher(model, tokenizer, texts: list[str], names: list[str], max_tokens: int = 256, seed: int = 0,
                  progress: bool = False) -> dict[str, torch.Tensor]:
    """{module: [out] float64 mean squared output gradient} (see the module docstring)."""
    seqs = tokenize_texts(tokenizer, texts, max_tokens)
    gen = torch.Generator().manual_seed(seed)
    acc: dict[str, torch.Tensor] = {}
    count = 0
    hooks = []

    def make_hook(name):
        def fwd(_m, _inp, out):
            def grad_hook(g):
                s = g.detach().reshape(-1, g.shape[-1]).double().pow(2).sum(0).cpu()
                acc[name] = acc[name] + s if name in acc else s
            out.register_hook(grad_hook)
        return fwd

    # The embedding output is the graph's only leaf that needs a gradient; weights never do.
    hooks.append(model.embed_tokens.register_forward_hook(lambda _m, _i, o: o.detach().requires_grad_()))
    for n in names:
        hooks.append(model.get_submodule(n).register_forward_hook(make_hook(n)))
    req = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            for ids in seqs:
                ids = ids.to(model.device).view(1, -1)
                t = ids.shape[1]
                full = model.setup_cache(1, t)
                # One tensor per layer: in-place cache writes to views of one shared tensor would trip autograd.
                cache = KVCache([k.clone() for k in full.k], [v.clone() for v in full.v])
                slots = torch.arange(t, device=model.device)
                logits = model(ids, slots.view(1, -1), slots, cache, kv_len=t)[0].float()
                y = torch.multinomial(torch.softmax(logits.detach().cpu(), -1), 1, generator=gen).view(-1)
                F.cross_entropy(logits, y.to(logits.device), reduction="sum").backward()
                count += t
    finally:
        for h in hooks:
            h.remove()
        for p, r in req.items():
            p.requires_grad_(r)
    return {n: a / max(count, 1) for n, a in acc.items()}


@torch.no_grad()
def layer_errors(w: torch.Tensor, stats: LinearStats, fisher: torch.Tensor | None, plans: list[LinearPlan],
                 rows: int = 256, seed: int = 0, clip=CLIP_GRID, metrics=METRICS) -> list[dict[str, float]]:
    """Error metrics of quantizing `w` [out, in] with each plan (see the module docstring)."""
    out_f = w.shape[0]
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(out_f, generator=gen)[:rows] if rows < out_f else torch.arange(out_f)
    scale = out_f / len(idx)
    ws = w.detach().float()[idx]
    H = (stats.xtx / max(stats.tokens, 1)).float()
    diag = torch.diagonal(H).clone()
    X = stats.sample.float()
    ref_energy = (X @ ws.T).pow(2).sum(1).mean().item() * scale
    fsub = None if fisher is None else fisher.float()[idx]
    res = []
    for lp in plans:
        dw = ws - fake_quantize(ws, lp.bits, lp.group_size, lp.symmetric, clip, diag)
        r = {}
        if "weight" in metrics:
            r["weight"] = dw.pow(2).sum().item() * scale
        if {"output", "output_rel"} & set(metrics):
            out_err = (X @ dw.T).pow(2).sum(1).mean().item() * scale
            r["output"] = out_err
            r["output_rel"] = out_err / max(ref_energy, 1e-30)
        if {"hessian", "fisher"} & set(metrics):
            per_row = ((dw @ H) * dw).sum(1)
            r["hessian"] = per_row.sum().item() * scale
            if fsub is not None:
                r["fisher"] = 0.5 * (per_row * fsub).sum().item() * scale
        res.append(r)
    return res
