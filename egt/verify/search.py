"""Trie-constrained beam search with one-pass tree-attention verification, on `egt.transformer.Transformer`.

Contract:
- `TreeSearch(model, trie).run(prompt_ids, k, ..., beam=None)` returns up to k `Candidate`s (entry index, score,
  sum of log-probabilities, tokens), best first. Every candidate is a trie leaf, i.e. a catalog entry. The sequence
  score is the sum of the model's full-vocabulary log-probabilities of the entry's tokens and its end marker
  (the same quantity Hugging Face beam search accumulates); `length_penalty=a` ranks by sum / len**a. `beam` is
  the beam width (default k, Hugging Face's `num_beams=k`); a wider beam keeps more hypotheses alive.
- The KV cache is ONE row laid out as a tree: the prompt at slots [0, P), then every token the search feeds gets
  its own slot. Each fed token sees a range of prompt rows plus the chain of its ancestors: the search passes, per
  token, (token, RoPE position, slot, prompt range [lo, hi), slot of its parent) and `_Runner` records the parent
  slot on the device and builds the attention mask there by following parent links (no host-built [T, kv] mask).
  RoPE positions are P + depth - 1. Beam steps therefore never copy or reorder the cache, and verification is the
  same operation with many nodes at once.
- On CUDA every forward pass is a replayed CUDA graph (`graphs=True`, the default there): the 135M default model
  in fp32 eager mode spends ~20-30 ms per pass launching ~1,000 small kernels, a graph replays them in a few ms.
  Token counts are padded to a few bucket sizes (padding tokens sit in spare cache rows, see only themselves
  and are never seen) and the attended length to a few sizes (<= 1.5x), so a few dozen graphs serve every
  request; a graph is captured on first use of its (tokens, length) bucket and kept
  (`SearchStats.graph_captures`; each capture costs a few eager passes), or all at once by `warmup()`.
- Beam step: the live beams' newest tokens go through one forward pass; candidates are the trie children of each
  beam scored by beam score + log-prob; end markers ranked within the first `beam` candidates finish, the best
  `beam` others continue (the Hugging Face rule). Search stops when k finished hypotheses are at least as good as
  the best running one, or no beam is left.
- Verification (`_verify`): all internal trie nodes strictly below the live beams are packed into forward passes
  of at most `chunk` tokens (pre-order runs; a run that starts inside a subtree re-feeds the few ancestors it
  needs), each node attending to the prompt, its beam's path and its ancestors in the pack. Every remaining
  root-to-leaf path gets its exact log-probability (the child tokens' log-probs are gathered on the device; one
  copy to the host per pass); with the remaining leaves and the hypotheses finished so far the top k are
  selected. Fired at step 0 this is the exact top k of the whole catalog.
- A `trigger(search, beam_nodes, step, width, next_nodes)` callable decides at every step, after the step's beam
  selection is known but before its forward pass (see `egt.verify.trigger`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .trie import TokenTrie

_T_BUCKETS = (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
# Attended lengths: at most 1.5x padding, few distinct values, so few graphs per token bucket.
_KV_BUCKETS = (256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152, 65536)


def _kv_bucket(n: int) -> int:
    i = int(np.searchsorted(_KV_BUCKETS, n))
    return _KV_BUCKETS[i] if i < len(_KV_BUCKETS) else -(-n // 8192) * 8192


@dataclass
class Candidate:
    entry: int
    score: float   # ranking score (sum / len**length_penalty)
    logp: float    # sum of log-probabilities
    tokens: int    # entry tokens + end marker


@dataclass
class SearchStats:
    prefill_ms: float = 0.0
    decode_ms: list[float] = field(default_factory=list)
    verify_ms: float = 0.0
    triggered_at: int | None = None   # step at which verification replaced decoding (None: never)
    verified_nodes: int = 0           # nodes fed through the verification passes (incl. re-fed ancestors)
    verify_passes: int = 0
    total_ms: float = 0.0
    prefill_tokens: int = 0           # prompt tokens actually run (the rest came from the prefix cache)
    expanded_nodes: int = 0           # exact best-first search only
    graph_captures: int = 0           # CUDA graphs captured during this request (first use of a bucket)
    trace: list = field(default_factory=list)  # the trigger's decisions (run_batch; `run` leaves them on the trigger)

    @property
    def steps(self) -> int:
        return len(self.decode_ms)


class _Runner:
    """Feeds tokens into one tree-shaped cache row. Inputs per token: token, position, slot, prompt range lo, hi
    and parent slot (`sink` = none). The mask row of a token is [lo, hi) plus the token itself and its ancestors,
    found by following the parent slots recorded on the device (`chain` hops). With `graphs` each (padded token
    count, attended length) bucket is one captured CUDA graph; the returned hidden states are valid until the next
    call."""

    def __init__(self, model, cache, chain: int, graphs: bool, max_tokens: int, pad: bool | None = None):
        self.model, self.cache, self.chain = model, cache, int(chain)
        self.L = cache.max_len
        self.sink = self.L
        dev = model.device
        self.parent = torch.full((self.L + 1,), self.sink, dtype=torch.long, device=dev)  # sink links to itself
        self.graphs = graphs
        self.pad = graphs if pad is None else bool(pad)  # padding without graphs: only to test it on a CPU
        self.max_tokens = int(max_tokens)
        self._graphs: dict = {}
        self.buckets = sorted({b for b in _T_BUCKETS if b < self.max_tokens} | {self.max_tokens})
        if graphs:
            self.inp = torch.zeros(6, self.max_tokens, dtype=torch.long, device=dev)
            self.pool = torch.cuda.graph_pool_handle()
        self.captures = 0
        self.failed: str | None = None

    def _body(self, x: torch.Tensor, kv: int) -> torch.Tensor:
        tok, pos, slot, lo, hi, par = x
        t = tok.shape[0]
        self.parent.index_copy_(0, slot, par)
        rows = torch.arange(kv + 1, device=tok.device)
        m = (rows >= lo.unsqueeze(1)) & (rows < hi.unsqueeze(1))  # column kv catches the sink
        cur = slot
        for _ in range(self.chain):
            m.scatter_(1, cur.clamp(max=kv).unsqueeze(1), True)
            cur = self.parent[cur]
        mask = m[:, :kv].contiguous().view(1, 1, t, kv)
        return self.model(tok.view(1, t), pos.view(1, t), slot, self.cache, mask=mask, kv_len=kv, hidden_only=True)[0]

    def forward(self, arr: np.ndarray, base: int) -> torch.Tensor:
        """arr: int64 [6, t] (token, pos, slot, lo, hi, parent); the slots are base .. base + t - 1."""
        t = arr.shape[1]
        if self.pad and not self.failed and t <= self.max_tokens:
            tb = self.buckets[int(np.searchsorted(self.buckets, t))]
            kv = min(_kv_bucket(base + tb), self.L)
            if base + tb <= kv:
                full = np.empty((6, tb), np.int64)
                full[:, :t] = arr
                # Padding tokens: spare rows after the real ones, attending only to themselves (finite outputs).
                full[0:2, t:] = 0
                full[2, t:] = np.arange(base + t, base + tb)
                full[3:5, t:] = 0
                full[5, t:] = self.sink
                if not self.graphs:
                    return self._body(torch.from_numpy(full).to(self.model.device), kv)[:t]
                self.inp[:, :tb].copy_(torch.from_numpy(full))
                g = self._graphs.get((tb, kv))
                if g is None:
                    g = self._capture(tb, kv)
                if g is not None:
                    g[0].replay()
                    return g[1][:t]
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(self.model.device)
        return self._body(x, base + t)

    def _capture(self, tb: int, kv: int):
        x = self.inp[:, :tb]
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):  # warm-up off the capture (the work is idempotent: same rows, same values)
                for _ in range(2):
                    self._body(x, kv)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self.pool):
                out = self._body(x, kv)
        except Exception as e:  # e.g. a packed module kind that syncs with the host: stay eager
            self.failed = f"{type(e).__name__}: {e}"
            torch.cuda.synchronize()
            return None
        self._graphs[(tb, kv)] = (g, out)
        self.captures += 1
        return self._graphs[(tb, kv)]


class TreeSearch:
    def __init__(self, model, trie: TokenTrie, chunk: int = 1024, prefix_cache: bool = True,
                 graphs: bool | None = None, pad: bool | None = None):
        self.model, self.trie, self.chunk = model, trie, int(chunk)
        self.device = model.device
        self.prefix_cache = prefix_cache
        if graphs is None:
            graphs = self.device.type == "cuda"
        if graphs and self.device.type != "cuda":
            raise ValueError("graphs=True needs a model on a CUDA device")
        self.graphs = bool(graphs)
        self._pad = pad  # bucket padding (default: with graphs); settable on a CPU to test the padded path
        self._cache = None
        self._runner: _Runner | None = None
        self._cached_prompt: list[int] = []  # the prompt whose keys/values sit in cache rows [0, len)
        self._lm_block = 1024 if self.device.type == "cuda" else 256

    # ---- cache ---------------------------------------------------------------------------------------------
    def _get_cache(self, need: int):
        # Reused between requests: zero-initialised once, so stale rows are finite and masked out (a NaN in a
        # masked row would still poison SDPA's weighted sum). With graphs it is sized generously: a new cache
        # means new graphs.
        if self._cache is None or self._cache.max_len < need:
            self._cache = self._runner = None  # free the old ones first
            if self.graphs or self._pad:
                need = -(-max(need, 2048) // 1024) * 1024
            self._cache = self.model.setup_cache(1, max(need, 256))
            self._runner = _Runner(self.model, self._cache, self.trie.max_depth + 2, self.graphs,
                                   max(self.chunk, 256), pad=self._pad)
            self._cached_prompt = []
        return self._cache

    def _feed(self, arr: np.ndarray, base: int, st: SearchStats | None = None) -> torch.Tensor:
        r = self._runner
        n = r.captures
        h = r.forward(arr, base)
        if st is not None:
            st.graph_captures += r.captures - n
        return h

    @staticmethod
    def _inputs(tokens, pos, slots, lo, hi, parent) -> np.ndarray:
        t = len(tokens)
        arr = np.empty((6, t), np.int64)
        for i, v in enumerate((tokens, pos, slots, lo, hi, parent)):
            arr[i] = v
        return arr

    def _prefill(self, prompt_ids: list[int], cache, st) -> torch.Tensor:
        """Run the prompt (only the part after the prefix it shares with the previous prompt, whose rows are still
        in the cache: searches write only rows >= the prompt length) and return next-token log-probs [1, V]."""
        P = len(prompt_ids)
        start = 0
        if self.prefix_cache:
            old = self._cached_prompt
            n = min(len(old), P - 1)  # at least the last token is run, for its logits
            while start < n and old[start] == prompt_ids[start]:
                start += 1
        self._cached_prompt = []  # invalid while rows are being written
        s = np.arange(start, P)
        h = self._feed(self._inputs(prompt_ids[start:], s, s, 0, s + 1, self._runner.sink), start, st)
        self._cached_prompt = list(prompt_ids)
        st.prefill_tokens = P - start
        return torch.log_softmax(self.model.lm_head(h[-1:]).float(), -1)

    def capacity(self, prompt_len: int, k: int) -> int:
        return prompt_len + k * (self.trie.max_depth + 1) + self.chunk + self.trie.max_depth + 8

    def _warm_base(self, max_prompt: int, width: int) -> int:
        return max_prompt + width * (self.trie.max_depth + 1)

    @torch.inference_mode()
    def warmup(self, max_prompt: int = 256, width: int = 10) -> int:
        """Capture now every graph bucket that requests with prompts up to `max_prompt` tokens and beam width
        `width` can use (dummy tokens in spare rows), so that no request pays a capture later. Returns the number
        of graphs captured (0 without graphs). Invalidates the prompt-prefix cache."""
        if not (self.graphs or self._pad):
            return 0
        hi = self._warm_base(max_prompt, width)
        self._get_cache(self.capacity(max_prompt, width))
        r = self._runner
        n0 = r.captures
        self._cached_prompt = []
        for tb in r.buckets:
            for kv in sorted({min(b, r.L) for b in _KV_BUCKETS if _kv_bucket(tb) <= b <= _kv_bucket(hi + tb)}):
                if kv < tb:
                    continue
                base = kv - tb  # lands exactly in bucket (tb, kv)
                s = np.arange(base, base + tb)
                r.forward(self._inputs(np.zeros(tb, np.int64), np.zeros(tb, np.int64), s, 0, 0, r.sink), base)
        self._sync()
        return r.captures - n0

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def measure_forward(self, sizes, prompt_len: int = 64, reps: int = 2) -> list[float]:
        """Best-of-`reps` ms of one pass of T tokens over a cached prompt, lm_head + log-softmax on every row, for each T in
        `sizes`, through the same path (graphs or eager) the search uses. For the trigger's cost model."""
        V = self.model.shape.vocab
        self._get_cache(prompt_len + max(sizes) + 8)
        self._cached_prompt = []  # rows [0, prompt_len) are overwritten
        p = np.arange(prompt_len)
        self._feed(self._inputs(np.zeros(prompt_len, np.int64), p, p, 0, p + 1, self._runner.sink), 0)
        rng = np.random.default_rng(0)
        out = []
        for t in sizes:
            s = np.arange(prompt_len, prompt_len + t)
            arr = self._inputs(rng.integers(0, V, t), np.full(t, prompt_len), s, 0, prompt_len, self._runner.sink)
            times = []
            for r in range(reps + 1):
                self._sync()
                t0 = time.perf_counter()
                self._logprobs(self._feed(arr, prompt_len))
                self._sync()
                if r:  # the first run warms up (and captures the graph)
                    times.append((time.perf_counter() - t0) * 1e3)
            out.append(float(np.min(times)))  # other processes only add time: the best run is the estimate
        return out

    # ---- model calls ---------------------------------------------------------------------------------------
    def _logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, hidden.shape[0], self._lm_block):
            out.append(torch.log_softmax(self.model.lm_head(hidden[i:i + self._lm_block]).float(), -1))
        return torch.cat(out) if len(out) > 1 else out[0]

    def _edge_logp(self, hidden: torch.Tensor, rows: np.ndarray, nodes: np.ndarray):
        """Log-probs of every child token of trie `nodes`, whose hidden states are `hidden[rows]`: lm_head in blocks
        of rows ([rows, vocab] at once would not fit for thousands of nodes), gathered on the device, one copy."""
        tr, dev = self.trie, self.device
        cnt = tr.child_count[nodes].astype(np.int64)
        child = np.repeat(tr.child_start[nodes].astype(np.int64), cnt) + _ranges(cnt)
        if child.size == 0:
            return child, np.zeros(0)
        estart = np.concatenate([[0], np.cumsum(cnt)])
        tok = torch.as_tensor(tr.token[child].astype(np.int64), device=dev)
        roe = torch.as_tensor(np.repeat(np.arange(len(nodes)), cnt), device=dev)
        rows_t = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=dev)
        parts = []
        for i in range(0, len(nodes), self._lm_block):
            j = min(i + self._lm_block, len(nodes))
            a, b = int(estart[i]), int(estart[j])
            if a == b:
                continue
            logits = self.model.lm_head(hidden[rows_t[i:j]]).float()
            r = roe[a:b] - i
            parts.append(logits[r, tok[a:b]] - torch.logsumexp(logits, -1)[r])
        return child, torch.cat(parts).double().cpu().numpy()

    # ---- search ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, prompt_ids: list[int], k: int, trigger=None, length_penalty: float = 0.0,
            stats: SearchStats | None = None, beam: int | None = None) -> tuple[list[Candidate], SearchStats]:
        if k < 1:
            raise ValueError("k must be >= 1")
        width = _width(k, beam)
        tr = self.trie
        st = stats or SearchStats()
        t_start = time.perf_counter()
        P = len(prompt_ids)
        cache = self._get_cache(self.capacity(P, width))
        sink = self._runner.sink
        lp = self._prefill(prompt_ids, cache, st)  # lm_head only on the last position
        self._sync()
        st.prefill_ms = (time.perf_counter() - t_start) * 1e3

        def norm(logp, n):
            return logp / (n ** length_penalty) if length_penalty else logp

        beam_nodes = np.array([0], np.int64)
        beam_scores = np.array([0.0])
        beam_slot = np.array([sink], np.int64)  # cache slot of each beam's newest answer token (sink: none yet)
        finished: list[Candidate] = []
        free = P
        step = 0
        while len(beam_nodes):
            t0 = time.perf_counter()
            new_nodes, new_scores, new_src, new_done = self._select(beam_nodes, beam_scores, lp, width, norm)
            next_nodes = np.array(new_nodes, np.int64)
            if trigger is not None and trigger(self, beam_nodes, step, width, next_nodes):
                st.triggered_at = step
                finished += self._verify(beam_nodes, beam_scores, beam_slot, lp, P, free, (0, P), norm, st)
                self._sync()
                st.verify_ms = (time.perf_counter() - t0) * 1e3
                break
            finished += new_done
            beam_nodes = next_nodes
            beam_scores = np.array(new_scores)
            parents = beam_slot[np.asarray(new_src, np.int64)]
            depth = step + 1
            if not len(beam_nodes) or _done(finished, k, beam_scores, depth, norm):
                break  # the last selection needs no forward pass: not counted as a decode step
            # Feed the new beam tokens: one slot each, attending to the prompt and their own path.
            nb = len(beam_nodes)
            slots = np.arange(free, free + nb)
            h = self._feed(self._inputs(tr.token[beam_nodes], P + depth - 1, slots, 0, P, parents), free, st)
            lp = self._logprobs(h)
            beam_slot = slots
            free += nb
            step += 1
            self._sync()
            st.decode_ms.append((time.perf_counter() - t0) * 1e3)
        finished.sort(key=lambda c: -c.score)
        st.total_ms = (time.perf_counter() - t_start) * 1e3
        return finished[:k], st

    @torch.inference_mode()
    def run_batch(self, prompts: list[list[int]], k: int, trigger=None, length_penalty: float = 0.0,
                  beam: int | None = None) -> list[tuple[list[Candidate], SearchStats]]:
        """Several requests in lockstep, all in the same single cache row: request r's prompt sits in its own rows
        (positions 0..P_r-1, block-diagonal causal mask), its beams see only its prompt and their own paths, and one
        forward pass per step feeds the new beams of every request still running. A request whose trigger fires
        is verified on its own (its passes reuse the rows after the fed tokens); the others go on. Each request's
        candidates equal `run`'s. Timings are shared: prefill, steps and total are those of the whole batch."""
        if k < 1:
            raise ValueError("k must be >= 1")
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        width = _width(k, beam)
        tr, dev = self.trie, self.device
        t_start = time.perf_counter()
        lens = [len(p) for p in prompts]
        starts = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        total = int(starts[-1])
        cache = self._get_cache(total + len(prompts) * width * (tr.max_depth + 1) + self.chunk + tr.max_depth + 8)
        sink = self._runner.sink
        self._cached_prompt = []  # rows from 0 are rewritten
        slots = np.arange(total)
        lo = np.repeat(starts[:-1], lens)
        pos = np.concatenate([np.arange(n) for n in lens])
        stats = [SearchStats(prefill_tokens=n) for n in lens]
        h = self._feed(self._inputs(np.concatenate(prompts), pos, slots, lo, slots + 1, sink), 0, stats[0])
        lp_all = self._logprobs(h[torch.as_tensor(starts[1:] - 1, device=dev)])
        self._sync()
        prefill_ms = (time.perf_counter() - t_start) * 1e3
        for s in stats:
            s.prefill_ms = prefill_ms

        def norm(logp, n):
            return logp / (n ** length_penalty) if length_penalty else logp

        state = [{"nodes": np.array([0], np.int64), "scores": np.array([0.0]), "slot": np.array([sink], np.int64),
                  "lp": lp_all[r:r + 1], "finished": [], "step": 0, "active": True} for r in range(len(prompts))]
        free = total
        while any(s["active"] for s in state):
            feed = []
            for r, s in enumerate(state):
                if not s["active"]:
                    continue
                new_nodes, new_scores, new_src, new_done = self._select(s["nodes"], s["scores"], s["lp"], width, norm)
                nxt = np.array(new_nodes, np.int64)
                fire = trigger is not None and trigger(self, s["nodes"], s["step"], width, nxt)
                if getattr(trigger, "mode", None) == "auto" and trigger.last_trace:
                    stats[r].trace.append(trigger.last_trace[-1])  # the decision just made, for this request
                if fire:
                    tv = time.perf_counter()
                    stats[r].triggered_at = s["step"]
                    s["finished"] += self._verify(s["nodes"], s["scores"], s["slot"], s["lp"], lens[r], free,
                                                  (int(starts[r]), int(starts[r + 1])), norm, stats[r])
                    self._sync()
                    stats[r].verify_ms = (time.perf_counter() - tv) * 1e3
                    s["active"] = False
                    continue
                s["finished"] += new_done
                s["nodes"], s["scores"] = nxt, np.array(new_scores)
                s["parents"] = s["slot"][np.asarray(new_src, np.int64)]
                if not len(nxt) or _done(s["finished"], k, s["scores"], s["step"] + 1, norm):
                    s["active"] = False
                    continue
                feed.append(r)
            if not feed:
                break
            t1 = time.perf_counter()
            counts = [len(state[r]["nodes"]) for r in feed]
            t = sum(counts)
            slots = np.arange(free, free + t)
            toks = np.concatenate([tr.token[state[r]["nodes"]] for r in feed])
            pos = np.repeat([lens[r] + state[r]["step"] for r in feed], counts)
            lo = np.repeat([starts[r] for r in feed], counts)
            hi = np.repeat([starts[r + 1] for r in feed], counts)
            par = np.concatenate([state[r]["parents"] for r in feed])
            lp_feed = self._logprobs(self._feed(self._inputs(toks, pos, slots, lo, hi, par), free, stats[feed[0]]))
            i = 0
            for r, nb in zip(feed, counts):
                s = state[r]
                s["lp"] = lp_feed[i:i + nb]
                s["slot"] = slots[i:i + nb]
                s["step"] += 1
                i += nb
            free += t
            self._sync()
            step_ms = (time.perf_counter() - t1) * 1e3
            for r in feed:
                stats[r].decode_ms.append(step_ms)
        total_ms = (time.perf_counter() - t_start) * 1e3
        out = []
        for s, st in zip(state, stats):
            st.total_ms = total_ms
            s["finished"].sort(key=lambda c: -c.score)
            out.append((s["finished"][:k], st))
        return out

    def _select(self, beam_nodes, beam_scores, lp, width, norm):
        """One beam step's selection (the Hugging Face rule): every trie child of every beam, scored by beam score +
        log-prob; end markers ranked within the first `width` candidates finish, the best `width` others continue."""
        tr, dev = self.trie, self.device
        cnt = tr.child_count[beam_nodes].astype(np.int64)
        child = np.repeat(tr.child_start[beam_nodes].astype(np.int64), cnt) + _ranges(cnt)
        src = np.repeat(np.arange(len(beam_nodes)), cnt)
        tok = torch.as_tensor(tr.token[child].astype(np.int64), device=dev)
        edge = lp[torch.as_tensor(src, device=dev), tok].double().cpu().numpy()
        cand = beam_scores[src] + edge
        order = np.argsort(-cand, kind="stable")
        new_nodes, new_scores, new_src, new_done = [], [], [], []
        for rank, j in enumerate(order):
            c = int(child[j])
            if tr.entry[c] >= 0:
                if rank < width:
                    n = int(tr.depth[c])
                    new_done.append(Candidate(int(tr.entry[c]), float(norm(float(cand[j]), n)), float(cand[j]), n))
                continue
            new_nodes.append(c), new_scores.append(float(cand[j])), new_src.append(int(src[j]))
            if len(new_nodes) == width:
                break
        return new_nodes, new_scores, new_src, new_done

    def _verify(self, beam_nodes, beam_scores, beam_slot, lp, P, base, prompt_rows, norm, st) -> list[Candidate]:
        """Exact scores of every leaf below the live beams; `lp` holds the beams' next-token log-probs, `beam_slot`
        the cache slots of the beams' newest tokens. The prompt (P tokens) sits in cache rows `prompt_rows`."""
        tr, dev = self.trie, self.device
        # Edges out of the beam nodes come from the logits already computed.
        cnt = tr.child_count[beam_nodes].astype(np.int64)
        child0 = np.repeat(tr.child_start[beam_nodes].astype(np.int64), cnt) + _ranges(cnt)
        src = np.repeat(np.arange(len(beam_nodes)), cnt)
        tok = torch.as_tensor(tr.token[child0].astype(np.int64), device=dev)
        cum0 = beam_scores[src] + lp[torch.as_tensor(src, device=dev), tok].double().cpu().numpy()
        # Internal nodes strictly below each beam, in pre-order, tagged with their beam.
        packs = [tr.below(int(n)) for n in beam_nodes]
        nodes = np.concatenate(packs).astype(np.int64) if packs else np.zeros(0, np.int64)
        beam_of = np.repeat(np.arange(len(beam_nodes)), [len(p) for p in packs])
        beam_set = set(int(n) for n in beam_nodes)
        p0, p1 = prompt_rows
        e_child, e_logp = [], []
        chunk = max(self.chunk - tr.max_depth, 1)
        for s in range(0, len(nodes), chunk):
            run, rb = nodes[s:s + chunk], beam_of[s:s + chunk]
            # Ancestors of the run's first node that lie below its beam and before the run: re-fed for context.
            anc = []
            a = int(tr.parent[run[0]])
            while a not in beam_set:
                anc.append(a)
                a = int(tr.parent[a])
            anc = np.array(anc[::-1], np.int64)
            cn = np.concatenate([anc, run])
            cb = np.concatenate([np.full(len(anc), rb[0]), rb])
            t = len(cn)
            # Parent slot: inside this pass (base + its index) or, for children of a beam node, the beam's slot.
            srt = np.argsort(cn)
            par = tr.parent[cn].astype(np.int64)
            j = np.minimum(np.searchsorted(cn[srt], par), t - 1)
            lpar = np.where(cn[srt][j] == par, srt[j], -1)
            par_slot = np.where(lpar >= 0, base + lpar, beam_slot[cb])
            dep = tr.depth[cn].astype(np.int64)
            h = self._feed(self._inputs(tr.token[cn], P + dep - 1, np.arange(base, base + t), p0, p1, par_slot),
                           base, st)
            real = np.arange(len(anc), t)
            ch, lg = self._edge_logp(h, real, cn[real])
            e_child.append(ch), e_logp.append(lg)
            st.verified_nodes += t
            st.verify_passes += 1
        # Cumulative path scores, level by level (parents are shallower than children).
        all_child = np.concatenate([child0] + e_child)
        all_val = np.concatenate([cum0] + e_logp)  # cum for beam children, edge log-prob for the rest
        is_edge = np.concatenate([np.zeros(child0.size, bool)] + [np.ones(c.size, bool) for c in e_child])
        srt = np.argsort(all_child)
        sc = all_child[srt]
        cum = np.empty(all_child.size)
        cum[~is_edge] = all_val[~is_edge]
        dep = tr.depth[all_child]
        for d in np.unique(dep[is_edge]):
            rows = np.nonzero(is_edge & (dep == d))[0]
            pidx = srt[np.searchsorted(sc, tr.parent[all_child[rows]])]
            cum[rows] = cum[pidx] + all_val[rows]
        leaf = tr.entry[all_child] >= 0
        return [Candidate(int(tr.entry[c]), norm(float(v), int(tr.depth[c])), float(v), int(tr.depth[c]))
                for c, v in zip(all_child[leaf], cum[leaf])]


class ExactSearch(TreeSearch):
    """Exact top k by best-first branch and bound (the oracle for catalogs too large to score exhaustively).

    A path's log-probability only falls as it grows, so once the k-th best finished entry scores at least the
    best unexpanded node, no unexpanded node can reach the top k. Up to `batch` best frontier nodes are fed per
    forward pass (same tree cache and masks as `TreeSearch`); expanding a few extra nodes costs time, never
    exactness. Raises RuntimeError when more than `max_nodes` nodes would be needed. Sum of log-probs only.
    Timings: prefill as in `TreeSearch`; every best-first pass counts as verification (`verify_ms`,
    `verify_passes`, `verified_nodes` = expanded nodes), `triggered_at` = 0 and no decode steps.
    """

    def __init__(self, model, trie: TokenTrie, batch: int = 64, max_nodes: int = 20000, graphs: bool | None = None,
                 pad: bool | None = None):
        super().__init__(model, trie, chunk=batch, prefix_cache=True, graphs=graphs, pad=pad)
        self.batch, self.max_nodes = int(batch), int(max_nodes)

    def capacity(self, prompt_len: int, k: int) -> int:
        return prompt_len + self.max_nodes + self.batch

    def _warm_base(self, max_prompt: int, width: int) -> int:
        return max_prompt + 4 * self.batch  # typical expansions; deeper searches capture the rest on first use

    @torch.inference_mode()
    def run(self, prompt_ids: list[int], k: int, trigger=None, length_penalty: float = 0.0,
            stats: SearchStats | None = None, beam: int | None = None) -> tuple[list[Candidate], SearchStats]:
        import heapq

        if length_penalty:
            raise ValueError("exact search ranks by the sum of log-probabilities only")
        tr, dev = self.trie, self.device
        st = stats or SearchStats()
        t_start = time.perf_counter()
        P = len(prompt_ids)
        cache = self._get_cache(self.capacity(P, k))
        sink = self._runner.sink
        lp = self._prefill(prompt_ids, cache, st)
        self._sync()
        t_pre = time.perf_counter()
        st.prefill_ms = (t_pre - t_start) * 1e3
        st.triggered_at = 0
        best: list[tuple[float, int, int]] = []  # min-heap of the k best finished (score, entry, leaf)
        frontier: list[tuple[float, int, int]] = []  # (-score, node, cache slot of its parent)

        def expand(rows_lp, nodes, scores, slots):
            cnt = tr.child_count[nodes].astype(np.int64)
            child = np.repeat(tr.child_start[nodes].astype(np.int64), cnt) + _ranges(cnt)
            src = np.repeat(np.arange(len(nodes)), cnt)
            tok = torch.as_tensor(tr.token[child].astype(np.int64), device=dev)
            val = np.asarray(scores)[src] + rows_lp[torch.as_tensor(src, device=dev), tok].double().cpu().numpy()
            for c, v, s in zip(child.tolist(), val.tolist(), src.tolist()):
                if tr.entry[c] >= 0:
                    if len(best) < k:
                        heapq.heappush(best, (v, int(tr.entry[c]), c))
                    elif v > best[0][0]:
                        heapq.heapreplace(best, (v, int(tr.entry[c]), c))
                elif len(best) < k or v > best[0][0]:
                    heapq.heappush(frontier, (-v, c, int(slots[s])))

        expand(lp, np.array([0]), [0.0], [sink])
        free = P
        while frontier and (len(best) < k or -frontier[0][0] > best[0][0]):
            pop = []
            while frontier and len(pop) < self.batch and (len(best) < k or -frontier[0][0] > best[0][0]):
                pop.append(heapq.heappop(frontier))
            nb = len(pop)
            if free + nb > P + self.max_nodes:
                raise RuntimeError(f"exact search needs more than {self.max_nodes} nodes")
            nodes = np.array([n for _, n, _ in pop], np.int64)
            slots = np.arange(free, free + nb)
            arr = self._inputs(tr.token[nodes], P + tr.depth[nodes].astype(np.int64) - 1, slots, 0, P,
                               [p for _, _, p in pop])
            h = self._feed(arr, free, st)
            free += nb
            st.expanded_nodes += nb
            st.verified_nodes += nb
            st.verify_passes += 1
            expand(self._logprobs(h), nodes, [-s for s, _, _ in pop], slots)
        self._sync()
        t_end = time.perf_counter()
        st.verify_ms = (t_end - t_pre) * 1e3
        st.total_ms = (t_end - t_start) * 1e3
        out = sorted(best, key=lambda x: -x[0])
        return [Candidate(e, v, v, int(tr.depth[leaf])) for v, e, leaf in out], st


def _width(k: int, beam: int | None) -> int:
    if beam is None:
        return k
    if not isinstance(beam, (int, np.integer)) or beam < k:
        raise ValueError(f"beam width must be an integer >= k ({k}), got {beam!r}")
    return int(beam)


def _ranges(cnt: np.ndarray) -> np.ndarray:
    """[0..c0), [0..c1), ... concatenated."""
    total = int(cnt.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    starts = np.repeat(np.cumsum(cnt) - cnt, cnt)
    return np.arange(total) - starts


def _done(finished, k, beam_scores, depth, norm) -> bool:
    if len(finished) < k:
        return False
    kth = sorted((c.score for c in finished), reverse=True)[k - 1]
    return kth >= norm(float(beam_scores.max()), depth)
