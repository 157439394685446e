"""A small Llama-family decoder (Llama, Mistral, Qwen2, Qwen3) written for decoding, gpt-fast style.

Contract:
- Parameter names match Hugging Face's (`embed_tokens`, `layers.{i}.self_attn.q_proj`, ...), so an HF state
  dict loads with the `model.` prefix stripped, and every projection is an `nn.Linear` that compression can swap
  for a packed module (`egt.quant`, `egt.sparsify`) without touching this file.
- The KV cache is preallocated (`setup_cache`) and written in place at explicit cache `slots`; RoPE `pos` is passed
  separately from the slots, which lets tree verification (`egt.verify`) put many sibling nodes at one depth.
- `forward` returns float32 logits for every input position.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import ModelShape


@dataclass
class KVCache:
    """Preallocated keys and values: [layers, batch, kv_heads, max_len, head_dim]."""

    k: torch.Tensor
    v: torch.Tensor

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def reorder(self, index: torch.Tensor) -> None:
        """Gather batch rows in place (beam search keeps the surviving beams)."""
        self.k.copy_(self.k.index_select(1, index))
        self.v.copy_(self.v.index_select(1, index))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 as HF does, so greedy decoding matches it token for token.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, s: ModelShape):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = s.heads, s.kv_heads, s.head_dim
        self.q_proj = nn.Linear(s.hidden, s.heads * s.head_dim, bias=s.qkv_bias)
        self.k_proj = nn.Linear(s.hidden, s.kv_heads * s.head_dim, bias=s.qkv_bias)
        self.v_proj = nn.Linear(s.hidden, s.kv_heads * s.head_dim, bias=s.qkv_bias)
        self.o_proj = nn.Linear(s.heads * s.head_dim, s.hidden, bias=False)
        if s.qk_norm:  # Qwen3 normalises each head of q and k before RoPE
            self.q_norm = RMSNorm(s.head_dim, s.rms_eps)
            self.k_norm = RMSNorm(s.head_dim, s.rms_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, layer_k, layer_v, slots, mask, kv_len):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        layer_k.index_copy_(2, slots, k.to(layer_k.dtype))
        layer_v.index_copy_(2, slots, v.to(layer_v.dtype))
        keys, values = layer_k[:, :, :kv_len], layer_v[:, :, :kv_len]
        out = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask,
                                             enable_gqa=self.kv_heads != self.heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, s: ModelShape):
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden, s.intermediate, bias=False)
        self.up_proj = nn.Linear(s.hidden, s.intermediate, bias=False)
        self.down_proj = nn.Linear(s.intermediate, s.hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, s: ModelShape):
        super().__init__()
        self.self_attn = Attention(s)
        self.mlp = MLP(s)
        self.input_layernorm = RMSNorm(s.hidden, s.rms_eps)
        self.post_attention_layernorm = RMSNorm(s.hidden, s.rms_eps)

    def forward(self, x, cos, sin, layer_k, layer_v, slots, mask, kv_len):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layer_k, layer_v, slots, mask, kv_len)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, shape: ModelShape, inv_freq: torch.Tensor | None = None, attention_scaling: float = 1.0):
        super().__init__()
        self.shape = shape
        self.embed_tokens = nn.Embedding(shape.vocab, shape.hidden)
        self.layers = nn.ModuleList(Block(shape) for _ in range(shape.layers))
        self.norm = RMSNorm(shape.hidden, shape.rms_eps)
        self.lm_head = nn.Linear(shape.hidden, shape.vocab, bias=False)
        if shape.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        if inv_freq is None:
            inv_freq = 1.0 / (shape.rope_theta ** (torch.arange(0, shape.head_dim, 2, dtype=torch.float32) / shape.head_dim))
        # RoPE frequencies are part of the architecture (llama3 scaling etc. is folded in by the loader).
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.attention_scaling = attention_scaling

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.norm.weight.dtype

    def setup_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> KVCache:
        s = self.shape
        size = (s.layers, batch, s.kv_heads, max_len, s.head_dim)
        kw = dict(dtype=dtype or self.dtype, device=device or self.device)
        return KVCache(torch.zeros(size, **kw), torch.zeros(size, **kw))

    def rope(self, pos: torch.Tensor, dtype: torch.dtype):
        freqs = pos.float().unsqueeze(-1) * self.inv_freq  # [B, T, head_dim/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.attention_scaling).to(dtype).unsqueeze(1)
        sin = (emb.sin() * self.attention_scaling).to(dtype).unsqueeze(1)
        return cos, sin

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, cache: KVCache,
                mask: torch.Tensor | None = None, kv_len: int | None = None,
                hidden_only: bool = False) -> torch.Tensor:
        """tokens, pos: [B, T]; slots: [T] cache rows to write; mask: bool [B or 1, 1, T, kv_len] (True = attend).

        Without a mask, token j of this call attends to every cache row < slots[0] plus rows slots[:j+1],
        i.e. plain causal decoding when slots are contiguous.
        """
        if kv_len is None:
            kv_len = int(slots.max()) + 1
        if mask is None:
            rows = torch.arange(kv_len, device=tokens.device)
            mask = (rows.unsqueeze(0) <= slots.unsqueeze(1)).view(1, 1, len(slots), kv_len)
        x = self.embed_tokens(tokens)
        cos, sin = self.rope(pos, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache.k[i], cache.v[i], slots, mask, kv_len)
        x = self.norm(x)
        if hidden_only:
            return x
        return self.lm_head(x).float()
