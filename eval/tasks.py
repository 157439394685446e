"""The evaluation tasks: targeting (IRA ads), keyword and title generation (CSL kg / ts), slogans.

Contract:
- `TASKS[name]` is a `Task`. `task.examples(data, limit)` returns a deterministic list of `Example`s (the test
  slice, in a fixed hash order, first `limit`); `task.shots` are the few-shot demonstrations, drawn from a disjoint
  split (CSL dev for CSL test; the non-test hash buckets for IRA and slogans), identical for every configuration.
- `task.runner(engine, config)` returns a callable `Example -> record` (a JSON-able dict with the output and its
  timings); `task.score(records, examples)` turns the records into metrics. Scoring happens once, on all records,
  in the original order, so a data-parallel run scores exactly what a single process scores.
- Two prompting modes give the model its best fair chance (`PROMPTING` holds each task's choice, made by
  measurement on a validation slice, see `eval/finetune.py`):
  - "few-shot": the base model, with demonstrations as earlier chat turns (generation tasks) or inside the
    targeting prompt;
  - "lora": the model with the task LoRA adapter of `data/eval_lora/` merged into its weights, prompted zero-shot
    with the same instruction it was fine-tuned on (`train_pairs` builds those pairs from the same prompt code).
  `EGT_EVAL_PROMPTING` (few-shot | lora) overrides the choice for every task (recorded in each cell).
- Splits: test = the slice `examples` returns; fine-tuning uses `split("train")`, selection `split("val")`,
  both disjoint from the test slice (IRA / slogans: hash buckets 2-4 and 1; CSL: the dev file, hash bucket 1 is
  val) and the validation slice disjoint from the demonstrations.
- Long inputs are truncated to fixed character budgets (see `MAX_*`) to bound CPU prefill time; the budgets are
  recorded in every cell.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable

from . import metrics as M

MAX_AD_CHARS = 400  # targeting ad text
MAX_SHOT_SOURCE_CHARS = {"csl-kg": 120, "csl-ts": 120, "slogans": 300}
MAX_SOURCE_CHARS = {"csl-kg": 240, "csl-ts": 240, "slogans": 400}
MAX_NEW_TOKENS = {"csl-kg": 40, "csl-ts": 40, "slogans": 20}
TARGET_K = 10  # interests returned per ad (= beam width of the constrained search)
MODES = ("few-shot", "lora")
# Chosen per task on the validation slice (numbers in data/eval_lora/recipe.json, "selection").
PROMPTING = {"targeting": "lora", "csl-kg": "lora", "csl-ts": "few-shot", "slogans": "lora"}


def prompting(task: str) -> str:
    """The prompting mode of a task: `EGT_EVAL_PROMPTING` if set, else the measured choice in `PROMPTING`."""
    return _check_mode(os.environ.get("EGT_EVAL_PROMPTING") or PROMPTING[task])


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"prompting mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def max_new_tokens(task: str) -> int:
    """Generation budget; `EGT_EVAL_MAX_NEW_TOKENS` caps it (quick smoke runs and CI; recorded in each cell)."""
    cap = os.environ.get("EGT_EVAL_MAX_NEW_TOKENS")
    return min(MAX_NEW_TOKENS[task], int(cap)) if cap else MAX_NEW_TOKENS[task]


@dataclass
class Example:
    id: str
    source: str
    reference: object  # str for generation, list[str] of gold interests for targeting
    meta: dict = field(default_factory=dict)


def bucket(text: str, n: int = 5) -> int:
    """Stable split bucket of a text (bucket 0 = test)."""
    return int(hashlib.sha1(("egt-eval:" + text).encode("utf-8")).hexdigest(), 16) % n


def _order(xs: list[Example]) -> list[Example]:
    return sorted(xs, key=lambda e: hashlib.sha1(("order:" + e.id).encode()).hexdigest())


def _cut(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n].rstrip() + "…"


def _first_line(text: str) -> str:
    for line in text.strip().splitlines():
        line = line.strip().strip('"“”').strip()
        if line:
            return line
    return ""


class Task:
    name = ""
    lang = "en"
    main_metric = ""
    description = ""

    def examples(self, data: str | None, limit: int | None) -> list[Example]:
        raise NotImplementedError

    def split(self, which: str) -> list[Example]:
        """Fine-tuning ("train") or selection ("val") examples, disjoint from the test slice, fixed order."""
        raise NotImplementedError

    def train_pairs(self, ex: Example) -> list[tuple[str, str]]:
        """(user turn, assistant answer) pairs of one training example, in the zero-shot prompt of mode "lora"."""
        raise NotImplementedError

    def settings(self, mode: str = "few-shot") -> dict:
        return {"prompting": mode}


def _bucket_split(xs: list[Example], which: str, shots: list[Example]) -> list[Example]:
    """Non-test examples: bucket 1 = val (minus the demonstrations), buckets 2-4 = train."""
    if which not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {which!r}")
    shot_src = {s.source for s in shots}
    want = (1,) if which == "val" else (2, 3, 4)
    return _order([e for e in xs if bucket(e.source) in want and not (which == "val" and e.source in shot_src)])


# ------------------------------------------------------------------------------------------------ generation


class GenerationTask(Task):
    main_metric = "meteor"
    instruction = ""
    n_shots = 1

    def __init__(self):
        self._shots: list[Example] | None = None

    def load_test(self, data):  # -> list[Example]
        raise NotImplementedError

    def load_shot_pool(self):  # -> list[Example]
        raise NotImplementedError

    @property
    def shots(self) -> list[Example]:
        if self._shots is None:
            pool = self.load_shot_pool()
            # short, ordinary demonstrations: the median-length references of a fixed hash order
            pool = _order(pool)[:200]
            mid = sorted(len(str(e.reference)) for e in pool)[len(pool) // 2]
            pool.sort(key=lambda e: abs(len(str(e.reference)) - mid))
            self._shots = pool[: self.n_shots]
        return self._shots

    def examples(self, data, limit):
        xs = _order(self.load_test(data))
        return xs[:limit] if limit else xs

    def user_turn(self, source: str, shot: bool) -> str:
        n = (MAX_SHOT_SOURCE_CHARS if shot else MAX_SOURCE_CHARS)[self.name]
        return self.instruction.format(source=_cut(source, n))

    def messages(self, ex: Example, mode: str = "few-shot") -> list[dict]:
        msgs = []
        for s in (self.shots if _check_mode(mode) == "few-shot" else []):
            msgs += [{"role": "user", "content": self.user_turn(s.source, True)},
                     {"role": "assistant", "content": self.format_reference(s.reference)}]
        return msgs + [{"role": "user", "content": self.user_turn(ex.source, False)}]

    def train_pairs(self, ex: Example) -> list[tuple[str, str]]:
        return [(self.user_turn(ex.source, False), self.format_reference(ex.reference))]

    def format_reference(self, ref) -> str:
        return str(ref)

    def prompt_ids(self, tokenizer, ex: Example, mode: str = "few-shot") -> list[int]:
        msgs = self.messages(ex, mode)
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        text = "\n\n".join(f"{m['content']}" if m["role"] == "user" else f"Answer: {m['content']}" for m in msgs)
        return tokenizer(text + "\nAnswer:", add_special_tokens=False)["input_ids"]

    def postprocess(self, text: str) -> str:
        return _first_line(text)

    def runner(self, engine, config: str, data=None, mode: str = "few-shot") -> Callable[[Example], dict]:
        max_new = max_new_tokens(self.name)
        _check_mode(mode)

        def run(ex: Example) -> dict:
            ids = self.prompt_ids(engine.tokenizer, ex, mode)
            t0 = time.perf_counter()
            g = engine.generate([ids], max_new_tokens=max_new)
            total = (time.perf_counter() - t0) * 1e3
            return {"id": ex.id, "output": self.postprocess(g.texts[0]), "raw": g.texts[0],
                    "prompt_tokens": len(ids), "new_tokens": len(g.tokens[0]), "prefill_ms": g.timings.prefill_ms,
                    "decode_ms": list(g.timings.decode_ms), "total_ms": total}

        return run

    def score(self, records: list[dict], examples: list[Example]) -> dict:
        hyps = [self.normalize(r["output"]) for r in records]
        refs = [self.normalize(self.format_reference(e.reference)) for e in examples]
        return {"meteor": M.corpus_meteor(hyps, refs, self.lang), "bleu": M.bleu(hyps, refs, self.lang),
                "avg_len": M.avg_length(hyps, self.lang), "ref_avg_len": M.avg_length(refs, self.lang)}

    def normalize(self, text: str) -> str:
        return text

    def settings(self, mode: str = "few-shot") -> dict:
        return {"prompting": mode, "shots": len(self.shots) if mode == "few-shot" else 0,
                "max_new_tokens": max_new_tokens(self.name),
                "max_source_chars": MAX_SOURCE_CHARS[self.name],
                "max_shot_source_chars": MAX_SHOT_SOURCE_CHARS[self.name], "decoding": "greedy, batch 1",
                "instruction": self.instruction}


class CSLTask(GenerationTask):
    lang = "zh"
    n_shots = 1

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.name = f"csl-{kind}"
        if kind == "kg":
            self.description = "CSL keyword generation (Chinese abstract -> keywords), test split"
            self.instruction = ("List the keywords of this Chinese paper abstract, in Chinese, separated by "
                                "underscores (_).\nAbstract: {source}")
        else:
            self.description = "CSL title generation (Chinese abstract -> title), test split"
            self.instruction = "Write the Chinese title of this Chinese paper abstract.\nAbstract: {source}"

    def _load(self, split, path=None):
        from egt.data import load_csl

        ds = load_csl(self.kind, split, path=path)
        return [Example(f"{split}-{i}", r["source"], r["target"]) for i, r in enumerate(ds)]

    def load_test(self, data):
        return self._load("test", data)

    def load_shot_pool(self):
        return self._load("dev")

    def split(self, which):
        if which not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {which!r}")
        shot_src = {s.source for s in self.shots}
        dev = [e for e in self._load("dev") if e.source not in shot_src]
        return _order([e for e in dev if (bucket(e.source) == 1) == (which == "val")])

    def normalize(self, text: str) -> str:
        # keywords: compare the keyword sequence, not the separator style the model chose
        if self.kind == "kg":
            return " ".join(k.strip() for k in re.split(r"[_、，,;；]", text) if k.strip())
        return text


class SloganTask(GenerationTask):
    name = "slogans"
    lang = "en"
    n_shots = 3
    description = "Slogan generation (company description -> headline), hash bucket 0 of slogans_valid.csv"
    instruction = "Write a short advertising headline (at most 8 words) for this company.\nDescription: {source}"

    def _rows(self, data=None):
        from egt.data import load_slogans

        ds = load_slogans(data)
        return [Example(f"s{i}", r["desc"], r["output"], {"industry": r["industry"]}) for i, r in enumerate(ds)]

    def load_test(self, data):
        return [e for e in self._rows(data) if bucket(e.source) == 0]

    def load_shot_pool(self):
        return [e for e in self._rows() if bucket(e.source) != 0]

    def split(self, which):
        return _bucket_split(self._rows(), which, self.shots)


# ------------------------------------------------------------------------------------------------- targeting


class TargetingTask(Task):
    name = "targeting"
    lang = "en"
    main_metric = f"recall@{TARGET_K}"
    description = ("IRA Facebook ads -> targeted interests; catalog = every interest in the data set; "
                   "test = hash bucket 0")
    n_shots = 3

    def __init__(self):
        self._rows_cache = {}
        self._shots = None

    def _ads(self, data=None):
        key = str(data)
        if key not in self._rows_cache:
            from egt.data import load_ira_ads

            self._rows_cache[key] = load_ira_ads(data)
        return self._rows_cache[key]

    def catalog(self, data=None):
        from egt.data import ira_catalog
        from egt.verify import Catalog

        return Catalog.from_list([(c["id"], c["name"]) for c in ira_catalog(self._ads(data))], name="ira-interests")

    def examples(self, data, limit):
        ds = self._ads(data)
        seen, xs = set(), []
        for r in ds:
            if bucket(r["text"]) == 0 and r["text"] not in seen:
                seen.add(r["text"])
                xs.append(Example(r["ad_id"] or str(len(xs)), r["text"], list(r["interests"])))
        xs = _order(xs)
        return xs[:limit] if limit else xs

    @property
    def shots(self) -> list[Example]:
        if self._shots is None:
            ds = self._ads()
            pool = [Example(r["ad_id"], r["text"], list(r["interests"])) for r in ds
                    if bucket(r["text"]) != 0 and 40 <= len(r["text"]) <= 200]
            pool = _order(pool)
            shots, used = [], set()
            for e in pool:  # demonstrations with different first interests, so the prompt does not favour one
                if e.reference[0] not in used:
                    shots.append(e)
                    used.add(e.reference[0])
                if len(shots) == self.n_shots:
                    break
            self._shots = shots
        return self._shots

    def popular(self, k: int) -> list[str]:
        from collections import Counter

        cnt = Counter(i for r in self._ads() if bucket(r["text"]) != 0 for i in r["interests"])
        return [name for name, _ in cnt.most_common(k)]

    def _all(self) -> list[Example]:
        """Every ad with interests, one per distinct text (the first occurrence), data-set order."""
        seen, xs = set(), []
        for r in self._ads():
            if r["text"] not in seen:
                seen.add(r["text"])
                xs.append(Example(r["ad_id"] or str(len(xs)), r["text"], list(r["interests"])))
        return xs

    def split(self, which):
        return _bucket_split(self._all(), which, self.shots)

    def prompt_template(self, mode: str = "few-shot") -> str:
        lines = ["Which audience does this ad target? Answer with one audience interest.", ""]
        for s in (self.shots if _check_mode(mode) == "few-shot" else []):
            lines += [f"Ad: {_cut(s.source, MAX_AD_CHARS)}", f"Audience interest: {s.reference[0]}", ""]
        lines += ["Ad: {ad}", "Audience interest:"]
        body = "\n".join(lines)
        # examples are literal text in a str.format template
        return body.replace("{", "{{").replace("}", "}}").replace("{{ad}}", "{ad}")

    def train_pairs(self, ex: Example) -> list[tuple[str, str]]:
        """One pair per gold interest: the answer the Targeter scores is a single interest after the prompt."""
        user = self.prompt_template("lora").format(ad=_cut(ex.source, MAX_AD_CHARS))
        return [(user, interest) for interest in ex.reference]

    def runner(self, engine, config: str, data=None, mode: str = "few-shot") -> Callable[[Example], dict]:
        from egt.verify import Targeter

        from .configs import split_name

        _, ptpv = split_name(config)
        targeter = Targeter(engine, self.catalog(data), trigger="auto" if ptpv else "never",
                            prompt_template=self.prompt_template(mode))

        def run(ex: Example) -> dict:
            res = targeter.target(_cut(ex.source, MAX_AD_CHARS), k=TARGET_K)
            t = res.timings
            return {"id": ex.id, "output": [h.text for h in res.entities], "scores": [h.score for h in res.entities],
                    "prefill_ms": t.prefill_ms,
                    "decode_ms": [t.ms_per_token] * t.steps if t.steps else [], "steps": t.steps,
                    "verify_ms": t.verify_ms, "total_ms": t.total_ms, "triggered_at": t.triggered_at,
                    "verified_nodes": t.verified_nodes}

        return run

    def score(self, records, examples):
        preds = [r["output"] for r in records]
        golds = [e.reference for e in examples]
        out = {}
        for k in sorted({1, 5, TARGET_K}):
            out.update(M.mean_at_k(preds, golds, k))
        # the floor a model must beat: always answer the k most frequent interests of the non-test ads
        prior = self.popular(TARGET_K)
        out[f"popularity_recall@{TARGET_K}"] = M.mean_at_k([prior] * len(golds), golds, TARGET_K)[f"recall@{TARGET_K}"]
        out["avg_gold"] = sum(len(g) for g in golds) / len(golds) if golds else float("nan")
        out["triggered"] = sum(r.get("triggered_at") is not None for r in records)
        out["verify_ms"] = M.median(r.get("verify_ms") for r in records)
        return out

    def settings(self, mode: str = "few-shot") -> dict:
        return {"prompting": mode, "shots": len(self.shots) if mode == "few-shot" else 0, "k": TARGET_K,
                "max_ad_chars": MAX_AD_CHARS, "search": "trie-constrained beam search, beam = k",
                "prompt": self.prompt_template(mode)}


TASKS: dict[str, Task] = {"targeting": TargetingTask(), "csl-kg": CSLTask("kg"), "csl-ts": CSLTask("ts"),
                          "slogans": SloganTask()}
