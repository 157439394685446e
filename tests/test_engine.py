"""The reference engine on the embedded default model: greedy equality with transformers, batching, beam search."""
import torch

PROMPTS = ["List three audience interests for an ad about trail running shoes.",
           "Who should see an ad for organic dog food?",
           "Write a slogan for a budget airline."]


def test_greedy_matches_transformers_generate(default_engine, default_hf_model):
    for text in PROMPTS:
        ids = default_engine.encode(text)
        ours = default_engine.generate([ids], max_new_tokens=24).tokens[0]
        ref = default_hf_model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
        # HF stops at EOS too; compare the common length and require that HF did not produce more tokens
        assert ours == ref[: len(ours)], text
        assert len(ours) == len(ref) or ours[-1] in default_engine.eos_ids


def test_batched_greedy_equals_one_at_a_time(default_engine):
    prompts = [default_engine.encode(t) for t in PROMPTS]
    assert len({len(p) for p in prompts}) > 1  # different lengths exercise left padding
    batch = default_engine.generate(prompts, max_new_tokens=12).tokens
    single = [default_engine.generate([p], max_new_tokens=12).tokens[0] for p in prompts]
    assert batch == single


def test_beam_search_finds_at_least_the_greedy_score(default_engine):
    ids = default_engine.encode(PROMPTS[0])
    greedy = default_engine.generate([ids], max_new_tokens=8)
    beam = default_engine.generate([ids], max_new_tokens=8, num_beams=4, length_penalty=0.0)
    # With no length normalisation, the best of 4 beams scores at least as well as greedy (same length budget).
    assert beam.scores[0] >= greedy.scores[0] - 1e-4  # batch-4 vs batch-1 matmuls differ in rounding
    beam1 = default_engine.generate([ids], max_new_tokens=8, num_beams=1)
    assert beam1.tokens == greedy.tokens


def test_beam_score_is_the_sequence_log_probability(default_engine):
    ids = default_engine.encode(PROMPTS[1])
    beam = default_engine.generate([ids], max_new_tokens=6, num_beams=3, length_penalty=0.0)
    seq = beam.tokens[0]
    m = default_engine.model
    full = torch.tensor([ids + seq])
    with torch.no_grad():
        n = full.shape[1]
        logits = m(full, torch.arange(n).view(1, -1), torch.arange(n), m.setup_cache(1, n))
    logp = torch.log_softmax(logits[0, len(ids) - 1:-1].double(), -1).gather(1, torch.tensor(seq).view(-1, 1)).sum()
    assert abs(float(logp) - beam.scores[0]) < 1e-3


def test_timings_are_reported(default_engine):
    g = default_engine.generate([default_engine.encode(PROMPTS[2])], max_new_tokens=6)
    assert g.timings.prefill_ms > 0
    assert len(g.timings.decode_ms) == len(g.tokens[0]) - 1
    assert all(t > 0 for t in g.timings.decode_ms)
