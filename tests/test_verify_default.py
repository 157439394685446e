"""Targeter on the real embedded default model (SmolLM2-135M-Instruct, CPU, fp32) with a small catalog."""
import math

import pytest
import torch

from egt.verify import Catalog, CostModel, Targeter

pytestmark = pytest.mark.usefixtures("one_thread")

ENTRIES = ["Sports", "Running shoes", "Fitness and exercise", "Travel", "Cooking", "Video games", "Fashion",
           "Personal finance", "Pets", "Home and garden", "Cars", "Parenting"]
AD = "New trail running shoes with extra grip for muddy paths. 20% off this week."


@pytest.fixture(scope="module")
def catalog():
    return Catalog.from_list(ENTRIES)


@torch.inference_mode()
def plain_scores(engine, targeter, ad):
    """Each entry scored alone: the prompt once, then the entry's tokens + <|im_end|> by an ordinary causal pass."""
    ids = targeter.prompt_ids(ad)
    m, p = engine.model, len(ids)
    cache = m.setup_cache(1, p + 40)
    pos = torch.arange(p)
    last = torch.log_softmax(m(torch.tensor([ids]), pos.view(1, -1), pos, cache)[0, -1].double(), -1)
    out = []
    for text in ENTRIES:
        seq = engine.tokenizer(text, add_special_tokens=False)["input_ids"] + [targeter.end_token]
        sl = torch.arange(p, p + len(seq) - 1)
        s = float(last[seq[0]])
        if len(seq) > 1:
            lp = torch.log_softmax(m(torch.tensor([seq[:-1]]), sl.view(1, -1), sl, cache).double(), -1)[0]
            s += sum(float(lp[j, seq[j + 1]]) for j in range(len(seq) - 1))
        out.append(s)
    return out


def test_exhaustive_oracle_and_beam(default_engine, catalog):
    always = Targeter(default_engine, catalog, trigger="always")
    ref = plain_scores(default_engine, always, AD)
    res = always.target(AD, k=len(ENTRIES))
    assert res.timings.triggered_at == 0 and res.timings.steps == 0
    got = {h.text: h.score for h in res.entities}
    assert len(got) == len(ENTRIES)
    for text, s in zip(ENTRIES, ref):
        assert got[text] == pytest.approx(s, abs=1e-3)
    top5 = [ENTRIES[i] for i in sorted(range(len(ref)), key=lambda i: -ref[i])[:5]]
    assert [h.text for h in always.target(AD, k=5).entities] == top5
    never = Targeter(default_engine, catalog, trigger="never").target(AD, k=5)
    assert never.timings.triggered_at is None and never.timings.steps >= 1
    for h in never.entities:  # beam search returns catalog entries with their true scores
        assert h.score == pytest.approx(ref[ENTRIES.index(h.text)], abs=1e-3)
        assert catalog.by_id(h.id).text == h.text


def test_targeter_api(default_engine, catalog):
    cm = CostModel([1, 8, 64, 512], [30.0, 40.0, 120.0, 800.0], chunk=512)  # a fixed table: no calibration here
    t = Targeter(default_engine, catalog, trigger="auto", cost=cm)
    res = t.target_batch([AD, "Cheap flights to Lisbon and Rome this summer"], k=3)
    assert len(res) == 2
    for r in res:
        d = r.to_dict()
        assert len(d["entities"]) == 3 and set(d["entities"][0]) >= {"id", "text", "score"}
        assert d["timings"]["total_ms"] > 0 and d["timings"]["prefill_ms"] > 0
        assert r.trace and all("fire" in x for x in r.trace)
        assert r.timings.steps == 0 or not math.isnan(r.timings.ms_per_token)
    with pytest.raises(ValueError, match="k must be"):
        t.target(AD, k=0)
    with pytest.raises(ValueError, match="non-empty"):
        t.target("   ")
    with pytest.raises(ValueError, match="limit"):
        t.target("x" * 5000)
    with pytest.raises(TypeError):
        t.target_batch(AD)


def test_entries_tokenize_as_in_the_answer(default_engine, catalog):
    """The trie's token paths equal what the tokenizer makes of prompt + answer (no leading-space mismatch)."""
    t = Targeter(default_engine, catalog, trigger="never")
    tok = default_engine.tokenizer
    prompt_text = tok.decode(t.prompt_ids(AD))
    p = len(t.prompt_ids(AD))
    for text in ENTRIES:
        joint = tok(prompt_text + text + "<|im_end|>", add_special_tokens=False)["input_ids"]
        leaf = t.trie.walk(joint[p:])
        assert leaf > 0 and catalog[int(t.trie.entry[leaf])].text == text


def test_exact_search_mode(default_engine, catalog):
    t = Targeter(default_engine, catalog, search="exact", chunk=8)
    a = Targeter(default_engine, catalog, trigger="always")
    res = t.target(AD, k=4)
    assert [h.id for h in res.entities] == [h.id for h in a.target(AD, k=4).entities]
    tm = res.timings  # `egt target --search exact` prints these: they must be measured, not left at 0
    assert tm.prefill_ms > 0 and tm.verify_ms > 0 and tm.verify_passes >= 1 and tm.verified_nodes > 0
    assert tm.triggered_at == 0 and tm.steps == 0 and tm.total_ms >= tm.verify_ms
    with pytest.raises(ValueError, match="search must be"):
        Targeter(default_engine, catalog, search="greedy")


def test_semantic_id_trie_targeting(default_engine, catalog):
    from egt.verify.semantic import SemanticTrie

    t0 = Targeter(default_engine, catalog, trigger="never")
    st = SemanticTrie.build(catalog, default_engine.model, default_engine.tokenizer, t0.end_token, branching=4)
    assert st.trie.num_entries == len(catalog) and int(st.trie.child_count.max()) <= 4
    t = Targeter(default_engine, catalog, trigger="always", trie=st.trie)
    res = t.target(AD, k=3)
    assert len({h.id for h in res.entities}) == 3
    for h in res.entities:  # the generated identifier decodes back to the entry
        e = catalog.by_id(h.id)
        idx = catalog.entries.index(e)
        assert h.tokens == len(st.codes[idx]) + 1


def test_target_batch_equals_target(default_engine, catalog):
    t = Targeter(default_engine, catalog, trigger="never")
    ads = [AD, "Cheap flights to Lisbon and Rome this summer", "Dog food with real chicken"]
    batch = t.target_batch(ads, k=3)
    for ad, r in zip(ads, batch):
        one = t.target(ad, k=3)
        assert [h.id for h in r.entities] == [h.id for h in one.entities]
        assert [h.score for h in r.entities] == pytest.approx([h.score for h in one.entities], abs=1e-3)
        assert r.ad == ad and r.timings.steps == one.timings.steps
