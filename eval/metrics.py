"""Quality and latency metrics of the offline evaluation.

Contract:
- `bleu(hyps, refs, lang)`: corpus BLEU from sacrebleu, on a 0..1 scale like the paper's Table 1; `lang="zh"`
  uses sacrebleu's Chinese tokenizer (one token per CJK character), anything else its default `13a`; sacrebleu's
  default `exp` smoothing of zero n-gram counts applies.
- `meteor(hyp, ref, lang)` / `corpus_meteor`: METEOR (Banerjee & Lavie 2005) with the exact and Porter-stem
  matching stages and the standard parameters alpha=0.9, beta=3, gamma=0.5 (as in nltk). The WordNet synonym stage
  is NOT included: no WordNet data can be installed offline here (PyPI has no maintained WordNet data wheel; the
  `wn` package downloads its data at run time). Scores are therefore a little lower than METEOR with synonyms.
  Alignment follows nltk's greedy rule (each hypothesis word, last first, takes the last unmatched equal reference
  word), so with an empty synonym list the score equals nltk's `meteor_score` (tested). For Chinese, every CJK
  character is a token and stemming is skipped.
- `recall_at_k(pred, gold, k)`, `precision_at_k(pred, gold, k)`: set-based, per example; `mean_at_k` averages them.
- `latency_summary(per_example)` pools decode-step latencies of all examples: median ms/token, median prefill.
"""
from __future__ import annotations

import math
import re
import statistics

ALPHA, BETA, GAMMA = 0.9, 3.0, 0.5
_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef"


def tokenize(text: str, lang: str = "en") -> list[str]:
    """Lowercased tokens: words and punctuation; for `zh` every CJK character (and CJK punctuation) on its own."""
    text = text.lower()
    if lang == "zh":
        return re.findall(rf"[{_CJK}]|[a-z0-9]+(?:[.'-][a-z0-9]+)*|[^\s{_CJK}a-z0-9]", text)
    return re.findall(r"[a-z0-9]+(?:['.-][a-z0-9]+)*|[^\sa-z0-9]", text)


def bleu(hyps: list[str], refs: list[str], lang: str = "en") -> float:
    import sacrebleu

    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        return float("nan")
    return sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh" if lang == "zh" else "13a").score / 100.0


def _stem(words: list[str]) -> list[str]:
    from nltk.stem.porter import PorterStemmer

    st = PorterStemmer()
    return [st.stem(w) for w in words]


def _match_stage(hyp: list[tuple[int, str]], ref: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of equal words; removes matched words from both lists in place."""
    pairs = []
    for i in range(len(hyp) - 1, -1, -1):
        for j in range(len(ref) - 1, -1, -1):
            if hyp[i][1] == ref[j][1]:
                pairs.append((hyp[i][0], ref[j][0]))
                del hyp[i], ref[j]
                break
    return pairs


def align(hyp: list[str], ref: list[str], stem: bool = True) -> list[tuple[int, int]]:
    """(hyp index, ref index) matches: exact first, then on Porter stems among what is left. Sorted by hyp index."""
    h = list(enumerate(hyp))
    r = list(enumerate(ref))
    pairs = _match_stage(h, r)
    if stem and h and r:
        hs = list(zip((i for i, _ in h), _stem([w for _, w in h])))
        rs = list(zip((j for j, _ in r), _stem([w for _, w in r])))
        pairs += _match_stage(hs, rs)
    return sorted(pairs)


def chunks(pairs: list[tuple[int, int]]) -> int:
    """Number of runs of matches adjacent in both the hypothesis and the reference."""
    n = 0
    prev = None
    for i, j in pairs:
        if prev is None or not (i == prev[0] + 1 and j == prev[1] + 1):
            n += 1
        prev = (i, j)
    return n


def meteor_tokens(hyp: list[str], ref: list[str], stem: bool = True) -> float:
    if not hyp or not ref:
        return 0.0
    pairs = align(hyp, ref, stem)
    m = len(pairs)
    if m == 0:
        return 0.0
    p, r = m / len(hyp), m / len(ref)
    fmean = p * r / (ALPHA * p + (1 - ALPHA) * r)
    penalty = GAMMA * (chunks(pairs) / m) ** BETA
    return fmean * (1 - penalty)


def meteor(hyp: str, ref: str | list[str], lang: str = "en") -> float:
    """Sentence METEOR; with several references, the best one counts."""
    refs = [ref] if isinstance(ref, str) else list(ref)
    h = tokenize(hyp, lang)
    return max(meteor_tokens(h, tokenize(r, lang), stem=lang != "zh") for r in refs)


def corpus_meteor(hyps: list[str], refs: list[str], lang: str = "en") -> float:
    """Mean sentence METEOR (how the paper-style tables report it)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        return float("nan")
    return sum(meteor(h, r, lang) for h, r in zip(hyps, refs)) / len(hyps)


def _norm_set(items) -> set[str]:
    return {" ".join(str(x).lower().split()) for x in items}


def recall_at_k(pred: list[str], gold: list[str], k: int) -> float:
    g = _norm_set(gold)
    if not g:
        raise ValueError("recall needs at least one gold item")
    return len(_norm_set(pred[:k]) & g) / len(g)


def precision_at_k(pred: list[str], gold: list[str], k: int) -> float:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return len(_norm_set(pred[:k]) & _norm_set(gold)) / k


def mean_at_k(preds: list[list[str]], golds: list[list[str]], k: int) -> dict[str, float]:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} gold lists")
    if not preds:
        return {f"recall@{k}": float("nan"), f"precision@{k}": float("nan")}
    n = len(preds)
    return {f"recall@{k}": sum(recall_at_k(p, g, k) for p, g in zip(preds, golds)) / n,
            f"precision@{k}": sum(precision_at_k(p, g, k) for p, g in zip(preds, golds)) / n}


def median(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.median(xs) if xs else float("nan")


def latency_summary(per_example: list[dict]) -> dict[str, float]:
    """Pool `decode_ms` (per-step lists), `prefill_ms` and `total_ms` of every example."""
    steps = [t for e in per_example for t in e.get("decode_ms", [])]
    return {"ms_per_token": median(steps), "decode_steps": len(steps),
            "prefill_ms": median(e.get("prefill_ms") for e in per_example),
            "total_ms": median(e.get("total_ms") for e in per_example)}


def avg_length(texts: list[str], lang: str = "en") -> float:
    """Mean output length in tokens of `tokenize` (characters for Chinese)."""
    return sum(len(tokenize(t, lang)) for t in texts) / len(texts) if texts else float("nan")
