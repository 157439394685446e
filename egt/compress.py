"""`egt compress`: checkpoint -> calibration -> plan -> packed modules -> compressed directory.

Contract:
- `CompressConfig` is what the user asks for (bits, budget, sparsity, density, ...). The stages turn it into a
  `CompressionPlan` (the one per-module description) and pack the model according to that plan; this file only
  orders the stages.
- Sparsification runs before quantization, so the quantizer sees (and quantizes) only the kept values.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .format import save_compressed
from .models import DEFAULT_MODEL, load_model
from .plan import CompressionPlan

SPARSITY_CHOICES = ("none", "2:4", "1:4", "mix")


@dataclass
class CompressConfig:
    bits: int | None = None  # None: keep weights in float
    budget: float | None = None  # average bits per weight, scales and zero points included
    group_size: int | None = None  # fixed group size; None lets the allocator choose per layer
    sparsity: str = "none"
    density: float | None = None  # target average density for sparsity="mix"
    calibration: str | None = None  # path of calibration data; None uses the demo ads
    calibration_samples: int = 32
    dtype: str = "fp16"  # float dtype of what stays in float
    seed: int = 0
    # Method choices; None takes each stage's measured default (egt.quant.DEFAULT_*, egt.sparsify.SparsifyOptions),
    # and each stage validates its own names.
    quant_refine: str | None = None  # gptq | clip | rtn | awq | awq+gptq
    quant_metric: str | None = None  # sensitivity metric of the allocator
    sparse_method: str | None = None  # wanda | sparsegpt | wanda+obs
    sparse_metric: str | None = None  # layer importance: alone_kl | block_influence | outlier_ratio
    sparse_granularity: str | None = None  # layer | module
    # oneshot (statistics of the dense model) | sequential (layer by layer on the already-compressed model's
    # activations) | sequential-module (per group of modules sharing an input); None = the stage's measured default.
    calibration_mode: str | None = None
    # Recovery distillation after pruning (egt.sparsify.recover): steps of training the kept values towards the
    # dense model, on `recover_samples` texts of `recover_data` (None: the calibration source). 0 = off.
    recover_steps: int = 0
    recover_samples: int = 1024
    recover_data: str | None = None
    recover_device: str = "cpu"  # cpu | cuda: where the recovery steps run (everything else runs on the CPU)

    def validate(self) -> None:
        if self.bits is not None and self.bits not in (3, 4, 8):
            raise ValueError(f"--bits must be 3, 4 or 8, got {self.bits}")
        if self.budget is not None and self.bits is None:
            raise ValueError("--budget needs --bits")
        if self.budget is not None and not 1.0 < self.budget < 16.0:
            raise ValueError(f"--budget must be between 1 and 16 bits per weight, got {self.budget}")
        if self.sparsity not in SPARSITY_CHOICES:
            raise ValueError(f"--sparsity must be one of {', '.join(SPARSITY_CHOICES)}, got {self.sparsity!r}")
        if self.density is not None:
            if self.sparsity != "mix":
                raise ValueError("--density applies to --sparsity mix only")
            if not 0.25 <= self.density <= 1.0:
                raise ValueError(f"--density must be within [0.25, 1.0], got {self.density}")
        if self.calibration_mode not in (None, "oneshot", "sequential", "sequential-module"):
            raise ValueError(f"calibration_mode must be oneshot, sequential or sequential-module, "
                             f"got {self.calibration_mode!r}")
        if self.recover_steps < 0 or self.recover_samples < 1:
            raise ValueError(f"--recover-steps must be >= 0 and --recover-samples >= 1, got {self.recover_steps}, "
                             f"{self.recover_samples}")
        if self.recover_steps and self.sparsity == "none":
            raise ValueError("--recover-steps repairs pruning: it needs --sparsity")
        if self.recover_device not in ("cpu", "cuda"):
            raise ValueError(f"--recover-device must be cpu or cuda, got {self.recover_device!r}")
        if self.recover_steps and self.recover_device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--recover-device cuda: no CUDA device here")
        if self.dtype not in ("fp16", "bf16", "fp32"):
            raise ValueError(f"--dtype must be fp16, bf16 or fp32, got {self.dtype!r}")

    @property
    def method(self) -> str:
        parts = []
        if self.sparsity != "none":
            parts.append(f"sparse-{self.sparsity}")
        if self.bits is not None:
            parts.append(f"int{self.bits}")
        return "+".join(parts) or "none"


def compress_model(loaded, cfg: CompressConfig, progress: bool = True) -> CompressionPlan:
    """Compress `loaded.model` in place according to `cfg`; return the plan that describes it."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    plan = CompressionPlan(method=cfg.method, meta={"config": asdict(cfg)})
    if cfg.sparsity == "none" and cfg.bits is None:
        return plan
    from .data import calibration_texts

    texts = calibration_texts(cfg.calibration, n=cfg.calibration_samples, seed=cfg.seed)
    if cfg.sparsity != "none":
        from .sparsify import sparsify_model

        if not cfg.recover_steps:
            plan = sparsify_model(loaded, plan, cfg, texts, progress=progress)
        else:
            # Prune in float (the quantizer then rounds the recovered kept values), against a copy of the dense
            # model as the teacher.
            from .sparsify.recover import RecoverOptions, recover

            rtexts = calibration_texts(cfg.recover_data or cfg.calibration, n=cfg.recover_samples, seed=cfg.seed + 1)
            teacher = copy.deepcopy(loaded.model)
            plan = sparsify_model(loaded, plan, dataclasses.replace(cfg, bits=None), texts, progress=progress)
            # Training is the slow part (~5 s a step on 2 CPU cores for the default model): it alone may run on a
            # GPU; the models come back to the CPU for quantization and saving.
            dev = torch.device(cfg.recover_device)
            rep = recover(loaded.model.to(dev), teacher.to(dev), loaded.tokenizer, rtexts,
                          RecoverOptions(steps=cfg.recover_steps, seed=cfg.seed), progress=progress)
            loaded.model.to("cpu")
            del teacher
            plan.meta["recover"] = {k: v for k, v in rep.items() if k != "losses"}
    if cfg.bits is not None:
        from .quant import quantize_model

        plan = quantize_model(loaded, plan, cfg, texts, progress=progress)
    return plan


def compress(source: str = DEFAULT_MODEL, out: str | Path = "egt-out", cfg: CompressConfig | None = None,
             progress: bool = True) -> tuple[Path, CompressionPlan, float]:
    """Load, compress and save; returns (directory, plan, seconds)."""
    cfg = cfg or CompressConfig()
    cfg.validate()
    t0 = time.perf_counter()
    loaded = load_model(source, dtype=torch.float32, device="cpu")
    plan = compress_model(loaded, cfg, progress=progress)
    from .engine import DTYPES

    loaded.model.to(DTYPES[cfg.dtype])
    path = save_compressed(loaded.model, loaded.tokenizer, loaded.hf_config, plan, out,
                           extra={"source": loaded.source})
    return path, plan, time.perf_counter() - t0
