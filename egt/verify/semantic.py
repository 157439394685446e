"""DSI-style semantic identifiers: a trie over cluster paths instead of spelled-out entry texts.

Contract:
- `embed_entries(model, tokenizer, texts, method)` gives one vector per entry: `hidden` = the model's final hidden
  states mean-pooled over the entry's tokens (costs a forward pass per entry), `tokens` = the mean of its input
  token embeddings (free; for catalogs of 10^5-10^6 entries).
- `semantic_codes(emb, branching, leaf_size, seed)` clusters hierarchically (scikit-learn k-means, recursively, at
  most `branching` children per node) until a cluster holds at most `leaf_size` entries, which are then numbered;
  every entry gets a distinct code (c_1, ..., c_L), entries that embed close share long prefixes, and the depth is
  about log_branching(N).
- `SemanticTrie.build(catalog, tokenizer, end_token, ...)` maps digit d at every level to one single-token string
  (`code_tokens`), builds a `TokenTrie` over the codes (end marker appended as for text tries) and keeps the codes,
  so `Targeter(engine, catalog, trie=st.trie)` searches the id space. Scores are then the model's probabilities of
  the identifiers, meaningful for a model trained to emit them (as in DSI); an off-the-shelf model only ranks them
  by surface similarity of the digit tokens. The point here is the structure: depth ~log_b N and at most b children
  per node, whatever the entry texts look like.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .catalog import Catalog, CatalogError
from .trie import TokenTrie


@torch.inference_mode()
def embed_entries(model, tokenizer, texts: list[str], method: str = "tokens", batch: int = 64) -> np.ndarray:
    if method not in ("tokens", "hidden"):
        raise ValueError(f"method must be 'tokens' or 'hidden', got {method!r}")
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    dev = model.device
    out = np.zeros((len(texts), model.shape.hidden), np.float32)
    for s in range(0, len(ids), batch):
        rows = ids[s:s + batch]
        t = max(len(r) for r in rows)
        tok = torch.tensor([r + [0] * (t - len(r)) for r in rows], device=dev)
        valid = torch.tensor([[1.0] * len(r) + [0.0] * (t - len(r)) for r in rows], device=dev).unsqueeze(-1)
        if method == "tokens":
            h = model.embed_tokens(tok).float()
        else:
            b = len(rows)
            cache = model.setup_cache(b, t)
            pos = torch.arange(t, device=dev)
            h = model(tok, pos.expand(b, -1), pos, cache, hidden_only=True).float()  # causal, right padding
        out[s:s + len(rows)] = ((h * valid).sum(1) / valid.sum(1)).cpu().numpy()
    return out


def semantic_codes(emb: np.ndarray, branching: int = 10, leaf_size: int | None = None, seed: int = 0) -> list[tuple]:
    from sklearn.cluster import KMeans

    if branching < 2:
        raise ValueError("branching must be >= 2")
    leaf_size = leaf_size or branching
    if leaf_size > branching:
        raise ValueError("leaf_size must be <= branching (the last digit numbers the entries of a leaf cluster)")
    n = len(emb)
    codes: list[tuple] = [()] * n
    stack = [(np.arange(n), ())]
    while stack:
        idx, prefix = stack.pop()
        if len(idx) <= leaf_size:
            for j, i in enumerate(idx):
                codes[i] = prefix + (j,)
            continue
        k = min(branching, len(idx))
        x = emb[idx]
        labels = None
        if np.ptp(x, axis=0).max() > 0:
            labels = KMeans(n_clusters=k, n_init=1, random_state=seed, max_iter=50).fit_predict(x)
        if labels is None or len(np.unique(labels)) < 2:  # identical points: split evenly, keep going
            labels = np.arange(len(idx)) * k // len(idx)
        for c in range(k):
            sub = idx[labels == c]
            if len(sub):
                stack.append((sub, prefix + (c,)))
    return codes


def code_tokens(tokenizer, branching: int) -> list[int]:
    """`branching` distinct token ids, each the single token of a short string: digits, then letters."""
    import string

    out, seen = [], set()
    for s in list(string.digits) + list(string.ascii_uppercase) + list(string.ascii_lowercase):
        ids = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] not in seen:
            out.append(ids[0]), seen.add(ids[0])
        if len(out) == branching:
            return out
    raise ValueError(f"the tokenizer has fewer than {branching} single-token digit/letter strings")


@dataclass
class SemanticTrie:
    trie: TokenTrie
    codes: list[tuple]
    digit_tokens: list[int]

    @classmethod
    def build(cls, catalog: Catalog, model, tokenizer, end_token: int, branching: int = 10, method: str = "tokens",
              seed: int = 0, embeddings: np.ndarray | None = None) -> "SemanticTrie":
        emb = embeddings if embeddings is not None else embed_entries(model, tokenizer, catalog.texts, method)
        if len(emb) != len(catalog):
            raise CatalogError("one embedding per catalog entry is needed")
        codes = semantic_codes(emb, branching=branching, seed=seed)
        digits = code_tokens(tokenizer, branching)
        if end_token in digits:
            raise CatalogError("the end marker is one of the digit tokens")
        trie = TokenTrie.from_sequences([[digits[d] for d in c] for c in codes], end_token)
        return cls(trie, codes, digits)

    def code_text(self, entry: int, tokenizer) -> str:
        return tokenizer.decode([self.digit_tokens[d] for d in self.codes[entry]])
