"""Greedy generation one token at a time, for streaming /v1/completions.

Contract: `GreedyStream(engine, prompts, max_new_tokens)` is driven by the caller: `start()` runs the prefill and
returns the first token of every row, each `step()` one more decode step. Both are plain blocking calls meant for
the model thread; between calls the server is free to run other work. It uses only `Engine.prefill`,
`Engine.decode_step` and `Engine.eos_ids`, so its tokens are exactly `Engine.generate(..., num_beams=1)`'s, with a
KV cache sized to this request instead of `engine.max_len`. `TextDelta` turns a growing token list into text
increments that never split a UTF-8 character and never emit text that might turn out to be part of a stop string.
"""
from __future__ import annotations

import torch


class GreedyStream:
    def __init__(self, engine, prompts: list[list[int]], max_new_tokens: int):
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if not prompts or any(not p for p in prompts):
            raise ValueError("every prompt needs at least one token")
        self.engine, self.prompts, self.max_new_tokens = engine, prompts, max_new_tokens
        self.t = max(len(p) for p in prompts)
        self.tokens: list[list[int]] = [[] for _ in prompts]
        self.done = [False] * len(prompts)
        self._cache = self._pad = self._last = None

    @property
    def finished(self) -> bool:
        return all(self.done) or self.steps >= self.max_new_tokens

    @property
    def steps(self) -> int:
        return max(len(r) for r in self.tokens)

    @torch.inference_mode()
    def start(self) -> list[int | None]:
        e = self.engine
        self._cache = e.model.setup_cache(len(self.prompts), self.t + self.max_new_tokens, device=e.device)
        logits, self._pad = e.prefill(self.prompts, self._cache)
        return self._take(logits)

    @torch.inference_mode()
    def step(self) -> list[int | None]:
        """One decode step; returns each row's new token, or None for rows that had already finished."""
        if self.finished:
            raise RuntimeError("generation already finished")
        logits = self.engine.decode_step(self._last, self._pad, self.t + self.steps - 1, self._cache)
        return self._take(logits)

    def _take(self, logits: torch.Tensor) -> list[int | None]:
        nxt = logits.argmax(-1)
        out: list[int | None] = []
        feed = []
        for i, tok in enumerate(nxt.tolist()):
            if self.done[i]:
                out.append(None)
                feed.append(next(iter(self.engine.eos_ids), 0))  # finished rows keep feeding EOS, as generate does
                continue
            self.tokens[i].append(tok)
            self.done[i] = tok in self.engine.eos_ids
            out.append(tok)
            feed.append(tok)
        self._last = torch.tensor(feed, device=self.engine.device)
        if self.finished:
            self._cache = None  # free the KV cache as soon as possible
        return out


class TextDelta:
    """Incremental detokenization of one row with optional stop strings."""

    def __init__(self, tokenizer, eos_ids, stop: list[str] | None = None):
        self.tok, self.eos_ids, self.stop = tokenizer, set(eos_ids), [s for s in (stop or []) if s]
        self.sent = ""
        self.stopped = False

    def text(self, tokens: list[int]) -> str:
        return self.tok.decode([t for t in tokens if t not in self.eos_ids], skip_special_tokens=True)

    def update(self, tokens: list[int], final: bool = False) -> str:
        """The text to send now for the row's tokens so far; sets `stopped` once a stop string appears."""
        if self.stopped:
            return ""
        full = self.text(tokens)
        cut = min((full.find(s) for s in self.stop if s in full), default=-1)
        if cut >= 0:
            self.stopped = True
            full = full[:cut]
        elif not final:
            if full.endswith("\ufffd"):  # a multi-byte character is still incomplete
                full = full.rstrip("\ufffd")
            hold = max((n for s in self.stop for n in range(len(s) - 1, 0, -1) if full.endswith(s[:n])), default=0)
            full = full[: len(full) - hold]
        if not full.startswith(self.sent):  # decoding of earlier tokens changed (rare merges): send nothing more
            return ""
        delta, self.sent = full[len(self.sent):], full
        return delta
