"""Choose one quantization option per layer to minimise total predicted error under a bits-per-weight budget.

Contract:
- `allocate(options, budget_bits)`: `options` = {layer: [Option(plan, bits, error), ...]} where `bits` is the
  layer's exact storage (`LinearPlan.storage_bits`, scales and offsets included). Returns {layer: Option} with
  sum(bits) <= budget_bits and the smallest sum(error) found.
- Solver: multiple-choice knapsack by dynamic programming over the budget *above the cheapest choice of every
  layer*, discretised into `resolution` units. Each option's extra cost is rounded *up* to whole units, so the
  result always fits the budget; the rounding can leave at most one unit per layer unused
  (<= layers/resolution of the extra budget, i.e. < 0.3% with the defaults), otherwise the DP is exact.
- A budget below the cheapest choice of every layer raises `InfeasibleBudget` naming the smallest feasible
  bits per weight.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..plan import LinearPlan


class InfeasibleBudget(ValueError):
    """The bit budget is below what the cheapest allowed option of every layer needs."""


@dataclass(frozen=True)
class Option:
    plan: LinearPlan
    bits: int
    error: float


def allocate(options: dict[str, list[Option]], budget_bits: float, weights: int | None = None,
             resolution: int = 100_000) -> dict[str, Option]:
    names = list(options)
    if not names:
        return {}
    for n in names:
        if not options[n]:
            raise ValueError(f"layer {n} has no options")
    mins = {n: min(o.bits for o in options[n]) for n in names}
    base = sum(mins.values())
    if base > budget_bits:
        per_w = f" ({base / weights:.4f} bits per weight)" if weights else ""
        raise InfeasibleBudget(f"budget of {budget_bits / weights if weights else budget_bits:.4f} is infeasible: "
                               f"the cheapest allowed choice for every layer needs {base} bits{per_w}")
    extra = budget_bits - base
    unit = max(extra / resolution, 1.0)
    cap = int(math.floor(extra / unit))
    dp = np.zeros(cap + 1)  # dp[k]: least total error of the layers so far with extra cost <= k units
    choices = np.zeros((len(names), cap + 1), dtype=np.int16)
    for li, n in enumerate(names):
        new = np.full(cap + 1, np.inf)
        pick = np.zeros(cap + 1, dtype=np.int16)
        for j, o in enumerate(options[n]):
            c = int(math.ceil((o.bits - mins[n]) / unit - 1e-9))
            if c > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[c:] = dp[: cap + 1 - c] + o.error
            better = cand < new
            new[better] = cand[better]
            pick[better] = j
        dp, choices[li] = new, pick
    k = cap
    out = {}
    for li in range(len(names) - 1, -1, -1):
        n = names[li]
        o = options[n][int(choices[li, k])]
        out[n] = o
        k -= int(math.ceil((o.bits - mins[n]) / unit - 1e-9))
    assert sum(o.bits for o in out.values()) <= budget_bits + 1e-6
    return out
