"""The hybrid engine: prefill on the torch path, decode as one MegaKernel launch per step over the same cache.

Contract:
- `attach(engine)` is what `Engine(backend="megakernel")` calls: it keeps the engine's prefill (SDPA + cuBLAS via
  `Transformer.forward`) and replaces `engine.decode_step(tokens, pad, slot, cache)` with a MegaKernel launch that
  writes the same cache rows and returns the same logits [B, V] (float32). One decoder (one compiled plan) is kept
  per batch size; left padding maps to `attn_start = pad` and RoPE position `slot - pad`, as in the torch path.
- The engine must hold bf16/fp16 weights on a CUDA device; otherwise `attach` raises `MegaKernelError` at once
  rather than failing in the middle of generation.
"""
from __future__ import annotations

import torch

from .runtime import MegaKernelDecoder, MegaKernelError


def attach(engine, profile: str | None = None) -> None:
    if engine.device.type != "cuda":
        raise MegaKernelError("backend='megakernel' needs a CUDA device")
    if engine.model.dtype not in (torch.bfloat16, torch.float16):
        raise MegaKernelError(f"backend='megakernel' needs bf16/fp16 weights, got {engine.model.dtype}")
    decoders: dict[int, MegaKernelDecoder] = {}

    @torch.inference_mode()
    def decode_step(tokens: torch.Tensor, pad: torch.Tensor, slot: int, cache) -> torch.Tensor:
        b = int(tokens.numel())
        dec = decoders.get(b)
        if dec is None:
            dec = decoders[b] = MegaKernelDecoder(engine.model, batch=b, profile=profile)
        pad = pad.to(device=engine.device).view(b)
        _, logits = dec.step(tokens.view(b), slot - pad, pad, slot, cache)
        return logits.clone()

    engine.decode_step = decode_step
    engine.megakernel_decoders = decoders
