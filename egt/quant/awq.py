"""Activation-aware weight scaling (the AWQ idea, written from the paper): protect salient input channels.

Contract:
- `apply_awq(model, stats, bits, group)` rescales, per transformer layer, the inputs of three groups of linears
  that share an input:  (q, k, v) after `input_layernorm`, (gate, up) after `post_attention_layernorm`, and `down`
  after `up_proj`. For each group it picks s = mean|x|^alpha / norm (alpha in a grid of 0..1) minimising the summed
  output error  tr(dW H dW^T)  of quantizing W diag(s) with (bits, group) and undoing the scale, where H is the
  input Hessian from the calibration statistics. Then W <- W diag(s) and the producer of x is divided by s
  (norm weight, or rows of up_proj), so the float model computes exactly the same function.
- `stats` (from `egt.calibrate.collect_stats`) is updated in place to describe the rescaled inputs
  (x' = x / s: xtx, sq_norm, abs_mean, sample), so GPTQ and the sensitivity analysis that follow stay exact.
- `o_proj` is left alone: its input comes from attention over v_proj heads, where grouped-query attention shares
  v rows between heads, so a per-channel fold is not always possible.
Returns {group name: chosen alpha}.
"""
from __future__ import annotations

import torch

from .quantizer import fake_quantize

ALPHAS = tuple(i / 10 for i in range(11))


def _scale_stats(st, s: torch.Tensor) -> None:
    # New tensors, not in-place: collect_stats returns inference-mode tensors.
    inv = (1.0 / s).double()
    st.xtx = st.xtx * inv.view(-1, 1) * inv.view(1, -1)
    st.sq_norm = st.sq_norm * inv.pow(2)
    st.abs_mean = st.abs_mean * inv
    st.sample = st.sample * inv.float().view(1, -1)


@torch.no_grad()
def _search(ws: list[torch.Tensor], st, bits: int, group: int, rows: int = 256) -> tuple[torch.Tensor, float]:
    H = (st.xtx / max(st.tokens, 1)).float()
    act = st.abs_mean.float().clamp(min=1e-8)
    gen = torch.Generator().manual_seed(0)
    subs = [w.float()[torch.randperm(w.shape[0], generator=gen)[:rows]] for w in ws]
    best = (None, float("inf"), 0.0)
    for a in ALPHAS:
        s = act.pow(a)
        s = s / (s.max() * s.min()).sqrt()  # centre the scales around 1 in log space
        err = 0.0
        for w in subs:
            dw = w - fake_quantize(w * s, bits, group, False) / s
            err += float(((dw @ H) * dw).sum())
        if err < best[1]:
            best = (s, err, a)
    return best[0], best[2]


@torch.no_grad()
def apply_awq(model, stats: dict, bits: int, group: int) -> dict[str, float]:
    chosen = {}
    for i, layer in enumerate(model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        p = f"layers.{i}"
        # down_proj first: it rescales rows of up_proj, which the (gate, up) search below then sees.
        if f"{p}.mlp.down_proj" in stats:
            st = stats[f"{p}.mlp.down_proj"]
            s, a = _search([mlp.down_proj.weight], st, bits, group)
            mlp.down_proj.weight.mul_(s.view(1, -1))
            mlp.up_proj.weight.div_(s.view(-1, 1))
            _scale_stats(st, s)
            chosen[f"{p}.mlp.down_proj"] = a
        for subs, norm in ((("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), layer.input_layernorm),
                           (("mlp.gate_proj", "mlp.up_proj"), layer.post_attention_layernorm)):
            keys = [f"{p}.{n}" for n in subs]
            if not all(k in stats for k in keys):
                continue
            mods = [model.get_submodule(k) for k in keys]
            s, a = _search([m.weight for m in mods], stats[keys[0]], bits, group)
            for m in mods:
                m.weight.mul_(s.view(1, -1))
            norm.weight.div_(s)
            # Modules sharing the input may share one statistics object: scale each object once.
            for st in {id(stats[k]): stats[k] for k in keys}.values():
                _scale_stats(st, s)
            chosen[keys[0]] = a
    return chosen
