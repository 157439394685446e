"""eval.metrics against hand-computed cases (and METEOR against nltk with an empty synonym list)."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval import metrics as M


def test_bleu_hand_computed():
    # p1 = 5/6, p2 = 3/5, p3 = 2/4, p4 = 1/3, equal lengths so BP = 1
    want = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert M.bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(want, abs=1e-4)
    assert M.bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(1.0)
    assert M.bleu(["x y z w"], ["a b c d"]) == pytest.approx(0.0)


def test_bleu_brevity_penalty():
    # hyp = first 4 of 6 reference words: all precisions 1, BP = exp(1 - 6/4)
    assert M.bleu(["the cat sat on"], ["the cat sat on a mat"]) == pytest.approx(math.exp(1 - 6 / 4), abs=1e-4)


def test_bleu_chinese_is_character_level():
    # the zh tokenizer makes 4 character tokens: p1 = 3/4, p2 = 2/3, p3 = 1/2 and p4 = 0/1, which sacrebleu's
    # default 'exp' smoothing replaces by 1 / (2 * 1)
    assert M.bleu(["机器学习"], ["机器学习"], lang="zh") == pytest.approx(1.0)
    assert M.bleu(["机器学生"], ["机器学习"], lang="zh") == pytest.approx((3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** 0.25, abs=1e-4)
    assert M.bleu(["机器学生"], ["机器学习"], lang="en") == pytest.approx(0.0)  # one token each, no match
    assert M.tokenize("深度学习 model, 2024年", "zh") == ["深", "度", "学", "习", "model", ",", "2024", "年"]
    with pytest.raises(ValueError):
        M.bleu(["a"], ["a", "b"])


def test_meteor_hand_computed():
    # all 6 words match but no two are adjacent in both: 6 chunks, P = R = 1, penalty = 0.5 * (6/6)^3
    assert M.meteor("the cat sat on the mat", "on the mat sat the cat") == pytest.approx(0.5)
    # identical 3 words: one chunk; penalty 0.5 * (1/3)^3
    assert M.meteor("a b c", "a b c") == pytest.approx(1 - 0.5 / 27)
    # stem stage: cats~cat, running~runs (both 'run'); P = 1, R = 2/3, one chunk of 2
    p, r = 1.0, 2 / 3
    f = p * r / (0.9 * p + 0.1 * r)
    assert M.meteor("cats running", "the cat runs") == pytest.approx(f * (1 - 0.5 * (1 / 2) ** 3))
    assert M.meteor("nothing here", "totally different") == 0.0
    assert M.meteor("", "a b") == 0.0
    # several references: the best counts
    assert M.meteor("a b c", ["x y", "a b c"]) == pytest.approx(1 - 0.5 / 27)
    assert M.corpus_meteor(["a b c", "x"], ["a b c", "y"]) == pytest.approx((1 - 0.5 / 27) / 2)


def test_meteor_chinese_characters():
    # 4 of 4 characters in one chunk: P = R = 1, penalty 0.5 * (1/4)^3
    assert M.meteor("机器学习", "机器学习", lang="zh") == pytest.approx(1 - 0.5 / 64)
    # 2 of 4 matched, one chunk: P = R = 1/2
    assert M.meteor("机器人类", "机器学习", lang="zh") == pytest.approx(0.5 * (1 - 0.5 / 8))


class _NoSynonyms:
    def synsets(self, *args, **kwargs):
        return []


WORDS = "the cat cats sat sitting on mat mats a dog dogs running runs ran quick quickly".split()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=12), st.lists(st.sampled_from(WORDS), min_size=1, max_size=12))
def test_meteor_equals_nltk_without_synonyms(hyp, ref):
    from nltk.translate.meteor_score import meteor_score

    assert M.meteor_tokens(hyp, ref) == pytest.approx(meteor_score([ref], hyp, wordnet=_NoSynonyms()), abs=1e-12)


def test_recall_precision_at_k():
    pred = ["A", "b", "C", "d"]
    gold = ["a", "c", "z"]
    assert M.recall_at_k(pred, gold, 1) == pytest.approx(1 / 3)
    assert M.recall_at_k(pred, gold, 4) == pytest.approx(2 / 3)
    assert M.precision_at_k(pred, gold, 4) == pytest.approx(2 / 4)
    assert M.precision_at_k(pred[:2], gold, 5) == pytest.approx(1 / 5)  # fewer predictions than k count as misses
    assert M.recall_at_k(["a", "a"], ["a"], 2) == 1.0  # duplicates do not count twice
    m = M.mean_at_k([pred, ["z"]], [gold, ["y"]], 4)
    assert m == {"recall@4": pytest.approx(1 / 3), "precision@4": pytest.approx(1 / 4)}
    with pytest.raises(ValueError):
        M.recall_at_k(pred, [], 3)


def test_latency_summary():
    recs = [{"decode_ms": [1.0, 3.0], "prefill_ms": 10.0, "total_ms": 20.0},
            {"decode_ms": [2.0], "prefill_ms": 30.0, "total_ms": 40.0}]
    s = M.latency_summary(recs)
    assert s["ms_per_token"] == 2.0 and s["decode_steps"] == 3 and s["prefill_ms"] == 20.0 and s["total_ms"] == 30.0
    assert math.isnan(M.latency_summary([{"decode_ms": []}])["ms_per_token"])
    assert M.avg_length(["a b", "c d e f"]) == 3.0
