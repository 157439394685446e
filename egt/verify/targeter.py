"""`Targeter`: ad text in, ranked catalog entities out. What `egt target`, `egt serve` and `egt eval` call.

Contract:
- `Targeter(engine, catalog, trigger="auto", length_penalty=0.0)` builds the token trie of the catalog for the
  engine's tokenizer once. `target(ad_text, k)` returns a `TargetResult` whose `entities` are k (or fewer, if the
  catalog is smaller) distinct catalog entries, best first, each with its score (sum of token log-probabilities,
  divided by len**length_penalty when set); `timings` has prefill, decode steps, per-step latency, verification
  and total milliseconds plus where the trigger fired. `target_batch(texts, k)` runs many ads, up to 8 at a time in lockstep (same results as `target`).
- Prompt design: the ad goes into the model's chat template as a user turn
      "Which audience does this ad target? Answer with one audience interest.\\nAd: {ad}\\nAudience interest:"
  and the answer is generated right after the assistant header (`<|im_start|>assistant\\n` for SmolLM2), so
  entries are tokenized without a leading space and end with the end-of-turn token `<|im_end|>`: the natural
  context in which an instruct model answers. Models without a chat template get the same text as a plain
  prompt, entries with a leading space, and the EOS token as end marker. `prompt_template` overrides the text.
- `beam` sets the beam width (default: k, as Hugging Face's `num_beams=k`); a wider beam (max(beam, k)) keeps
  more hypotheses alive before the trigger fires. `graphs` (default: on for CUDA) runs every forward pass as a
  replayed CUDA graph (`egt.verify.search`); `warmup()` captures them up front (else on first use).
- `search="exact"` replaces the beam search by `ExactSearch` (best-first branch and bound over the trie, `chunk`
  nodes per tree-attention pass): the exact top k by sum of log-probabilities, at a cost that depends on how
  peaked the model is (see eval/results/verify.md). Its timings: prefill, then every pass counts as
  verification (`verify_ms`, `verify_passes`, `verified_nodes`), `triggered_at` 0, no decode steps.
- Thread safety: one lock per Targeter around its search (and its cache), one process-wide lock around the
  tokenizer (a fast tokenizer's padding/truncation settings are shared state).
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

from .catalog import Catalog, CatalogError
from .search import ExactSearch, SearchStats, TreeSearch
from .trie import DEFAULT_MAX_TOKENS, TokenTrie
from .trigger import CostModel, Trigger

PROMPT_TEMPLATE = "Which audience does this ad target? Answer with one audience interest.\nAd: {ad}\nAudience interest:"
MAX_AD_CHARS = 4000
_TOKENIZER_LOCK = threading.Lock()


@dataclass
class Hit:
    id: str
    text: str
    score: float
    logp: float
    tokens: int


@dataclass
class TargetTimings:
    prefill_ms: float
    steps: int
    ms_per_token: float  # mean decode-step latency (nan when the trigger fired before any step)
    verify_ms: float
    total_ms: float
    triggered_at: int | None = None
    verified_nodes: int = 0
    verify_passes: int = 0
    prefill_tokens: int = 0  # prompt tokens run; the rest were reused from the previous prompt's cached rows
    graph_captures: int = 0  # CUDA graphs captured during this request (first use of a size bucket)


@dataclass
class TargetResult:
    ad: str
    entities: list[Hit]
    timings: TargetTimings
    trace: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"ad": self.ad, "entities": [asdict(h) for h in self.entities], "timings": asdict(self.timings)}


def answer_context(tokenizer) -> tuple[bool, int]:
    """(chat, end-marker token id) for a tokenizer."""
    chat = bool(getattr(tokenizer, "chat_template", None))
    end = None
    if chat:
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
            end = im_end
    if end is None:
        end = tokenizer.eos_token_id
    if end is None:
        raise ValueError("the tokenizer has no end-of-sequence token to end catalog entries with")
    return chat, int(end)


class Targeter:
    def __init__(self, engine, catalog: Catalog, trigger: str = "auto", length_penalty: float = 0.0,
                 prompt_template: str = PROMPT_TEMPLATE, max_tokens: int = DEFAULT_MAX_TOKENS,
                 chunk: int | None = None, trie: TokenTrie | None = None, cost: CostModel | None = None,
                 search: str = "beam", beam: int | None = None, graphs: bool | None = None):
        if not isinstance(catalog, Catalog):
            raise TypeError("catalog must be an egt.verify.Catalog")
        if "{ad}" not in prompt_template:
            raise ValueError("prompt_template must contain '{ad}'")
        self.engine, self.catalog = engine, catalog
        self.prompt_template, self.length_penalty = prompt_template, float(length_penalty)
        self.chat, self.end_token = answer_context(engine.tokenizer)
        if trie is None:
            with _TOKENIZER_LOCK:
                trie = TokenTrie.from_catalog(catalog, engine.tokenizer, self.end_token, max_tokens=max_tokens,
                                              leading_space=not self.chat)
        self.trie = trie
        if self.trie.num_entries != len(catalog):
            raise CatalogError("the trie does not match the catalog")
        if search not in ("beam", "exact"):
            raise ValueError(f"search must be 'beam' or 'exact', got {search!r}")
        if chunk is None:  # nodes per pass: verification packs whole subtrees, exact search only the best frontier
            cuda = engine.device.type == "cuda"
            chunk = (4096 if cuda else 512) if search == "beam" else (512 if cuda else 64)
        if search == "exact":
            if self.length_penalty:
                raise ValueError("search='exact' ranks by the sum of log-probabilities (length_penalty=0)")
            self.search = ExactSearch(engine.model, self.trie, batch=chunk, max_nodes=max(4 * chunk, 8192),
                                      graphs=graphs)
            trigger = "never"  # no beams to switch from
        else:
            self.search = TreeSearch(engine.model, self.trie, chunk=chunk, graphs=graphs)
        if beam is not None and (not isinstance(beam, int) or beam < 1):
            raise ValueError(f"beam must be a positive integer, got {beam!r}")
        self.beam = beam
        if trigger == "auto" and cost is None:
            cost = CostModel.cached(engine.model, chunk, search=self.search)
        self.trigger = Trigger(trigger, cost)
        self._lock = threading.Lock()

    def warmup(self, max_prompt: int = 256, k: int = 10) -> int:
        """On a GPU, capture now the CUDA graphs that requests with prompts up to `max_prompt` tokens and k results
        would capture on first use (a few seconds; call before serving). Returns the number captured (0 on a CPU)."""
        with self._lock:
            return self.search.warmup(max_prompt, self._width(k) or k)

    def prompt_ids(self, ad_text: str) -> list[int]:
        if not isinstance(ad_text, str) or not ad_text.strip():
            raise ValueError("ad text must be a non-empty string")
        if len(ad_text) > MAX_AD_CHARS:
            raise ValueError(f"ad text is {len(ad_text)} characters; the limit is {MAX_AD_CHARS}")
        with _TOKENIZER_LOCK:  # a fast tokenizer's padding/truncation state is shared: no concurrent calls
            return self.engine.encode(self.prompt_template.format(ad=ad_text.strip()), chat=self.chat)

    def target(self, ad_text: str, k: int = 10) -> TargetResult:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        ids = self.prompt_ids(ad_text)
        if len(ids) + self.search.capacity(0, k) > 1 << 16:
            raise ValueError("prompt plus search does not fit the cache")
        with self._lock:
            t0 = time.perf_counter()
            cands, st = self.search.run(ids, k, trigger=self.trigger, length_penalty=self.length_penalty,
                                        stats=SearchStats(), beam=self._width(k))
            trace = list(self.trigger.last_trace)
            st.total_ms = (time.perf_counter() - t0) * 1e3
        return self._result(ad_text, cands, st, trace)

    def _width(self, k: int) -> int | None:
        return None if self.beam is None else max(self.beam, k)

    def _result(self, ad_text, cands, st, trace) -> TargetResult:
        hits = [Hit(self.catalog[c.entry].id, self.catalog[c.entry].text, c.score, c.logp, c.tokens) for c in cands]
        steps = st.steps
        timings = TargetTimings(st.prefill_ms, steps, sum(st.decode_ms) / steps if steps else float("nan"),
                                st.verify_ms, st.total_ms, st.triggered_at, st.verified_nodes, st.verify_passes,
                                st.prefill_tokens, st.graph_captures)
        return TargetResult(ad_text, hits, timings, trace)

    def target_batch(self, texts: list[str], k: int = 10, max_batch: int = 8) -> list[TargetResult]:
        """Many ads; with beam search, up to `max_batch` of them run in lockstep in one cache row
        (`TreeSearch.run_batch`: one forward pass per step for all of them). Results equal `target`'s; the timings
        of a request are those of its batch (prefill, steps and total shared)."""
        if isinstance(texts, str):
            raise TypeError("target_batch takes a list of ad texts")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        texts = list(texts)
        if not isinstance(self.search, TreeSearch) or isinstance(self.search, ExactSearch) or max_batch <= 1:
            return [self.target(t, k=k) for t in texts]
        out: list[TargetResult] = []
        for i in range(0, len(texts), max_batch):
            group = texts[i:i + max_batch]
            if len(group) == 1:
                out.append(self.target(group[0], k=k))
                continue
            ids = [self.prompt_ids(t) for t in group]
            with self._lock:
                t0 = time.perf_counter()
                res = self.search.run_batch(ids, k, trigger=self.trigger, length_penalty=self.length_penalty,
                                            beam=self._width(k))
                wall = (time.perf_counter() - t0) * 1e3
            for ad, (cands, st) in zip(group, res):
                st.total_ms = wall
                out.append(self._result(ad, cands, st, st.trace))
        return out
