"""The compressed-model directory: safetensors shards + HF config/tokenizer + an egt manifest.

Layout of a directory written by `save_compressed`:
    config.json, generation_config.json, tokenizer files   (Hugging Face, unchanged)
    model-00001-of-0000N.safetensors ...                   (tensors; packed modules keep their own names)
    model.safetensors.index.json                           (tensor -> shard, HF style)
    egt_manifest.json                                      (format version, method, plan, shape, sha256 of every file)

Contract:
- Saving is atomic: everything is written into a hidden sibling directory, fsynced, then renamed into place, so a
  crash leaves either the old directory or the new one, never a half-written one.
- Loading verifies every file's size and sha256 against the manifest before reading a tensor, and raises
  `CorruptModelError` naming the file on a mismatch, a truncation, a missing or an unexpected file.
- No pickle anywhere: tensors are safetensors, metadata is JSON.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from . import __version__
from .plan import CompressionPlan

MANIFEST = "egt_manifest.json"
FORMAT_VERSION = 1
SHARD_BYTES = 1 << 30


class CorruptModelError(ValueError):
    """A compressed directory that fails verification; the message names the file."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_directory(out: Path | str, overwrite: bool = True):
    """Yield a temporary directory next to `out`; on success it replaces `out` in one rename."""
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rmdir(old)
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(directory: Path, fields: dict) -> dict:
    directory = Path(directory)
    files = {f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
             for f in sorted(directory.iterdir()) if f.is_file() and f.name != MANIFEST}
    manifest = {"egt_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **fields, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def read_manifest(directory: Path | str) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CorruptModelError(f"{directory}: no {MANIFEST}; not an egt directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CorruptModelError(f"{path}: manifest is not valid JSON ({e.msg} at line {e.lineno})")


def verify_directory(directory: Path | str) -> dict:
    """Check every file against the manifest; return the manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise CorruptModelError(f"{directory}: manifest lists no files")
    for name, meta in files.items():
        f = directory / name
        if not f.is_file():
            raise CorruptModelError(f"{directory}: {name} is missing")
        size = f.stat().st_size
        if size != meta["bytes"]:
            raise CorruptModelError(f"{directory}: {name} has {size} bytes, manifest says {meta['bytes']} (truncated or altered)")
        if sha256_file(f) != meta["sha256"]:
            raise CorruptModelError(f"{directory}: {name} fails its sha256 check (corrupted)")
    extra = sorted(p.name for p in directory.iterdir() if p.suffix == ".safetensors" and p.name not in files)
    if extra:
        raise CorruptModelError(f"{directory}: {extra[0]} is not listed in the manifest")
    return manifest


def is_compressed_dir(directory: Path | str) -> bool:
    p = Path(directory) / MANIFEST
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("egt_format") == FORMAT_VERSION
    except (OSError, json.JSONDecodeError):
        return True  # claims to be ours; let verification report the damage


def _tensors_to_save(model) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if model.shape.tie_embeddings and "lm_head.weight" in state:
        del state["lm_head.weight"]  # tied: stored once, as the embedding
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_compressed(model, tokenizer, hf_config, plan: CompressionPlan, out: Path | str,
                    shard_bytes: int = SHARD_BYTES, extra: dict | None = None) -> Path:
    """Write `model` (already compressed according to `plan`) as an egt directory, atomically."""
    from safetensors.torch import save_file

    from .models import shape_dict

    tensors = _tensors_to_save(model)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    out = Path(out)
    with atomic_directory(out) as tmp:
        hf_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, tmp / fname, metadata={"format": "pt", "egt_format": str(FORMAT_VERSION)})
            weight_map.update({k: fname for k in shard})
        (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
        write_manifest(tmp, {"egt_format": FORMAT_VERSION, "method": plan.method, "plan": plan.to_dict(),
                             "shape": shape_dict(model.shape), "dtype": str(model.dtype).replace("torch.", ""),
                             **(extra or {})})
    return out


def load_compressed(directory: Path | str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Verify, then load an egt directory into (Transformer with packed modules, tokenizer, HF config)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    from .models import ModelShape, build_model
    from .modules import install_compressed_modules

    directory = Path(directory)
    manifest = verify_directory(directory)
    if manifest.get("egt_format") != FORMAT_VERSION:
        raise CorruptModelError(f"{directory}: egt_format {manifest.get('egt_format')!r} is not supported (expected {FORMAT_VERSION})")
    plan = CompressionPlan.from_dict(manifest["plan"])
    shape = ModelShape(**manifest["shape"])
    cfg = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    tok = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    model = build_model(shape, cfg)
    install_compressed_modules(model, plan)
    state = {}
    for f in sorted(directory.glob("*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (shape.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise CorruptModelError(f"{directory}: tensors do not match the plan ({what})")
    if shape.tie_embeddings and not hasattr(model.lm_head, "qweight"):
        model.lm_head.weight = model.embed_tokens.weight
    model.plan = plan
    return model.to(device=device, dtype=dtype).eval(), tok, cfg
