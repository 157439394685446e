"""When to stop decoding token by token and verify every remaining trie path in one pass.

Contract:
- `CostModel` holds measured forward latencies `f(T)` (T tokens fed at once over a short cached prompt, lm_head
  on every row) for the model on this device, through the search's own forward path (CUDA graphs on a GPU, eager
  on a CPU), best of the repetitions and made non-decreasing in T (load spikes on a shared CPU only inflate); `calibrate(model, chunk, search=...)` measures them, `CostModel.cached(...)` measures once per
  (device, model shape, dtype, threads, chunk, graphs) and stores the table in `~/.cache/egt/verify_costs.json`,
  so later processes reuse it.
- `Trigger(mode)`: `always` fires at step 0 (exact top k over the whole catalog), `never` never fires (plain
  trie-constrained beam search), `auto` fires at the first step where verifying all remaining nodes now, in passes
  of `chunk` tokens, is estimated to cost no more than either way of going on:
      verify(M) <= (h - 1) * f(k)              finishing by decoding (worst case: the deepest remaining leaf)
      verify(M) <= f(k') + verify(M')          one more decode step, then verifying what is left
  with M the internal nodes below the live beams, h their largest remaining height (edges to a leaf; the last
  edge, to the end marker, needs no forward pass), k' the beams the step would feed and M' the internal nodes
  below them (known before the step runs: the selection comes from logits already computed), and
  verify(M) = (M // chunk) * f(chunk) + f(M % chunk). The second rule keeps the search decoding while each step
  still prunes more verification work than it costs (on a CPU, where f grows with T), and fires as soon as it
  does not (on a GPU, where f is nearly flat up to thousands of tokens, that is usually step 0).
- A trigger is a callable `(search, beam_nodes, step, width, next_nodes) -> bool` (width = beam width, k by
  default); it records its decisions in `last_trace`.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

MODES = ("auto", "always", "never")


class CostModel:
    def __init__(self, sizes, ms, chunk: int, key: str = ""):
        self.sizes = np.asarray(sizes, dtype=np.float64)
        # A pass of more tokens never costs less: a measurement that a load spike inflated above a larger size's
        # is clipped to it (reverse running minimum), so one noisy point cannot steer the trigger.
        self.ms = np.minimum.accumulate(np.asarray(ms, dtype=np.float64)[::-1])[::-1]
        self.chunk, self.key = int(chunk), key

    def forward_ms(self, t: int | float) -> float:
        if t <= 0:
            return 0.0
        if t > self.sizes[-1]:  # extrapolate linearly from the last segment
            slope = (self.ms[-1] - self.ms[-2]) / (self.sizes[-1] - self.sizes[-2])
            return float(self.ms[-1] + slope * (t - self.sizes[-1]))
        return float(np.interp(t, self.sizes, self.ms))

    def verify_ms(self, nodes: int) -> float:
        full, rest = divmod(int(nodes), self.chunk)
        return full * self.forward_ms(self.chunk) + self.forward_ms(rest)

    def to_dict(self) -> dict:
        return {"key": self.key, "chunk": self.chunk, "sizes": self.sizes.tolist(), "ms": self.ms.tolist()}

    # ---- measuring -----------------------------------------------------------------------------------------
    @staticmethod
    def device_key(model, chunk: int, graphs: bool = False) -> str:
        dev = model.device
        if dev.type == "cuda":
            name = torch.cuda.get_device_name(dev)
        else:
            name = f"cpu:{platform.machine()}:{platform.processor() or 'unknown'}:threads={torch.get_num_threads()}"
        s = model.shape
        plan = getattr(model, "egt_plan_id", "")
        return (f"{name}|{s.hidden}x{s.intermediate}x{s.layers}x{s.heads}/{s.kv_heads}x{s.vocab}|{model.dtype}"
                f"|{plan}|chunk={chunk}" + ("|graphs" if graphs else ""))

    @classmethod
    def calibrate(cls, model, chunk: int, prompt_len: int = 64, reps: int = 2, search=None) -> "CostModel":
        """Measure f(T) through `search.measure_forward` (the search's own path: CUDA graphs or eager); without a
        search, through a throw-away eager `TreeSearch` of the model."""
        # Geometric sizes up to the chunk: enough for piecewise-linear interpolation, cheap to measure on a CPU.
        sizes = sorted({s for s in (1, 4, 16, 64, 256, 1024) if s < chunk} | {chunk})
        if search is None:
            from .search import TreeSearch
            from .trie import TokenTrie

            search = TreeSearch(model, TokenTrie.from_sequences([[0]], 1), chunk=chunk, graphs=False)
        ms = search.measure_forward(sizes, prompt_len=prompt_len, reps=reps)
        return cls(sizes, ms, chunk, cls.device_key(model, chunk, getattr(search, "graphs", False)))

    @classmethod
    def cached(cls, model, chunk: int, path: Path | None = None, refresh: bool = False, search=None) -> "CostModel":
        path = path or Path(os.environ.get("EGT_CACHE", Path.home() / ".cache" / "egt")) / "verify_costs.json"
        key = cls.device_key(model, chunk, getattr(search, "graphs", False))
        table = {}
        if path.is_file():
            try:
                table = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                table = {}
        if key in table and not refresh:
            d = table[key]
            return cls(d["sizes"], d["ms"], d["chunk"], key)
        cm = cls.calibrate(model, chunk, search=search)
        table[key] = cm.to_dict()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(table, indent=1))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home only costs a re-calibration next time
        return cm


class Trigger:
    def __init__(self, mode: str = "auto", cost: CostModel | None = None):
        if mode not in MODES:
            raise ValueError(f"trigger must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "auto" and cost is None:
            raise ValueError("trigger 'auto' needs a CostModel")
        self.mode, self.cost = mode, cost
        self.last_trace: list[dict] = []

    def __call__(self, search, beam_nodes, step: int, k: int, next_nodes=None) -> bool:
        """`k` is the beam width: the number of tokens a later decode step feeds."""
        if step == 0:
            self.last_trace = []
        if self.mode == "always":
            return True
        if self.mode == "never":
            return False
        tr = search.trie
        m = int((tr.sub_internal[beam_nodes] - 1).sum())
        h = int(tr.height[beam_nodes].max())
        verify = self.cost.verify_ms(m)
        finish = (h - 1) * self.cost.forward_ms(k)  # later steps run up to k beams
        if next_nodes is not None and len(next_nodes):
            m_next = int((tr.sub_internal[next_nodes] - 1).sum())
            one_more = self.cost.forward_ms(len(next_nodes)) + self.cost.verify_ms(m_next)
        else:  # the search ends at this step anyway: verifying can only add cost
            m_next, one_more = 0, 0.0
        fire = verify <= finish and verify <= one_more
        self.last_trace.append({"step": step, "remaining_nodes": m, "next_nodes": m_next, "height": h,
                                "verify_ms_est": round(verify, 3), "finish_ms_est": round(finish, 3),
                                "one_more_ms_est": round(one_more, 3), "fire": fire})
        return fire


