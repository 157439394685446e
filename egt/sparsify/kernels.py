"""Sparse (2:4, 1:4) and dense W4A16 GEMV in Triton, for decode batches of 1-8 rows.

Contract:
- `sparse_w4_gemv(x [B, in], qweight, indices, scales, offsets, n, group)` computes x @ W^T for the packed N:4
  INT4 weight of `SparseQuantLinear` (kept-value codes in egt.quant's int32 layout, 2-bit in-group positions four
  per byte, fp16 scales and optional offsets per group of `group` kept values: w = scale * code + offset);
  `n=4` with `indices=None` is the same kernel on a dense INT4 `QuantLinear` weight, so that variant differs only
  in what it reads.
- Output dtype = x dtype; accumulation in fp32. 1 <= B <= 8.
- Checked against the dense-expanded dequantized weight in float32 (tests/test_sparsify_kernels.py, CUDA only).

Design (why):
- No gather from global memory: row r keeps value k of group k // n at position idx (0..3); the program loads the
  activation block once as four strided vectors x[4g + p], shared by all its rows, and picks x[4g + idx] with two
  levels of selects on the index bits. Only packed weight bytes stream from DRAM: 6 bits per kept value against
  4 bits per weight dense (+ scales).
- Codes become floats by the exponent trick (code | 0x4B000000 reinterpreted as fp32 is 2^23 + code), not by an
  int-to-float conversion, which runs at a fraction of the FMA rate and bounded the first version.
- Codes and indices are unpacked with tl.join (no layout conversion); a version that unpacked int32 words through
  a 3-D broadcast shift + reshape and accumulated elementwise was ~1.4x slower (bench/results/sparse_kernels.md).
- Long rows (down_proj: in = 8960) get split-K: partial sums are atomically added into an fp32 buffer.
- Tuning: the first call per (shape, pattern, batch, dtype) times a few (BLOCK_N, BLOCK_K, warps, split) configs
  and caches the fastest in-process.
"""
from __future__ import annotations

import functools

import torch

_BEST: dict[tuple, tuple[int, int, int, int]] = {}
# (BLOCK_N, BLOCK_K, num_warps, split_k); split-K is tried only where a split still has >= 1024 kept values.
CONFIGS = [(4, 128, 2, 1), (8, 128, 4, 1), (8, 256, 4, 1), (16, 128, 4, 1), (4, 256, 4, 1), (16, 64, 4, 1),
           (2, 256, 2, 1), (8, 64, 2, 1), (4, 256, 4, 2), (2, 256, 2, 2), (4, 256, 4, 4)]


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def w4_gemv(x_ptr, q_ptr, idx_ptr, s_ptr, o_ptr, y_ptr, OUT, KC: tl.constexpr, NG, QROW, stride_x, stride_y,
                N: tl.constexpr, GROUP: tl.constexpr, B: tl.constexpr, BPAD: tl.constexpr, SYM: tl.constexpr,
                GATHER: tl.constexpr, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid = tl.program_id(0)
        pid_k = tl.program_id(1)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < OUT
        rows64 = rows.to(tl.int64)
        bcol = tl.arange(0, BPAD)
        acc = tl.zeros([BLOCK_N, BPAD], dtype=tl.float32)
        span: tl.constexpr = ((KC + SPLIT - 1) // SPLIT + BLOCK_K - 1) // BLOCK_K * BLOCK_K
        for it in range(0, span, BLOCK_K):  # fixed trip count; steps past KC are fully masked
            k0 = pid_k * span + it
            kk = k0 + tl.arange(0, BLOCK_K)
            kmask = kk < KC
            # Two codes per byte, first in the low nibble (egt.quant.packing's int32 words, read as bytes);
            # join(lo, hi) puts them back in order without a layout shuffle.
            kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            qb = tl.load(q_ptr + rows64[:, None] * QROW + kb[None, :],
                         mask=rmask[:, None] & (kb[None, :] < (KC + 1) // 2), other=0).to(tl.int32)
            q = tl.reshape(tl.join(qb & 15, qb >> 4), (BLOCK_N, BLOCK_K))
            qf = (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            if GROUP >= BLOCK_K:
                g = k0 // GROUP
                gm = rmask & (g < NG)
                s = tl.load(s_ptr + rows64 * NG + g, mask=gm, other=0.0).to(tl.float32)[:, None]
                if SYM:
                    o = -8.0 * s
                else:
                    o = tl.load(o_ptr + rows64 * NG + g, mask=gm, other=0.0).to(tl.float32)[:, None]
            else:
                sp = rows64[:, None] * NG + (kk // GROUP)[None, :]
                smask = rmask[:, None] & kmask[None, :]
                s = tl.load(s_ptr + sp, mask=smask, other=0.0).to(tl.float32)
                if SYM:
                    o = -8.0 * s
                else:
                    o = tl.load(o_ptr + sp, mask=smask, other=0.0).to(tl.float32)
            w = qf * s + o
            if N != 4:
                # Four 2-bit positions per byte, first in the low bits; joining twice restores their order.
                ib = k0 // 4 + tl.arange(0, BLOCK_K // 4)
                ibyte = tl.load(idx_ptr + rows64[:, None] * (KC // 4) + ib[None, :],
                                mask=rmask[:, None] & (ib[None, :] < KC // 4), other=0).to(tl.int32)
                idx = tl.reshape(tl.join(tl.join(ibyte & 3, (ibyte >> 4) & 3),
                                         tl.join((ibyte >> 2) & 3, (ibyte >> 6) & 3)), (BLOCK_N, BLOCK_K))
            for b in tl.static_range(B):
                xrow = x_ptr + b * stride_x
                if N == 4:
                    xv = tl.load(xrow + kk, mask=kmask, other=0.0).to(tl.float32)[None, :]
                elif GATHER:
                    cols = (kk // N)[None, :] * 4 + idx
                    xv = tl.load(xrow + cols, mask=rmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
                else:
                    grp = k0 // N + tl.arange(0, BLOCK_K // N)
                    gmask = grp < KC // N
                    x0 = tl.load(xrow + grp * 4, mask=gmask, other=0.0).to(tl.float32)
                    x1 = tl.load(xrow + grp * 4 + 1, mask=gmask, other=0.0).to(tl.float32)
                    x2 = tl.load(xrow + grp * 4 + 2, mask=gmask, other=0.0).to(tl.float32)
                    x3 = tl.load(xrow + grp * 4 + 3, mask=gmask, other=0.0).to(tl.float32)
                    if N == 2:  # a group holds two kept values: repeat its activations for both
                        x0 = tl.reshape(tl.join(x0, x0), (BLOCK_K,))
                        x1 = tl.reshape(tl.join(x1, x1), (BLOCK_K,))
                        x2 = tl.reshape(tl.join(x2, x2), (BLOCK_K,))
                        x3 = tl.reshape(tl.join(x3, x3), (BLOCK_K,))
                    odd = (idx & 1) != 0
                    lo = tl.where(odd, x1[None, :], x0[None, :])
                    hi = tl.where(odd, x3[None, :], x2[None, :])
                    xv = tl.where((idx & 2) != 0, hi, lo)
                part = tl.sum(w * xv, axis=1)
                acc += tl.where(bcol[None, :] == b, part[:, None], 0.0)
        y = y_ptr + bcol[None, :] * stride_y + rows64[:, None]
        ymask = rmask[:, None] & (bcol[None, :] < B)
        if SPLIT == 1:
            tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=ymask)
        else:
            tl.atomic_add(y, acc, mask=ymask)

    return w4_gemv


def _launch(args, kw, out_f, b, dtype, device, cfg):
    bn, bk, warps, split = cfg
    x = args[0]
    if split == 1:
        y = torch.empty(b, out_f, dtype=dtype, device=device)
    else:
        y = torch.zeros(b, out_f, dtype=torch.float32, device=device)
    _kernel()[(-(-out_f // bn), split)](*args[:5], y, *args[5:], x.stride(0), y.stride(0), **kw, SPLIT=split,
                                        BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)
    return y if split == 1 else y.to(dtype)


def _tune(key, args, kw, out_f, b, dtype, device):
    import triton.testing

    best = None
    for cfg in CONFIGS:
        if cfg[3] > 1 and args[6] < 1024 * cfg[3]:  # split-K only for long rows
            continue
        try:
            t = triton.testing.do_bench(lambda: _launch(args, kw, out_f, b, dtype, device, cfg), warmup=5, rep=20)
        except Exception:  # a config the compiler rejects is skipped
            continue
        if best is None or t < best[0]:
            best = (t, cfg)
    if best is None:
        raise RuntimeError(f"no sparse GEMV configuration runs for {key}")
    _BEST[key] = best[1]
    return best[1]


def sparse_w4_gemv(x: torch.Tensor, qweight: torch.Tensor, indices: torch.Tensor | None, scales: torch.Tensor,
                   offsets: torch.Tensor | None, n: int, group: int, gather: bool = False,
                   config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """y [B, out] = x [B, in] @ W^T. qweight: int32 words of egt.quant.packing (8 codes per word, first in the
    low bits); kept values per row = in * n / 4.
    config: (BLOCK_N, BLOCK_K, num_warps, split_k) to skip tuning (tests); None tunes once per shape."""
    if x.dim() != 2 or not 1 <= x.shape[0] <= 8:
        raise ValueError(f"x must be [B, in] with 1 <= B <= 8, got {tuple(x.shape)}")
    if n not in (1, 2, 4):
        raise ValueError(f"n must be 1, 2 (sparse) or 4 (dense), got {n}")
    if (n == 4) != (indices is None):
        raise ValueError("indices are required for n=1/2 and must be None for dense (n=4)")
    if qweight.dtype != torch.int32:
        raise ValueError(f"qweight must be int32 words (egt.quant.packing), got {qweight.dtype}")
    in_f = x.shape[1]
    kc = in_f * n // 4
    out_f = qweight.shape[0]
    if qweight.shape[1] * 8 < kc or (indices is not None and indices.shape[1] * 4 != kc):
        raise ValueError(f"packed weight {tuple(qweight.shape)} does not hold {kc} kept values per row")
    b = x.shape[0]
    x = x.contiguous()
    group = kc if group == -1 else group
    qbytes = qweight.view(torch.uint8)
    args = (x, qbytes, qbytes if indices is None else indices, scales, scales if offsets is None else offsets,
            out_f, kc, scales.shape[1], qbytes.stride(0))
    kw = dict(N=n, GROUP=group, B=b, BPAD=max(2, 1 << (b - 1).bit_length()), SYM=offsets is None, GATHER=gather)
    if config is None:
        key = (out_f, kc, n, b, group, offsets is None, gather, x.dtype)
        config = _BEST.get(key) or _tune(key, args, kw, out_f, b, x.dtype, x.device)
    return _launch(args, kw, out_f, b, x.dtype, x.device, config)
