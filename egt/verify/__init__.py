"""Prefix-tree parallel verification: catalog -> token trie -> trie-constrained beam search whose tail is replaced,
once a measured cost model says it is cheaper, by one tree-attention verification of every remaining path.

Public API: `Catalog`, `Entry`, `CatalogError`, `TokenTrie`, `TreeSearch`, `ExactSearch` (best-first exact top k, the oracle), `Trigger`, `CostModel`, `Targeter`,
`TargetResult`, `Hit`, `PROMPT_TEMPLATE`; DSI-style semantic-id tries in `egt.verify.semantic` (scikit-learn, imported
on use).

On CUDA every forward pass of the search is a replayed CUDA graph (`TreeSearch(graphs=...)`, `Targeter.warmup()`).

Results: eval/results/verify.md (reproduce with eval/verify_targeting.py); trie sizes: bench/results/verify_trie.json.
"""
from .catalog import Catalog, CatalogError, Entry
from .search import Candidate, ExactSearch, SearchStats, TreeSearch
from .targeter import PROMPT_TEMPLATE, Hit, TargetResult, Targeter, TargetTimings
from .trie import TokenTrie
from .trigger import CostModel, Trigger

__all__ = ["Catalog", "CatalogError", "Entry", "TokenTrie", "TreeSearch", "ExactSearch", "Candidate", "SearchStats", "Trigger",
           "CostModel", "Targeter", "TargetResult", "TargetTimings", "Hit", "PROMPT_TEMPLATE"]
