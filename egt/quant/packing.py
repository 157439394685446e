"""Bit packing of quantization codes into int32 words (the on-disk and in-GPU-memory layout of `QuantLinear`).

Layout of `qweight` (int32, shape [out, W]); codes of one output row are packed along the input dimension (K),
so a row of the weight is one contiguous run of words. Words are little-endian int32 (bit 0 = least significant);
values are unsigned codes, the sign bit of an int32 word is just bit 31.

- 8 bits: 4 codes per word; code k sits in bits 8*(k%4) .. 8*(k%4)+7 of word k//4.  W = ceil(in/4).
- 4 bits: 8 codes per word; code k sits in bits 4*(k%8) .. 4*(k%8)+3 of word k//8.   W = ceil(in/8).
- 3 bits: 32 codes per block of 3 words (exactly 3 bits per weight). For block b (codes 32b .. 32b+31), with
  j = k - 32b:
      word 3b+0: bits 2j .. 2j+1            = low 2 bits of codes j = 0..15
      word 3b+1: bits 2(j-16) .. 2(j-16)+1  = low 2 bits of codes j = 16..31
      word 3b+2: bit j                      = high bit (bit 2) of codes j = 0..31
  W = 3 * ceil(in/32). Splitting low and high planes keeps decoding to shifts and masks with no straddling.
Rows are zero-padded up to the packing unit (8, 4 or 32 codes); padded codes are 0 and never read by a
matmul because x has only `in` columns. The default model's widths (576, 1536, 8960, ...) need no padding.

`pack(q, bits)` / `unpack(words, bits, in_features)` are exact inverses on codes in [0, 2**bits - 1].
"""
from __future__ import annotations

import torch

UNIT = {8: 4, 4: 8, 3: 32}  # codes per packing unit


def packed_words(in_features: int, bits: int) -> int:
    unit = UNIT[bits]
    blocks = -(-in_features // unit)
    return blocks * (3 if bits == 3 else 1)


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    # Build words in int64, then wrap into int32's range (two's complement) so bit 31 can be set.
    x = x & 0xFFFFFFFF
    return torch.where(x >= 2 ** 31, x - 2 ** 32, x).to(torch.int32)


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8/int codes [out, in] in [0, 2**bits-1] -> int32 words [out, packed_words(in, bits)]."""
    if bits not in UNIT:
        raise ValueError(f"bits must be 3, 4 or 8, got {bits}")
    if q.dim() != 2:
        raise ValueError(f"codes must be 2-D [out, in], got shape {tuple(q.shape)}")
    out_f, in_f = q.shape
    unit = UNIT[bits]
    blocks = -(-in_f // unit)
    q = q.to(torch.int64)
    if q.numel() and (int(q.min()) < 0 or int(q.max()) >= 2 ** bits):
        raise ValueError(f"codes out of range for {bits} bits")
    if blocks * unit != in_f:
        q = torch.nn.functional.pad(q, (0, blocks * unit - in_f))
    q = q.view(out_f, blocks, unit)
    if bits in (4, 8):
        shifts = torch.arange(unit, device=q.device, dtype=torch.int64) * bits
        return _to_int32((q << shifts).sum(-1))
    shifts2 = torch.arange(16, device=q.device, dtype=torch.int64) * 2
    lo = q & 3
    w0 = (lo[..., :16] << shifts2).sum(-1)
    w1 = (lo[..., 16:] << shifts2).sum(-1)
    w2 = ((q >> 2) << torch.arange(32, device=q.device, dtype=torch.int64)).sum(-1)
    return _to_int32(torch.stack((w0, w1, w2), -1).view(out_f, blocks * 3))


def unpack(words: torch.Tensor, bits: int, in_features: int) -> torch.Tensor:
    """int32 words [out, W] -> uint8 codes [out, in_features]."""
    if bits not in UNIT:
        raise ValueError(f"bits must be 3, 4 or 8, got {bits}")
    out_f = words.shape[0]
    if words.shape[1] != packed_words(in_features, bits):
        raise ValueError(f"{words.shape[1]} words per row do not hold {in_features} {bits}-bit codes")
    w = words.to(torch.int64) & 0xFFFFFFFF
    if bits in (4, 8):
        unit = UNIT[bits]
        shifts = torch.arange(unit, device=w.device, dtype=torch.int64) * bits
        q = (w.unsqueeze(-1) >> shifts) & (2 ** bits - 1)
    else:
        w = w.view(out_f, -1, 3)
        shifts2 = torch.arange(16, device=w.device, dtype=torch.int64) * 2
        lo = torch.cat(((w[..., 0:1] >> shifts2) & 3, (w[..., 1:2] >> shifts2) & 3), -1)
        hi = (w[..., 2:3] >> torch.arange(32, device=w.device, dtype=torch.int64)) & 1
        q = lo | (hi << 2)
    return q.reshape(out_f, -1)[:, :in_features].to(torch.uint8)
