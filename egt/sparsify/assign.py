"""Exact-density assignment of N:4 patterns to modules: a knapsack solved by dynamic programming.

Contract:
- `assign_exact(items, target_density)`: `items` is a list of (size, {pattern: cost}); each item gets one pattern
  (`dense` = density 1, `2:4` = 1/2, `1:4` = 1/4) so that the kept weight count equals target_density * total size
  exactly, and the summed cost is minimal. Kept counts are integers in units of the gcd of all possible kept
  counts, so the DP is exact, not a relaxation. A target that no combination reaches raises `ValueError` naming
  the nearest reachable densities.
- Hierarchy (see `costs_for`): level 1, a layer's cost of a pattern is its measured importance; level 2, that cost
  is split among the layer's modules in proportion to their Hessian-weighted reconstruction error at that pattern;
  level 3, inside every group of 4 the kept weights are chosen by Wanda or SparseGPT (`pattern.py`). With
  `granularity="layer"` all modules of a layer share one pattern; with `"module"` each module gets its own.
"""
from __future__ import annotations

import math
from functools import reduce

import numpy as np

DENSITY = {"dense": 1.0, "2:4": 0.5, "1:4": 0.25}
MAX_STATES = 4_000_000


def assign_exact(items: list[tuple[int, dict[str, float]]], target_density: float) -> list[str]:
    if not items:
        raise ValueError("nothing to assign")
    if not 0.25 <= target_density <= 1.0:
        raise ValueError(f"target density must be within [0.25, 1], got {target_density}")
    for size, costs in items:
        if size % 4:
            raise ValueError(f"item size {size} is not a multiple of 4")
        if not costs or any(p not in DENSITY for p in costs):
            raise ValueError(f"unknown pattern in {sorted(costs)}")
    kept = [{p: int(size * DENSITY[p]) for p in costs} for size, costs in items]
    unit = reduce(math.gcd, (k for d in kept for k in d.values()))
    total = sum(size for size, _ in items)
    want = target_density * total / unit
    if abs(want - round(want)) > 1e-6:
        lo, hi = math.floor(want) * unit / total, math.ceil(want) * unit / total
        raise ValueError(f"density {target_density} is not reachable exactly; nearest grid points {lo:.6f} / {hi:.6f}")
    want = round(want)
    cap = sum(max(d.values()) for d in kept) // unit
    if (cap + 1) * len(items) > MAX_STATES:
        raise ValueError(f"assignment too fine-grained ({cap} units x {len(items)} items)")
    inf = np.inf
    best = np.full(cap + 1, inf)
    best[0] = 0.0
    choice = np.zeros((len(items), cap + 1), dtype=np.int8)
    pats = [list(c) for _, c in items]
    for j, (_, costs) in enumerate(items):
        new = np.full(cap + 1, inf)
        for pi, p in enumerate(pats[j]):
            k = kept[j][p] // unit
            cand = np.full(cap + 1, inf)
            cand[k:] = best[: cap + 1 - k] + costs[p]
            better = cand < new
            new[better] = cand[better]
            choice[j][better] = pi
        best = new
    if not np.isfinite(best[want]):
        raise ValueError(f"density {target_density} is not reachable with the allowed patterns")
    out, c = [], want
    for j in range(len(items) - 1, -1, -1):
        p = pats[j][choice[j][c]]
        out.append(p)
        c -= kept[j][p] // unit
    assert c == 0
    return out[::-1]


def costs_for(layer_cost: dict[str, list[float]], module_err: dict[str, dict[str, float]],
              modules_by_layer: list[list[str]], sizes: dict[str, int], granularity: str,
              allow_dense: bool = True) -> tuple[list[tuple[int, dict[str, float]]], list[list[str]]]:
    """Items for `assign_exact` and, per item, the module names it covers."""
    pats = [p for p in ("2:4", "1:4") if p in layer_cost]
    items, groups = [], []
    for i, mods in enumerate(modules_by_layer):
        if granularity == "layer":
            c = {p: layer_cost[p][i] for p in pats}
            if allow_dense:
                c["dense"] = 0.0
            items.append((sum(sizes[m] for m in mods), c))
            groups.append(list(mods))
        elif granularity == "module":
            for m in mods:
                c = {}
                for p in pats:
                    tot = sum(module_err[x][p] for x in mods) or 1.0
                    c[p] = layer_cost[p][i] * module_err[m][p] / tot
                if allow_dense:
                    c["dense"] = 0.0
                items.append((sizes[m], c))
                groups.append([m])
        else:
            raise ValueError(f"granularity must be 'layer' or 'module', got {granularity!r}")
    return items, groups
