"""Trie-constrained beam search with one-pass tree-attention verification, on `egt.transformer.Transformer`.

Contract:
- `TreeSearch(model, trie).run(prompt_ids, k, ...)` returns up to k `Candidate`s (entry index, score, sum of
  log-probabilities, tokens), best first. Every candidate is a trie leaf, i.e. a catalog entry. The sequence
  score is the sum of the model's full-vocabulary log-probabilities of the entry's tokens and its end marker
  (the same quantity Hugging Face beam search accumulates); `length_penalty=a` ranks by sum / len**a.
- The KV cache is ONE row laid out as a tree: the prompt at slots [0, P), then every token the search feeds gets
  its own slot; a boolean mask lets each token see the prompt plus its own ancestors only, and RoPE positions are
  P + depth - 1. Beam steps therefore never copy or reorder the cache, and verification is the same operation
  with many nodes at once.
- Beam step: the live beams' newest tokens go through one forward pass; candidates are the trie children of each
  beam scored by beam score + log-prob; end markers ranked within the first k candidates finish, the best k
  others continue (the Hugging Face rule). Search stops when k finished hypotheses are at least as good as the
  best running one, or no beam is left.
- Verification (`_verify`): all internal trie nodes strictly below the live beams are packed into forward passes
  of at most `chunk` tokens (pre-order runs; a run that starts inside a subtree re-feeds the few ancestors it
  needs), each node attending to the prompt, its beam's path and its ancestors in the pack. Every remaining
  root-to-leaf path gets its exact log-probability; with the remaining leaves and the hypotheses finished so far
  the top k are selected. Fired at step 0 this is the exact top k of the whole catalog.
- A `trigger(search, beam_nodes, step, k, next_nodes)` callable decides at every step, after the step's beam
  selection is known but before its forward pass (see `egt.verify.trigger`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .trie import TokenTrie


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
    trace: list = field(default_factory=list)  # the trigger's decisions (run_batch; `run` leaves them on the trigger)

    @property
    def steps(self) -> int:
        return len(self.decode_ms)


class TreeSearch:
    def __init__(self, model, trie: TokenTrie, chunk: int = 1024, prefix_cache: bool = True):
        self.model, self.trie, self.chunk = model, trie, int(chunk)
        self.device = model.device
        self.prefix_cache = prefix_cache
        self._cache = None
        self._cached_prompt: list[int] = []  # the prompt whose keys/values sit in cache rows [0, len)
        self._lm_block = 256

    # ---- cache ---------------------------------------------------------------------------------------------
    def _get_cache(self, need: int):
        # Reused between requests: zero-initialised once, so stale rows are finite and masked out (a NaN in a
        # masked row would still poison SDPA's weighted sum).
        if self._cache is None or self._cache.max_len < need:
            self._cache = None  # free the old one first
            self._cache = self.model.setup_cache(1, max(need, 256))
            self._cached_prompt = []
        return self._cache

    def _prefill(self, prompt_ids: list[int], cache, st) -> torch.Tensor:
        """Run the prompt (only the part after the prefix it shares with the previous prompt, whose rows are still
        in the cache: searches write only rows >= the prompt length) and return next-token log-probs [1, V]."""
        P, dev = len(prompt_ids), self.device
        start = 0
        if self.prefix_cache:
            old = self._cached_prompt
            n = min(len(old), P - 1)  # at least the last token is run, for its logits
            while start < n and old[start] == prompt_ids[start]:
                start += 1
        self._cached_prompt = []  # invalid while rows are being written
        pos = torch.arange(start, P, device=dev)
        h = self.model(torch.tensor([prompt_ids[start:]], device=dev), pos.view(1, -1), pos, cache, mask=None,
                       kv_len=P, hidden_only=True)[0]
        self._cached_prompt = list(prompt_ids)
        st.prefill_tokens = P - start
        return torch.log_softmax(self.model.lm_head(h[-1:]).float(), -1)

    def capacity(self, prompt_len: int, k: int) -> int:
        return prompt_len + k * (self.trie.max_depth + 1) + self.chunk + self.trie.max_depth + 8

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ---- model calls ---------------------------------------------------------------------------------------
    def _forward_hidden(self, tokens, pos, base, mask, cache):
        t = len(tokens)
        dev = self.device
        toks = torch.as_tensor(np.asarray(tokens, dtype=np.int64), device=dev).view(1, t)
        p = torch.as_tensor(np.asarray(pos, dtype=np.int64), device=dev).view(1, t)
        slots = torch.arange(base, base + t, device=dev)
        m = torch.from_numpy(mask).to(dev).view(1, 1, t, base + t)
        return self.model(toks, p, slots, cache, mask=m, kv_len=base + t, hidden_only=True)[0]

    def _logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, hidden.shape[0], self._lm_block):
            out.append(torch.log_softmax(self.model.lm_head(hidden[i:i + self._lm_block]).float(), -1))
        return torch.cat(out) if len(out) > 1 else out[0]

    def _edge_logp(self, hidden: torch.Tensor, rows: np.ndarray, nodes: np.ndarray):
        """Log-probs of every child token of trie `nodes`, whose hidden states are `hidden[rows]`."""
        tr = self.trie
        cnt = tr.child_count[nodes].astype(np.int64)
        child = np.repeat(tr.child_start[nodes].astype(np.int64), cnt) + _ranges(cnt)
        row_of_edge = np.repeat(np.arange(len(nodes)), cnt)
        out = np.empty(child.size, np.float64)
        tok = torch.as_tensor(tr.token[child].astype(np.int64), device=self.device)
        roe = torch.as_tensor(row_of_edge, device=self.device)
        rows_t = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.device)
        # lm_head in blocks of rows: [rows, vocab] at once would not fit for thousands of nodes.
        for i in range(0, len(nodes), self._lm_block):
            sel = (row_of_edge >= i) & (row_of_edge < i + self._lm_block)
            if not sel.any():
                continue
            lp = torch.log_softmax(self.model.lm_head(hidden[rows_t[i:i + self._lm_block]]).float(), -1)
            e = np.nonzero(sel)[0]
            out[e] = lp[roe[e] - i, tok[e]].double().cpu().numpy()
        return child, out

    # ---- search ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, prompt_ids: list[int], k: int, trigger=None, length_penalty: float = 0.0,
            stats: SearchStats | None = None) -> tuple[list[Candidate], SearchStats]:
        if k < 1:
            raise ValueError("k must be >= 1")
        tr, dev = self.trie, self.device
        st = stats or SearchStats()
        t_start = time.perf_counter()
        P = len(prompt_ids)
        cache = self._get_cache(self.capacity(P, k))
        lp = self._prefill(prompt_ids, cache, st)  # lm_head only on the last position
        self._sync()
        st.prefill_ms = (time.perf_counter() - t_start) * 1e3

        def norm(logp, n):
            return logp / (n ** length_penalty) if length_penalty else logp

        beam_nodes = np.array([0], np.int64)
        beam_scores = np.array([0.0])
        beam_paths: list[list[int]] = [[]]  # cache slots of each beam's answer tokens fed so far
        finished: list[Candidate] = []
        free = P
        step = 0
        while len(beam_nodes):
            t0 = time.perf_counter()
            new_nodes, new_scores, new_src, new_done = self._select(beam_nodes, beam_scores, lp, k, norm)
            next_nodes = np.array(new_nodes, np.int64)
            if trigger is not None and trigger(self, beam_nodes, step, k, next_nodes):
                st.triggered_at = step
                finished += self._verify(beam_nodes, beam_scores, beam_paths, lp, P, free, cache, norm, st)
                self._sync()
                st.verify_ms = (time.perf_counter() - t0) * 1e3
                break
            finished += new_done
            beam_nodes = next_nodes
            beam_scores = np.array(new_scores)
            beam_paths = [beam_paths[s] for s in new_src]
            depth = step + 1
            if not len(beam_nodes) or _done(finished, k, beam_scores, depth, norm):
                break  # the last selection needs no forward pass: not counted as a decode step
            # Feed the new beam tokens: one slot each, attending to the prompt and their own path.
            nb = len(beam_nodes)
            mask = np.zeros((nb, free + nb), bool)
            mask[:, :P] = True
            for b, path in enumerate(beam_paths):
                mask[b, path] = True
                mask[b, free + b] = True
            h = self._forward_hidden(tr.token[beam_nodes], np.full(nb, P + depth - 1), free, mask, cache)
            lp = self._logprobs(h)
            beam_paths = [path + [free + b] for b, path in enumerate(beam_paths)]
            free += nb
            step += 1
            self._sync()
            st.decode_ms.append((time.perf_counter() - t0) * 1e3)
        finished.sort(key=lambda c: -c.score)
        st.total_ms = (time.perf_counter() - t_start) * 1e3
        return finished[:k], st

    @torch.inference_mode()
    def run_batch(self, prompts: list[list[int]], k: int, trigger=None, length_penalty: float = 0.0
                  ) -> list[tuple[list[Candidate], SearchStats]]:
        """Several requests in lockstep, all in the same single cache row: request r's prompt sits in its own rows
        (positions 0..P_r-1, block-diagonal causal mask), its beams see only its prompt and their own paths, and one
        forward pass per step feeds the new beams of every request still running. A request whose trigger fires
        is verified on its own (its passes reuse the rows after the fed tokens); the others go on. Each request's
        candidates equal `run`'s. Timings are shared: prefill, steps and total are those of the whole batch."""
        if k < 1:
            raise ValueError("k must be >= 1")
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        tr, dev = self.trie, self.device
        t_start = time.perf_counter()
        lens = [len(p) for p in prompts]
        starts = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        total = int(starts[-1])
        cache = self._get_cache(total + len(prompts) * k * (tr.max_depth + 1) + self.chunk + tr.max_depth + 8)
        self._cached_prompt = []  # rows from 0 are rewritten
        mask = np.zeros((total, total), bool)
        for r, n in enumerate(lens):
            a = starts[r]
            mask[a:a + n, a:a + n] = np.tril(np.ones((n, n), bool))
        pos = np.concatenate([np.arange(n) for n in lens])
        h = self._forward_hidden(np.concatenate(prompts), pos, 0, mask, cache)
        lp_all = self._logprobs(h[torch.as_tensor(starts[1:] - 1, device=dev)])
        self._sync()
        prefill_ms = (time.perf_counter() - t_start) * 1e3

        def norm(logp, n):
            return logp / (n ** length_penalty) if length_penalty else logp

        stats = [SearchStats(prefill_ms=prefill_ms, prefill_tokens=n) for n in lens]
        state = [{"nodes": np.array([0], np.int64), "scores": np.array([0.0]), "paths": [[]], "lp": lp_all[r:r + 1],
                  "finished": [], "step": 0, "active": True} for r in range(len(prompts))]
        free = total
        while any(s["active"] for s in state):
            t0 = time.perf_counter()
            feed = []
            for r, s in enumerate(state):
                if not s["active"]:
                    continue
                new_nodes, new_scores, new_src, new_done = self._select(s["nodes"], s["scores"], s["lp"], k, norm)
                nxt = np.array(new_nodes, np.int64)
                fire = trigger is not None and trigger(self, s["nodes"], s["step"], k, nxt)
                if getattr(trigger, "mode", None) == "auto" and trigger.last_trace:
                    stats[r].trace.append(trigger.last_trace[-1])  # the decision just made, for this request
                if fire:
                    tv = time.perf_counter()
                    stats[r].triggered_at = s["step"]
                    s["finished"] += self._verify(s["nodes"], s["scores"], s["paths"], s["lp"], lens[r], free, cache,
                                                  norm, stats[r], prompt_rows=(int(starts[r]), int(starts[r + 1])))
                    self._sync()
                    stats[r].verify_ms = (time.perf_counter() - tv) * 1e3
                    s["active"] = False
                    continue
                s["finished"] += new_done
                s["nodes"], s["scores"] = nxt, np.array(new_scores)
                s["paths"] = [s["paths"][i] for i in new_src]
                if not len(nxt) or _done(s["finished"], k, s["scores"], s["step"] + 1, norm):
                    s["active"] = False
                    continue
                feed.append(r)
            if not feed:
                break
            t1 = time.perf_counter()
            rows = [(r, b) for r in feed for b in range(len(state[r]["nodes"]))]
            t = len(rows)
            mask = np.zeros((t, free + t), bool)
            toks, pos = np.empty(t, np.int64), np.empty(t, np.int64)
            for i, (r, b) in enumerate(rows):
                s = state[r]
                mask[i, starts[r]:starts[r + 1]] = True
                mask[i, s["paths"][b]] = True
                mask[i, free + i] = True
                toks[i], pos[i] = tr.token[s["nodes"][b]], lens[r] + s["step"]
            lp_feed = self._logprobs(self._forward_hidden(toks, pos, free, mask, cache))
            i = 0
            for r in feed:
                s = state[r]
                nb = len(s["nodes"])
                s["lp"] = lp_feed[i:i + nb]
                s["paths"] = [path + [free + i + b] for b, path in enumerate(s["paths"])]
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

    def _select(self, beam_nodes, beam_scores, lp, k, norm):
        """One beam step's selection (the Hugging Face rule): every trie child of every beam, scored by beam score +
        log-prob; end markers ranked within the first k finish, the best k others continue."""
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
                if rank < k:
                    n = int(tr.depth[c])
                    new_done.append(Candidate(int(tr.entry[c]), float(norm(float(cand[j]), n)), float(cand[j]), n))
                continue
            new_nodes.append(c), new_scores.append(float(cand[j])), new_src.append(int(src[j]))
            if len(new_nodes) == k:
                break
        return new_nodes, new_scores, new_src, new_done

    def _verify(self, beam_nodes, beam_scores, beam_paths, lp, P, base, cache, norm, st,
                prompt_rows: tuple[int, int] | None = None) -> list[Candidate]:
        """Exact scores of every leaf below the live beams; `lp` holds the beams' next-token log-probs. The prompt
        (P tokens) sits in cache rows `prompt_rows` (default [0, P))."""
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
        beam_mask = np.zeros((len(beam_nodes), base), bool)
        p0, p1 = prompt_rows or (0, P)
        beam_mask[:, p0:p1] = True
        for b, path in enumerate(beam_paths):
            beam_mask[b, path] = True
        beam_set = set(int(n) for n in beam_nodes)
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
            # Local parent index inside the chunk (-1: the parent is the beam node, already in the cache).
            srt = np.argsort(cn)
            par = tr.parent[cn].astype(np.int64)
            j = np.searchsorted(cn[srt], par)
            j = np.minimum(j, t - 1)
            lpar = np.where(cn[srt][j] == par, srt[j], -1)
            within = np.zeros((t, t), bool)
            dep = tr.depth[cn]
            for d in np.unique(dep):  # parents come at smaller depth, so fill level by level
                rows = np.nonzero(dep == d)[0]
                has = lpar[rows] >= 0
                within[rows[has]] = within[lpar[rows[has]]]
                within[rows, rows] = True
            mask = np.concatenate([beam_mask[cb], within], 1)
            h = self._forward_hidden(tr.token[cn], P + dep.astype(np.int64) - 1, base, mask, cache)
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
    forward pass (same tree cache and mask as `TreeSearch`); expanding a few extra nodes costs time, never
    exactness. Raises RuntimeError when more than `max_nodes` nodes would be needed. Sum of log-probs only.
    """

    def __init__(self, model, trie: TokenTrie, batch: int = 64, max_nodes: int = 20000):
        super().__init__(model, trie, chunk=batch, prefix_cache=True)
        self.batch, self.max_nodes = int(batch), int(max_nodes)

    @torch.inference_mode()
    def run(self, prompt_ids: list[int], k: int, trigger=None, length_penalty: float = 0.0,
            stats: SearchStats | None = None) -> tuple[list[Candidate], SearchStats]:
        import heapq

        if length_penalty:
            raise ValueError("exact search ranks by the sum of log-probabilities only")
        tr, dev = self.trie, self.device
        st = stats or SearchStats()
        t_start = time.perf_counter()
        P = len(prompt_ids)
        cache = self._get_cache(P + self.max_nodes + self.batch)
        lp = self._prefill(prompt_ids, cache, st)
        best: list[tuple[float, int, int]] = []  # min-heap of the k best finished (score, entry, leaf)
        frontier: list[tuple[float, int, int]] = []  # (-score, node, index into paths)
        paths: list[list[int]] = [[]]

        def expand(rows_lp, nodes, scores, path_ids):
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
                    heapq.heappush(frontier, (-v, c, path_ids[s]))

        expand(lp, np.array([0]), [0.0], [0])
        free = P
        while frontier and (len(best) < k or -frontier[0][0] > best[0][0]):
            pop = []
            while frontier and len(pop) < self.batch and (len(best) < k or -frontier[0][0] > best[0][0]):
                pop.append(heapq.heappop(frontier))
            nb = len(pop)
            if free + nb > P + self.max_nodes:
                raise RuntimeError(f"exact search needs more than {self.max_nodes} nodes")
            nodes = np.array([n for _, n, _ in pop], np.int64)
            mask = np.zeros((nb, free + nb), bool)
            mask[:, :P] = True
            new_ids = []
            for b, (_, _, pid) in enumerate(pop):
                mask[b, paths[pid]] = True
                mask[b, free + b] = True
                paths.append(paths[pid] + [free + b])
                new_ids.append(len(paths) - 1)
            h = self._forward_hidden(tr.token[nodes], P + tr.depth[nodes].astype(np.int64) - 1, free, mask, cache)
            free += nb
            st.expanded_nodes += nb
            expand(self._logprobs(h), nodes, [-s for s, _, _ in pop], new_ids)
        self._sync()
        st.total_ms = (time.perf_counter() - t_start) * 1e3
        out = sorted(best, key=lambda x: -x[0])
        return [Candidate(e, v, v, int(tr.depth[leaf])) for v, e, leaf in out], st


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
