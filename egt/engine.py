"""The reference decode engine: prefill + preallocated KV cache + greedy / beam search, on CPU or CUDA.

Contract:
- `Engine.from_pretrained(source)` loads the embedded default, an HF checkpoint or an egt compressed directory.
- `generate(prompts, ...)` runs batch >= 1 (prompts are left-padded; each row keeps its own RoPE positions) and
  returns token ids, texts and per-token timings. Greedy output matches `transformers`' `generate` token for token.
- The decode step is the one place a backend plugs in: `torch` runs `Transformer.forward`; `megakernel` replaces
  `decode_step` with one persistent-kernel launch over the same cache (see `egt.megakernel`).
- Every kernel and the MegaKernel are checked against this engine.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .models import DEFAULT_MODEL, load_model
from .transformer import KVCache

BACKENDS = ("torch", "megakernel")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(sorted(DTYPES))}, got {dtype!r}")
    return DTYPES[dtype]


@dataclass
class Timings:
    prefill_ms: float = 0.0
    decode_ms: list[float] = field(default_factory=list)  # one entry per decode step

    def record(self, step: int, t0: float) -> None:
        """Close the interval started at `t0`: step 0 is the prefill (it yields the first token), later ones decode."""
        ms = (time.perf_counter() - t0) * 1e3
        if step == 0:
            self.prefill_ms = ms
        else:
            self.decode_ms.append(ms)

    @property
    def ms_per_token(self) -> float:
        """Median decode-step latency (the first generated token comes from prefill and is not counted)."""
        if not self.decode_ms:
            return float("nan")
        s = sorted(self.decode_ms)
        return s[len(s) // 2]


@dataclass
class Generation:
    tokens: list[list[int]]  # generated ids per prompt (beam: the best beam), without the prompt
    texts: list[str]
    scores: list[float]  # sum of log-probabilities of the generated tokens (beam: the ranking score)
    timings: Timings


class Engine:
    def __init__(self, model, tokenizer, device: torch.device, max_len: int = 2048, backend: str = "torch"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.model, self.tokenizer, self.device, self.max_len = model, tokenizer, device, max_len
        self.backend = backend
        eos = {tokenizer.eos_token_id} if tokenizer is not None and tokenizer.eos_token_id is not None else set()
        if tokenizer is not None:
            im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
            if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
                eos.add(im_end)
        self.eos_ids = eos
        if backend == "megakernel":
            from .megakernel import attach

            attach(self)

    @classmethod
    def from_pretrained(cls, source: str = DEFAULT_MODEL, device=None, dtype=None, backend: str = "torch",
                        max_len: int = 2048) -> "Engine":
        dev = resolve_device(device)
        loaded = load_model(source, dtype=resolve_dtype(dtype, dev), device=dev)
        engine = cls(loaded.model, loaded.tokenizer, dev, max_len=max_len, backend=backend)
        engine.load_seconds = loaded.load_seconds
        engine.source = loaded.source
        return engine

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    # ---- prompts -------------------------------------------------------------------------------------------
    def encode(self, text: str, chat: bool = True, system: str | None = None) -> list[int]:
        """Token ids of a prompt; with `chat`, wrapped in the model's chat template as a user turn."""
        tok = self.tokenizer
        if chat and getattr(tok, "chat_template", None):
            msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids)
        return tok(text, add_special_tokens=False)["input_ids"]

    # ---- the two steps ------------------------------------------------------------------------------------
    def new_cache(self, batch: int) -> KVCache:
        return self.model.setup_cache(batch, self.max_len, device=self.device)

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad and run the prompts; returns (last-position logits [B, V], pad counts [B])."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        t = max(len(p) for p in prompts)
        if t >= self.max_len:
            raise ValueError(f"prompt of {t} tokens does not fit max_len={self.max_len}")
        pad = torch.tensor([t - len(p) for p in prompts], device=self.device)
        tokens = torch.tensor([[0] * (t - len(p)) + list(p) for p in prompts], device=self.device)
        slots = torch.arange(t, device=self.device)
        pos = (slots.unsqueeze(0) - pad.unsqueeze(1)).clamp(min=0)
        logits = self.model(tokens, pos, slots, cache, mask=self._mask(pad, slots, t), kv_len=t)
        return logits[:, -1], pad

    def _mask(self, pad: torch.Tensor, slots: torch.Tensor, kv_len: int) -> torch.Tensor:
        keys = torch.arange(kv_len, device=self.device)
        causal = keys.view(1, 1, 1, -1) <= slots.view(1, 1, -1, 1)
        real = keys.view(1, 1, 1, -1) >= pad.view(-1, 1, 1, 1)
        own = keys.view(1, 1, 1, -1) == slots.view(1, 1, -1, 1)  # pad queries attend to themselves, never NaN
        return causal & (real | own)

    @torch.inference_mode()
    def decode_step(self, tokens: torch.Tensor, pad: torch.Tensor, slot: int, cache: KVCache) -> torch.Tensor:
        """One token per row at cache row `slot`; returns logits [B, V]."""
        slots = torch.tensor([slot], device=self.device)
        pos = (slot - pad).view(-1, 1)
        return self.model(tokens.view(-1, 1), pos, slots, cache, mask=self._mask(pad, slots, slot + 1),
                          kv_len=slot + 1)[:, -1]

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ---- search -------------------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]] | list[str], max_new_tokens: int = 32, num_beams: int = 1,
                 chat: bool = True, length_penalty: float = 1.0) -> Generation:
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if prompts and isinstance(prompts[0], str):
            prompts = [self.encode(p, chat=chat) for p in prompts]
        if num_beams > 1:
            gens = [self._beam(p, max_new_tokens, num_beams, length_penalty) for p in prompts]
            timings = Timings(sum(g.timings.prefill_ms for g in gens), [t for g in gens for t in g.timings.decode_ms])
            return Generation([g.tokens[0] for g in gens], [g.texts[0] for g in gens],
                              [g.scores[0] for g in gens], timings)
        return self._greedy(prompts, max_new_tokens)

    @torch.inference_mode()
    def _greedy(self, prompts: list[list[int]], max_new_tokens: int) -> Generation:
        b, t = len(prompts), max(len(p) for p in prompts)
        if t + max_new_tokens > self.max_len:
            raise ValueError(f"{t} prompt + {max_new_tokens} new tokens exceed max_len={self.max_len}")
        cache = self.new_cache(b)
        timings = Timings()
        self._sync()
        t0 = time.perf_counter()
        logits, pad = self.prefill(prompts, cache)
        out, scores = [], torch.zeros(b, device=self.device, dtype=torch.float64)
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        eos = torch.tensor(sorted(self.eos_ids) or [-1], device=self.device)
        for step in range(max_new_tokens):
            nxt = logits.argmax(-1)
            logp = torch.log_softmax(logits.double(), -1).gather(1, nxt.view(-1, 1)).squeeze(1)
            scores += torch.where(done, 0.0, logp)
            nxt = torch.where(done, eos[0].clamp(min=0), nxt)
            out.append(nxt)
            done |= torch.isin(nxt, eos)
            self._sync()
            timings.record(step, t0)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            t0 = time.perf_counter()
            logits = self.decode_step(nxt, pad, t + step, cache)
        toks = torch.stack(out, 1).tolist()
        toks = [self._cut(row) for row in toks]
        return Generation(toks, self._decode(toks), scores.tolist(), timings)

    def _cut(self, row: list[int]) -> list[int]:
        for i, tkn in enumerate(row):
            if tkn in self.eos_ids:
                return row[: i + 1]
        return row

    def _decode(self, rows: list[list[int]]) -> list[str]:
        if self.tokenizer is None:  # random-weight benchmark models have ids only
            return [""] * len(rows)
        return [self.tokenizer.decode([t for t in r if t not in self.eos_ids], skip_special_tokens=True).strip()
                for r in rows]

    @torch.inference_mode()
    def _beam(self, prompt: list[int], max_new_tokens: int, k: int, length_penalty: float) -> Generation:
        """Standard beam search for one prompt; finished hypotheses are ranked by sum logp / len**length_penalty."""
        t = len(prompt)
        if t + max_new_tokens > self.max_len:
            raise ValueError(f"{t} prompt + {max_new_tokens} new tokens exceed max_len={self.max_len}")
        cache = self.new_cache(k)
        timings = Timings()
        self._sync()
        t0 = time.perf_counter()
        one = self.model.setup_cache(1, self.max_len, device=self.device)
        logits, _ = self.prefill([prompt], one)
        cache.k[:, :, :, :t] = one.k[:, :, :, :t]
        cache.v[:, :, :, :t] = one.v[:, :, :, :t]
        del one
        logits = logits.expand(k, -1)
        beam_scores = torch.full((k,), float("-inf"), device=self.device, dtype=torch.float64)
        beam_scores[0] = 0.0  # all beams start identical: only one may expand at the first step
        seqs = torch.zeros((k, 0), dtype=torch.long, device=self.device)
        finished: list[tuple[float, list[int], float]] = []
        pad = torch.zeros(k, dtype=torch.long, device=self.device)
        vocab = logits.shape[-1]
        for step in range(max_new_tokens):
            cand = (beam_scores.unsqueeze(1) + torch.log_softmax(logits.double(), -1)).view(-1)
            top_scores, top_idx = cand.topk(2 * k)
            src, tok = top_idx // vocab, top_idx % vocab
            keep_src, keep_tok, keep_score = [], [], []
            for s, i, tk in zip(top_scores.tolist(), src.tolist(), tok.tolist()):
                if tk in self.eos_ids:
                    seq = seqs[i].tolist() + [tk]
                    finished.append((s / len(seq) ** length_penalty, seq, s))
                else:
                    keep_src.append(i), keep_tok.append(tk), keep_score.append(s)
                if len(keep_src) == k:
                    break
            index = torch.tensor(keep_src, device=self.device)
            seqs = torch.cat([seqs[index], torch.tensor(keep_tok, device=self.device).view(-1, 1)], 1)
            beam_scores = torch.tensor(keep_score, device=self.device, dtype=torch.float64)
            self._sync()
            timings.record(step, t0)
            best_running = max(keep_score) / (step + 1) ** length_penalty
            if len(finished) >= k and max(f[0] for f in finished) >= best_running or step == max_new_tokens - 1:
                break
            t0 = time.perf_counter()
            cur = t + step
            cache.k[:, :, :, :cur] = cache.k[:, index, :, :cur]
            cache.v[:, :, :, :cur] = cache.v[:, index, :, :cur]
            logits = self.decode_step(seqs[:, -1], pad, cur, cache)
        if len(finished) < k:  # too few hit EOS within the budget: rank the running beams too
            finished += [(s / seqs.shape[1] ** length_penalty, r, s) for s, r in zip(beam_scores.tolist(), seqs.tolist())]
        finished.sort(key=lambda f: -f[0])
        best = finished[0]
        return Generation([best[1]], self._decode([best[1]]), [best[0]], timings)
