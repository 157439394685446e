"""Trie-constrained beam search and tree-attention verification on a tiny random model and random tries.

References are plain causal forward passes, one candidate at a time, in float64 log-softmax."""
import numpy as np
import pytest
import torch

from egt.models import ModelShape, build_model
from egt.verify import CostModel, TokenTrie, TreeSearch, Trigger

pytestmark = pytest.mark.usefixtures("one_thread")

END = 2
VOCAB = 40


def tiny_model(seed=0):
    shape = ModelShape("tiny", hidden=64, intermediate=96, layers=2, heads=4, kv_heads=2, head_dim=16, vocab=VOCAB)
    torch.manual_seed(seed)
    m = build_model(shape)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn(p.shape) if name.endswith("norm.weight") else
                    torch.randn(p.shape) * 2.0 / p.shape[-1] ** 0.5)
    return m.float().eval()


def random_seqs(rng, n, max_len=5):
    out = set()
    while len(out) < n:
        out.add(tuple(int(x) for x in rng.integers(3, 12, size=rng.integers(1, max_len + 1))))
    return [list(s) for s in sorted(out)]


@torch.inference_mode()
def plain_logp(model, prompt, seq):
    """Sum of log-probs of seq + END after prompt: one ordinary causal forward pass, nothing shared."""
    full = prompt + seq + [END]
    t = len(full)
    cache = model.setup_cache(1, t)
    pos = torch.arange(t)
    lp = torch.log_softmax(model(torch.tensor([full]), pos.view(1, -1), pos, cache).double(), -1)[0]
    return sum(float(lp[len(prompt) - 1 + j, full[len(prompt) + j]]) for j in range(len(seq) + 1))


class FireAt:
    def __init__(self, step):
        self.step = step

    def __call__(self, search, beam_nodes, step, k, next_nodes=None):
        return step >= self.step


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_verify_at_step0_scores_every_entry_exactly(model, seed):
    rng = np.random.default_rng(seed)
    seqs = random_seqs(rng, 30)
    trie = TokenTrie.from_sequences(seqs, END)
    prompt = [int(x) for x in rng.integers(3, VOCAB, size=7)]
    cands, st = TreeSearch(model, trie).run(prompt, k=len(seqs), trigger=Trigger("always"))
    assert st.triggered_at == 0 and st.steps == 0 and st.verify_passes == 1
    assert len(cands) == len(seqs) and len({c.entry for c in cands}) == len(seqs)
    ref = [plain_logp(model, prompt, s) for s in seqs]
    for c in cands:
        assert c.logp == pytest.approx(ref[c.entry], abs=2e-4)
        assert c.tokens == len(seqs[c.entry]) + 1
    assert [c.entry for c in cands[:5]] == list(np.argsort(ref)[::-1][:5])  # exact top k = oracle


@pytest.mark.parametrize("chunk", [3, 7, 1000])
def test_chunked_verification_matches(model, chunk):
    rng = np.random.default_rng(5)
    seqs = random_seqs(rng, 40, max_len=6)
    trie = TokenTrie.from_sequences(seqs, END)
    prompt = [5, 9, 11, 3]
    ref = {c.entry: c.logp for c in TreeSearch(model, trie, chunk=1000).run(prompt, 40, Trigger("always"))[0]}
    got, st = TreeSearch(model, trie, chunk=chunk).run(prompt, 40, Trigger("always"))
    assert st.verify_passes >= (2 if chunk < 10 else 1)
    assert {c.entry for c in got} == set(ref)
    for c in got:
        assert c.logp == pytest.approx(ref[c.entry], abs=1e-4)


def reference_beam(model, prompt, trie, seqs, k, width=None):
    """Constrained beam search written the slow way: every hypothesis re-run from scratch (`width` beams, k back)."""
    width = width or k
    by_path = {tuple(s + [END]): i for i, s in enumerate(seqs)}
    beams, finished = [([], 0.0)], []
    while beams:
        cands = []
        for toks, score in beams:
            full = prompt + toks
            cache = model.setup_cache(1, len(full))
            pos = torch.arange(len(full))
            with torch.inference_mode():
                lp = torch.log_softmax(model(torch.tensor([full]), pos.view(1, -1), pos, cache)[0, -1].double(), -1)
            for t in trie.allowed(toks):
                cands.append((score + float(lp[t]), toks + [t]))
        cands.sort(key=lambda c: -c[0])
        beams = []
        for rank, (s, toks) in enumerate(cands):
            if toks[-1] == END:
                if rank < width:
                    finished.append((s, by_path[tuple(toks)]))
                continue
            beams.append((toks, s))
            if len(beams) == width:
                break
        if len(finished) >= k and sorted(f[0] for f in finished)[-k] >= max((b[1] for b in beams), default=-1e9):
            break
    finished.sort(key=lambda f: -f[0])
    return finished[:k]


@pytest.mark.parametrize("seed,k", [(0, 3), (1, 5), (3, 2)])
def test_beam_search_matches_reference(model, seed, k):
    rng = np.random.default_rng(seed)
    seqs = random_seqs(rng, 25)
    trie = TokenTrie.from_sequences(seqs, END)
    prompt = [int(x) for x in rng.integers(3, VOCAB, size=6)]
    got, st = TreeSearch(model, trie).run(prompt, k, trigger=Trigger("never"))
    ref = reference_beam(model, prompt, trie, seqs, k)
    assert st.triggered_at is None and st.steps >= 1
    assert [c.entry for c in got] == [e for _, e in ref]
    assert [c.logp for c in got] == pytest.approx([s for s, _ in ref], abs=2e-4)


@pytest.mark.parametrize("fire", [1, 2, 3])
def test_late_trigger_scores_are_exact_and_superset_of_beam(model, fire):
    rng = np.random.default_rng(7)
    seqs = random_seqs(rng, 40, max_len=6)
    trie = TokenTrie.from_sequences(seqs, END)
    prompt = [4, 8, 15, 16, 23]
    k = 4
    got, st = TreeSearch(model, trie).run(prompt, k, trigger=FireAt(fire))
    ref = [plain_logp(model, prompt, s) for s in seqs]
    for c in got:
        assert c.logp == pytest.approx(ref[c.entry], abs=2e-4)
    beam, _ = TreeSearch(model, trie).run(prompt, k, trigger=Trigger("never"))
    # verification explores everything beam search would still reach, so it is never worse
    assert sum(c.logp for c in got) >= sum(c.logp for c in beam) - 1e-6
    oracle = sorted(ref, reverse=True)[:k]
    assert sum(c.logp for c in got) <= sum(oracle) + 1e-6


def test_length_penalty(model):
    rng = np.random.default_rng(11)
    seqs = random_seqs(rng, 20)
    trie = TokenTrie.from_sequences(seqs, END)
    got, _ = TreeSearch(model, trie).run([3, 4, 5], 20, trigger=Trigger("always"), length_penalty=1.0)
    for c in got:
        assert c.score == pytest.approx(c.logp / c.tokens)
    assert [c.score for c in got] == sorted((c.score for c in got), reverse=True)


def test_cache_reuse_between_requests(model):
    seqs = random_seqs(np.random.default_rng(2), 15)
    trie = TokenTrie.from_sequences(seqs, END)
    s = TreeSearch(model, trie)
    a, _ = s.run([7, 8, 9, 10, 11, 12], 3, Trigger("never"))
    s.run([3] * 20, 5, Trigger("always"))
    b, _ = s.run([7, 8, 9, 10, 11, 12], 3, Trigger("never"))
    assert [(c.entry, round(c.logp, 5)) for c in a] == [(c.entry, round(c.logp, 5)) for c in b]


def test_trigger_cost_model(tmp_path, model):
    cm = CostModel([1, 4, 16, 64], [10.0, 11.0, 15.0, 40.0], chunk=64)
    assert cm.forward_ms(2) == pytest.approx(10 + 1 / 3) and cm.verify_ms(130) == pytest.approx(2 * 40 + 10 + 1 / 3)
    assert cm.forward_ms(128) > 40
    noisy = CostModel([1, 4, 16, 64], [10.0, 90.0, 15.0, 40.0], chunk=64)  # a load spike at T=4
    assert noisy.ms.tolist() == [10.0, 15.0, 15.0, 40.0]
    seqs = random_seqs(np.random.default_rng(3), 30)
    trie = TokenTrie.from_sequences(seqs, END)
    trig = Trigger("auto", cm)
    cands, st = TreeSearch(model, trie).run([3, 4], 3, trigger=trig)
    for rec in trig.last_trace:  # every decision follows the stated inequalities
        v = cm.verify_ms(rec["remaining_nodes"])
        assert rec["finish_ms_est"] == pytest.approx((rec["height"] - 1) * cm.forward_ms(3), abs=1e-3)
        assert rec["fire"] == (v <= rec["finish_ms_est"] + 1e-3 and v <= rec["one_more_ms_est"] + 1e-3)
        assert rec["next_nodes"] <= rec["remaining_nodes"]
    assert st.triggered_at == (trig.last_trace[-1]["step"] if trig.last_trace[-1]["fire"] else None)
    with pytest.raises(ValueError, match="trigger must be one of"):
        Trigger("sometimes")
    cal = CostModel.cached(model, chunk=32, path=tmp_path / "costs.json")
    assert cal.sizes[-1] == 32 and (cal.ms > 0).all() and (tmp_path / "costs.json").is_file()
    again = CostModel.cached(model, chunk=32, path=tmp_path / "costs.json")
    assert again.ms.tolist() == cal.ms.tolist()  # read back, not re-measured


@pytest.mark.parametrize("seed,k,batch", [(0, 5, 1), (1, 3, 4), (4, 8, 64)])
def test_exact_best_first_equals_exhaustive(model, seed, k, batch):
    from egt.verify import ExactSearch

    rng = np.random.default_rng(seed)
    seqs = random_seqs(rng, 40, max_len=6)
    trie = TokenTrie.from_sequences(seqs, END)
    prompt = [int(x) for x in rng.integers(3, VOCAB, size=5)]
    full, _ = TreeSearch(model, trie).run(prompt, k, Trigger("always"))
    got, st = ExactSearch(model, trie, batch=batch).run(prompt, k)
    assert [c.entry for c in got] == [c.entry for c in full]
    assert [c.logp for c in got] == pytest.approx([c.logp for c in full], abs=1e-4)
    assert [c.tokens for c in got] == [c.tokens for c in full]
    assert st.expanded_nodes <= len(trie)


def test_prefix_cache_reuses_prompt_rows(model):
    seqs = random_seqs(np.random.default_rng(9), 20)
    trie = TokenTrie.from_sequences(seqs, END)
    cold = TreeSearch(model, trie, prefix_cache=False)
    warm = TreeSearch(model, trie)
    for prompt in ([3, 4, 5, 6, 7, 8], [3, 4, 5, 6, 9, 10, 11], [3, 4, 5, 6, 9, 10, 11], [20, 21]):
        a, sa = cold.run(prompt, 4, Trigger("never"))
        b, sb = warm.run(prompt, 4, Trigger("never"))
        assert [c.entry for c in a] == [c.entry for c in b]
        assert [c.logp for c in a] == pytest.approx([c.logp for c in b], abs=1e-5)
        assert sa.prefill_tokens == len(prompt)
    assert sb.prefill_tokens == 2


@pytest.mark.parametrize("mode,k", [("never", 3), ("always", 4), ("fire1", 2), ("auto", 3)])
def test_run_batch_equals_one_by_one(model, mode, k):
    rng = np.random.default_rng(13)
    seqs = random_seqs(rng, 35, max_len=6)
    trie = TokenTrie.from_sequences(seqs, END)
    prompts = [[int(x) for x in rng.integers(3, VOCAB, size=n)] for n in (3, 8, 5, 11)]
    cm = CostModel([1, 4, 16, 64], [10.0, 11.0, 15.0, 40.0], chunk=64)

    def trig():
        return FireAt(1) if mode == "fire1" else Trigger(mode, cm if mode == "auto" else None)

    batch = TreeSearch(model, trie, chunk=16).run_batch(prompts, k, trig())
    for p, (got, st) in zip(prompts, batch):
        ref, rst = TreeSearch(model, trie, chunk=16).run(p, k, trig())
        assert [c.entry for c in got] == [c.entry for c in ref]
        assert [c.logp for c in got] == pytest.approx([c.logp for c in ref], abs=1e-4)
        assert st.triggered_at == rst.triggered_at and st.steps == rst.steps


def test_run_batch_traces_per_request(model):
    seqs = random_seqs(np.random.default_rng(21), 30, max_len=6)
    trie = TokenTrie.from_sequences(seqs, END)
    cm = CostModel([1, 4, 16, 64], [10.0, 11.0, 15.0, 40.0], chunk=64)
    prompts = [[3, 4, 5], [6, 7, 8, 9]]
    res = TreeSearch(model, trie).run_batch(prompts, 3, Trigger("auto", cm))
    for p, (_, st) in zip(prompts, res):
        trig = Trigger("auto", cm)
        TreeSearch(model, trie).run(p, 3, trig)
        assert st.trace == trig.last_trace


@pytest.mark.parametrize("seed,k,width", [(0, 3, 6), (2, 2, 5)])
def test_wider_beam_matches_reference(model, seed, k, width):
    rng = np.random.default_rng(seed)
    seqs = random_seqs(rng, 30)
    trie = TokenTrie.from_sequences(seqs, END)
    prompt = [int(x) for x in rng.integers(3, VOCAB, size=6)]
    got, _ = TreeSearch(model, trie).run(prompt, k, trigger=Trigger("never"), beam=width)
    ref = reference_beam(model, prompt, trie, seqs, k, width)
    assert [c.entry for c in got] == [e for _, e in ref]
    assert [c.logp for c in got] == pytest.approx([s for s, _ in ref], abs=2e-4)
    narrow, _ = TreeSearch(model, trie).run(prompt, k, trigger=Trigger("never"), beam=k)
    default, _ = TreeSearch(model, trie).run(prompt, k, trigger=Trigger("never"))
    assert [c.entry for c in narrow] == [c.entry for c in default]
    with pytest.raises(ValueError, match="beam width"):
        TreeSearch(model, trie).run(prompt, k, beam=k - 1)


def test_padded_buckets_match_unpadded(model):
    """The CUDA-graph path pads token counts to buckets and the attended length to a multiple of 256; run that
    padding eagerly on the CPU: same candidates and scores as the unpadded path, over several requests."""
    from egt.verify import ExactSearch

    rng = np.random.default_rng(17)
    seqs = random_seqs(rng, 50, max_len=6)
    trie = TokenTrie.from_sequences(seqs, END)
    plain, padded = TreeSearch(model, trie, chunk=24), TreeSearch(model, trie, chunk=24, pad=True)
    for prompt, k, trig in (([3, 4, 5, 6], 4, FireAt(1)), ([3, 4, 5, 7, 8], 3, Trigger("never")),
                            ([9, 10], 6, Trigger("always"))):
        a, sa = plain.run(prompt, k, trig)
        b, sb = padded.run(prompt, k, trig)
        assert [c.entry for c in a] == [c.entry for c in b]
        assert [c.logp for c in a] == pytest.approx([c.logp for c in b], abs=1e-4)
        assert sa.verify_passes == sb.verify_passes
    assert padded._runner.pad and padded._cache.max_len >= 2048
    assert padded.warmup(max_prompt=16, width=6) == 0  # runs every bucket eagerly on a CPU: nothing to capture
    a, _ = plain.run([3, 4, 5, 6], 4, FireAt(1))
    b, sb = padded.run([3, 4, 5, 6], 4, FireAt(1))
    assert [c.logp for c in a] == pytest.approx([c.logp for c in b], abs=1e-4) and sb.graph_captures == 0
    prompts = [[3, 4, 5], [6, 7, 8, 9, 10]]
    for (a, _), (b, _) in zip(plain.run_batch(prompts, 3, FireAt(2)), padded.run_batch(prompts, 3, FireAt(2))):
        assert [c.entry for c in a] == [c.entry for c in b]
    ea, _ = ExactSearch(model, trie, batch=8).run([4, 5, 6], 5)
    eb, _ = ExactSearch(model, trie, batch=8, pad=True).run([4, 5, 6], 5)
    assert [c.entry for c in ea] == [c.entry for c in eb]
    assert [c.logp for c in ea] == pytest.approx([c.logp for c in eb], abs=1e-4)


def test_exact_search_fills_timings(model):
    from egt.verify import ExactSearch

    seqs = random_seqs(np.random.default_rng(23), 40, max_len=6)
    trie = TokenTrie.from_sequences(seqs, END)
    got, st = ExactSearch(model, trie, batch=4).run([3, 4, 5, 6], 3)
    assert st.prefill_ms > 0 and st.verify_ms > 0 and st.total_ms >= st.prefill_ms + st.verify_ms * 0.99
    assert st.triggered_at == 0 and st.steps == 0
    assert st.verify_passes >= 1 and st.verified_nodes == st.expanded_nodes > 0
