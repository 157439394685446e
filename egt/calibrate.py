"""Calibration: run text through the model and collect what each linear module sees.

Contract:
- `collect_stats(model, tokenizer, texts)` returns {module name: LinearStats} for every compressible linear
  (`egt.plan.linear_modules`), with the input Gram matrix X^T X (float64; GPTQ/SparseGPT Hessians), per-column
  squared norms (Wanda), mean |x| per column (AWQ), and a capped random sample of input rows for measuring output
  reconstruction error ||XW - XW'|| directly.
- Modules that read the same tensor (q/k/v, gate/up) share one `LinearStats` object: read it, never mutate it.
- `tokenize_texts` turns raw calibration strings into token tensors once, so every stage sees the same tokens.
Quantization and sparsification both read these statistics; neither captures activations on its own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .plan import linear_modules


@dataclass
class LinearStats:
    xtx: torch.Tensor  # [in, in] float64, sum over tokens of x x^T
    sq_norm: torch.Tensor  # [in] float64, sum over tokens of x_j^2 (= diag of xtx)
    abs_mean: torch.Tensor  # [in] float64, mean over tokens of |x_j|
    sample: torch.Tensor  # [n_rows, in] float32, random rows of X (for direct error measurement)
    tokens: int

    @property
    def hessian(self) -> torch.Tensor:
        """Mean x x^T: the Hessian of the layer-wise squared error, up to a factor 2."""
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


@torch.inference_mode()
def collect_stats(model, tokenizer, texts: list[str], max_tokens: int = 256, sample_rows: int = 512,
                  modules: list[str] | None = None, seed: int = 0, progress: bool = True) -> dict[str, LinearStats]:
    names = modules or list(linear_modules(model))
    # q/k/v read the same tensor, and so do gate/up: hook one module of each family and share its statistics.
    source = {n: _shared_input(n) for n in names}
    hooked = sorted(set(source.values()))
    gen = torch.Generator().manual_seed(seed)
    acc: dict[str, dict] = {}
    hooks = []

    def make_hook(name):
        def hook(_mod, inputs, _out):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64).cpu()
            a = acc.get(name)
            if a is None:
                d = x.shape[1]
                a = acc[name] = {"xtx": torch.zeros(d, d, dtype=torch.float64), "abs": torch.zeros(d, dtype=torch.float64),
                                 "rows": [], "n": 0}
            a["xtx"] += x.T @ x
            a["abs"] += x.abs().sum(0)
            a["n"] += x.shape[0]
            # Keep a few random rows per call so memory stays bounded (~sample_rows per module in all).
            keep = torch.randperm(x.shape[0], generator=gen)[:per_call]
            a["rows"].append(x[keep].float())
        return hook

    seqs = tokenize_texts(tokenizer, texts, max_tokens)
    per_call = max(1, -(-sample_rows // len(seqs)))
    for n in hooked:
        hooks.append(model.get_submodule(n).register_forward_hook(make_hook(n)))
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
        for h in hooks:
            h.remove()
    shared = {}
    for n, a in acc.items():
        rows = torch.cat(a["rows"])
        pick = torch.randperm(rows.shape[0], generator=gen)[:sample_rows]
        shared[n] = LinearStats(a["xtx"], torch.diagonal(a["xtx"]).clone(), a["abs"] / a["n"], rows[pick].contiguous(),
                                a["n"])
    return {n: shared[source[n]] for n in names}


def _shared_input(name: str) -> str:
    """The module whose input `name` also reads (itself when none): q/k/v share one, gate/up another."""
    for siblings in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
        prefix, _, kind = name.rpartition(".")
        if kind in siblings[1:]:
            return f"{prefix}.{siblings[0]}"
    return name
