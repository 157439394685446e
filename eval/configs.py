"""The configurations of the paper's Table 1 and how each one's model is prepared.

Contract:
- `CONFIGS` maps a configuration name (`fp16`, `int4`, `2:4`, `1:4`, `mix`, `2:4+int4`, `1:4+int4`, `mix+int4`,
  `mix+int4+rec` = Mix+INT4 with recovery distillation after pruning on ad texts, `mix+int4+rec-tasks` = on the
  tasks' training pairs, `mix+int4+rec-tasks-long` = on all of them for 10x the steps, on a GPU) to
  the `egt.compress.CompressConfig` arguments that make it. For the targeting task every name may carry the suffix
  `+ptpv` (prefix-tree parallel verification on; without it the trie-constrained beam search runs to the end).
- `availability(name)` says whether the stages a configuration needs exist in this checkout (`egt.quant.
  quantize_model`, `egt.sparsify.sparsify_model`); a missing stage makes the cell "not available", never faked.
- `prepare(name, source, device, dtype, cache_root)` returns an `egt.engine.Engine` for the configuration: the
  float model itself for `fp16`, else a compressed directory made once by `egt.compress.compress` (calibrated on
  the packaged demo ads) and cached under `cache_root/<slug>-<hash of the settings and of the compression code>`,
  then loaded from disk, so the
  evaluated model is exactly what `egt compress` writes and every process of a data-parallel run loads the same.
- `fp16` is the uncompressed float model: fp16 on CUDA; on CPU, where fp16 matmuls are emulated, it runs in fp32
  (the cell records the dtype actually used).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path

RECOVERY_TEXTS = "targeting-train"  # placeholders for recovery_texts_file() / recovery_pairs_file() in CONFIGS
RECOVERY_PAIRS = "task-train-pairs"
CONFIGS: dict[str, dict] = {
    "fp16": {},
    "int4": {"bits": 4},  # adaptive: the quantizer picks a group size per layer by sensitivity
    "2:4": {"sparsity": "2:4"},
    "1:4": {"sparsity": "1:4"},
    "mix": {"sparsity": "mix", "density": 0.375},  # 2:4 where layers matter, 1:4 elsewhere; mean density 3/8
    "2:4+int4": {"sparsity": "2:4", "bits": 4},
    "1:4+int4": {"sparsity": "1:4", "bits": 4},
    "mix+int4": {"sparsity": "mix", "density": 0.375, "bits": 4},
    # the same, with recovery distillation after pruning (egt compress --recover-steps) on IRA ad texts of the
    # targeting task's train split (see recovery_texts_file)
    "mix+int4+rec": {"sparsity": "mix", "density": 0.375, "bits": 4, "recover_steps": 150,
                     "recover_data": RECOVERY_TEXTS},
    # ... on the LoRA tasks' training pairs in the chat format the evaluation prompts with (see recovery_pairs_file)
    "mix+int4+rec-tasks": {"sparsity": "mix", "density": 0.375, "bits": 4, "recover_steps": 150,
                           "recover_data": RECOVERY_PAIRS},
    # ... for 1500 steps (0.77M tokens, ~0.6 of a pass) over all of those pairs, on a GPU (10x the CPU configs'
    # training; the model is made once on a CUDA machine and read from the cache elsewhere)
    "mix+int4+rec-tasks-long": {"sparsity": "mix", "density": 0.375, "bits": 4, "recover_steps": 1500,
                                "recover_samples": 100000, "recover_data": RECOVERY_PAIRS, "recover_device": "cuda"},
}
PTPV = "+ptpv"


class NotAvailable(Exception):
    """A configuration whose compression stage is not in this checkout (reported, never faked)."""


def split_name(name: str) -> tuple[str, bool]:
    """('mix+int4', True) for 'mix+int4+ptpv'. Raises ValueError for unknown names."""
    base, ptpv = (name[: -len(PTPV)], True) if name.endswith(PTPV) else (name, False)
    if base not in CONFIGS:
        raise ValueError(f"unknown configuration {name!r}; choose from {', '.join(CONFIGS)} "
                         f"(targeting also accepts each with {PTPV})")
    return base, ptpv


def all_names(task: str) -> list[str]:
    names = list(CONFIGS)
    return names + [n + PTPV for n in names] if task == "targeting" else names


def slug(name: str) -> str:
    return name.replace(":", "of").replace("+", "_")


def availability(name: str) -> tuple[bool, str]:
    base, _ = split_name(name)
    kw = CONFIGS[base]
    needs = []
    if kw.get("sparsity", "none") != "none":
        needs.append(("egt.sparsify", "sparsify_model"))
    if kw.get("bits") is not None:
        needs.append(("egt.quant", "quantize_model"))
    for mod, fn in needs:
        try:
            m = importlib.import_module(mod)
        except ImportError as e:
            return False, f"{mod} cannot be imported ({e})"
        if not callable(getattr(m, fn, None)):
            return False, f"{mod}.{fn} is not in this checkout yet"
    return True, ""


def compress_settings(name: str, source: str, calibration_samples: int | None = None) -> dict:
    """The `egt compress` settings of a configuration. `EGT_EVAL_CALIBRATION_SAMPLES` overrides the default 32
    calibration texts (a cheaper model on a slow machine); it is part of the cache key and recorded in the cell."""
    if calibration_samples is None:
        calibration_samples = int(os.environ.get("EGT_EVAL_CALIBRATION_SAMPLES", "32"))
    base, _ = split_name(name)
    kw = dict(CONFIGS[base])
    if kw.get("recover_data") == RECOVERY_TEXTS:
        kw["recover_data"] = str(recovery_texts_file())
    elif kw.get("recover_data") == RECOVERY_PAIRS:
        kw["recover_data"] = str(recovery_pairs_file())
    return {"source": source, "calibration": None, "calibration_samples": calibration_samples, "dtype": "fp16",
            **kw}


def default_cache_root() -> Path:
    return Path(os.environ.get("EGT_EVAL_CACHE", Path.home() / ".cache" / "egt" / "eval-models"))


def recovery_texts_file(root: Path | None = None) -> Path:
    """The texts recovery distils on here, one per line: the IRA ads of the targeting task's train split, so that
    no test or validation ad of any task is seen (the IRA texts egt.data.calibration_texts would draw include
    targeting test ads). Written once, named by its content hash."""
    from .tasks import TASKS

    texts = sorted({" ".join(e.source.split()) for e in TASKS["targeting"].split("train")} - {""})
    return _write_once("recover-texts", ".txt", "\n".join(texts) + "\n", root)


def recovery_pairs_file(root: Path | None = None) -> Path:
    """The training pairs of the tasks that share the LoRA model (targeting, slogans, csl-kg: their train splits
    only) as chat turns, prompt + answer + end of turn, one JSON string per line (egt.data.calibration_texts keeps
    the template's line breaks in .jsonl texts)."""
    from egt.models import default_model_dir
    from transformers import AutoTokenizer

    from .tasks import TASKS

    tok = AutoTokenizer.from_pretrained(default_model_dir())
    lines = []
    for name in ("targeting", "slogans", "csl-kg"):
        for ex in TASKS[name].split("train"):
            for user, answer in TASKS[name].train_pairs(ex):
                prompt = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                                 tokenize=False)
                lines.append(json.dumps(prompt + answer + "<|im_end|>", ensure_ascii=False))
    return _write_once("recover-pairs", ".jsonl", "\n".join(sorted(set(lines))) + "\n", root)


def _write_once(stem: str, suffix: str, body: str, root: Path | None) -> Path:
    """`body` in the cache directory under a name holding its content hash (atomic; kept if already there)."""
    path = Path(root or default_cache_root()) / f"{stem}-{hashlib.sha1(body.encode()).hexdigest()[:10]}{suffix}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.replace(path)
    return path


def code_hash() -> str:
    """Hash of the compression code, so a cached model is remade when the quantizer or sparsifier changes."""
    import egt

    root = Path(egt.__file__).resolve().parent
    h = hashlib.sha1()
    files = sorted([*root.glob("quant/*.py"), *root.glob("sparsify/*.py"), root / "compress.py", root / "calibrate.py",
                    root / "plan.py", root / "format.py", root / "data.py"])  # data.py: how calibration texts are read
    for f in files:
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:10]


def model_dir(name: str, source: str, cache_root: Path | None = None) -> Path:
    s = compress_settings(name, source)
    s["code"] = code_hash()
    h = hashlib.sha1(json.dumps(s, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cache_root or default_cache_root()) / f"{slug(split_name(name)[0])}-{h}"


def _source_note(d: Path) -> Path:
    """Side file naming the source a cached directory was compressed from (the manifest does not say)."""
    return d.parent / f"{d.name}.source"


def _made_with(d: Path, name: str, source: str) -> bool:
    """Whether directory `d` holds a model compressed from `source` with the settings of `name`. Directories
    without a source note predate it and were all made from the embedded default."""
    from egt.format import MANIFEST

    note = _source_note(d)
    made_from = note.read_text().strip() if note.is_file() else "default"
    if made_from != str(source):
        return False
    try:
        m = json.loads((d / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    made = (m.get("plan", {}).get("meta", {}) or {}).get("config", {})
    want = compress_settings(name, source)
    want.pop("source")
    return all(made.get(k) == v for k, v in want.items())


def is_stale(d: str | Path, name: str, source: str) -> bool:
    """True when `d` is not the directory the current compression code would make (reused on request)."""
    return Path(d).resolve() != model_dir(name, source).resolve()


def ensure_compressed(name: str, source: str, cache_root: Path | None = None, progress: bool = True) -> Path:
    """Compress once into the cache (atomic, by `egt.format`), return the directory."""
    ok, why = availability(name)
    if not ok:
        raise NotAvailable(why)
    d = model_dir(name, source, cache_root)
    from egt.format import MANIFEST

    if (d / MANIFEST).is_file():
        return d
    if os.environ.get("EGT_EVAL_REUSE_STALE"):
        # the compression code changed since a model was made (other work in progress): reuse the newest one for
        # these settings on request, and say so in the cell (prepare() records the directory it used)
        old = sorted((p for p in d.parent.glob(f"{slug(split_name(name)[0])}-*") if _made_with(p, name, source)),
                     key=lambda p: (p / MANIFEST).stat().st_mtime)
        if old:
            return old[-1]
    from egt.compress import CompressConfig, compress

    s = compress_settings(name, source)
    s.pop("source")
    cfg = CompressConfig(**s)
    import torch

    if cfg.recover_device == "cuda" and not torch.cuda.is_available():
        raise NotAvailable(f"{name} trains its recovery on a GPU and no model is cached at {d}: make it once on a "
                           "CUDA machine (egt eval with this configuration there), then copy the directory here")
    try:
        path, _plan, _secs = compress(source, d, cfg, progress=progress)
    except (NotImplementedError, ImportError, AttributeError) as e:
        raise NotAvailable(f"compression failed: {type(e).__name__}: {e}") from e
    _source_note(Path(path)).write_text(str(source))
    return Path(path)


def prepare(name: str, source: str = "default", device=None, dtype=None, cache_root: Path | None = None):
    """Engine for configuration `name` (the +ptpv suffix does not change the model)."""
    from egt.engine import Engine, resolve_device

    base, _ = split_name(name)
    dev = resolve_device(device)
    if dtype is None:
        dtype = "fp16" if dev.type == "cuda" else "fp32"
    if base == "fp16":
        return Engine.from_pretrained(source, device=dev, dtype=dtype)
    d = ensure_compressed(name, source, cache_root)
    return Engine.from_pretrained(str(d), device=dev, dtype=dtype)
