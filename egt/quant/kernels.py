"""W4A16 GEMV/GEMM on CUDA (Triton): y[M, N] = x[M, K] @ dequant(W)[N, K]^T for M <= 16 (decode, small batches).

Contract:
- `w4a16_matmul(x, qweight, scales, offsets, group, in_features)`: x [M, K] float16/bfloat16 on CUDA, qweight the
  4-bit layout of `egt.quant.packing` (int32 [N, ceil(K/8)], 8 codes per word along K), scales/offsets
  [N, G] (offsets None = symmetric, code 8 is zero). Returns y [M, N] in x's dtype. Accumulates in float32;
  the dequantized weight enters the tensor-core dot in float16 (exact for codes; scales/offsets are float16 already).
- `available()` says whether Triton and a CUDA device are present; callers fall back to dequantize-then-matmul.
- Tuning: the first call for a (M bucket, N, K, group, sym) times a handful of tile/split-K configurations and
  caches the fastest in-process (`_BEST`). Split-K writes float32 partial sums that a second tiny kernel adds up.
Why Triton: at batch 1-16 this is a pure weight-streaming problem; Triton's pipelined loads reach most of the copy
bandwidth with code short enough to read, and it compiles on the device machine without a build step.
"""
from __future__ import annotations

import functools

import torch

try:  # Triton is optional: CPU machines run the reference path of QuantLinear.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # pragma: no cover - depends on the machine
    HAVE_TRITON = False

MAX_M = 16


def available() -> bool:
    return HAVE_TRITON and torch.cuda.is_available()


if HAVE_TRITON:

    @triton.jit
    def _w4a16_kernel(x_ptr, qw_ptr, s_ptr, o_ptr, y_ptr, M, N, K, KW, G_COUNT, stride_xm,
                      GROUP: tl.constexpr, SYM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, GPB: tl.constexpr, USE_DOT: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        offs_m = tl.arange(0, BLOCK_M)
        m_mask = offs_m < M
        k_span = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
        k_lo = pid_k * k_span
        k_hi = tl.minimum(k_lo + k_span, K)
        shifts = tl.arange(0, 8) * 4
        if USE_DOT:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            offs_w = k0 // 8 + tl.arange(0, BLOCK_K // 8)
            words = tl.load(qw_ptr + offs_n[:, None] * KW + offs_w[None, :],
                            mask=n_mask[:, None] & (offs_w[None, :] < KW), other=0)
            q = (words[:, :, None] >> shifts[None, None, :]) & 0xF  # [BN, BK/8, 8]
            q = tl.reshape(q, (BLOCK_N, GPB, BLOCK_K // GPB)).to(tl.float32)
            g = k0 // GROUP + tl.arange(0, GPB)
            sg_mask = n_mask[:, None] & (g[None, :] < G_COUNT)
            s = tl.load(s_ptr + offs_n[:, None] * G_COUNT + g[None, :], mask=sg_mask, other=0).to(tl.float32)
            if SYM:
                w = (q - 8.0) * s[:, :, None]
            else:
                o = tl.load(o_ptr + offs_n[:, None] * G_COUNT + g[None, :], mask=sg_mask, other=0).to(tl.float32)
                w = q * s[:, :, None] + o[:, :, None]
            w = tl.reshape(w, (BLOCK_N, BLOCK_K))
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < k_hi
            if USE_DOT:
                xt = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                             mask=m_mask[:, None] & k_mask[None, :], other=0.0)
                acc += tl.dot(xt.to(tl.float16), tl.trans(w.to(tl.float16)))
            else:
                xv = tl.load(x_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
                acc += tl.sum(w * xv[None, :], axis=1)
        # y is [SPLIT_K, M, N] float32 partials when SPLIT_K > 1, else [M, N] in the output dtype.
        y_base = y_ptr + pid_k * M * N
        if USE_DOT:
            ptrs = y_base + offs_m[:, None] * N + offs_n[None, :]
            tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])
        else:
            tl.store(y_base + offs_n, acc.to(y_ptr.dtype.element_ty), mask=n_mask)

    @triton.jit
    def _sum_splits_kernel(p_ptr, y_ptr, MN, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < MN
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in range(SPLIT_K):
            acc += tl.load(p_ptr + s * MN + offs, mask=mask, other=0.0)
        tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


# (BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages)
CONFIGS_GEMV = [(bn, bk, sk, nw, 3) for bn in (4, 8, 16) for bk in (256, 512) for sk in (1, 2, 4) for nw in (2, 4)]
CONFIGS_GEMM = [(bn, bk, sk, nw, 3) for bn in (16, 32, 64) for bk in (128, 256) for sk in (1, 2, 4) for nw in (4,)]
_BEST: dict[tuple, tuple] = {}


def _launch(x, qweight, scales, offsets, group, K, cfg, use_dot):
    bn, bk, sk, nw, ns = cfg
    M = x.shape[0]
    N = qweight.shape[0]
    G = scales.shape[1]
    GROUP = K if group == -1 else group
    gpb = bk // GROUP if GROUP < bk else 1
    if sk > 1:
        part = torch.empty((sk, M, N), device=x.device, dtype=torch.float32)
    else:
        part = torch.empty((M, N), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(N, bn), sk)
    _w4a16_kernel[grid](x, qweight, scales, scales if offsets is None else offsets, part, M, N, K,
                        qweight.shape[1], G, x.stride(0), GROUP=GROUP, SYM=offsets is None, BLOCK_M=16,
                        BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, GPB=gpb, USE_DOT=use_dot, num_warps=nw, num_stages=ns)
    if sk == 1:
        return part
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    block = 1024
    _sum_splits_kernel[(triton.cdiv(M * N, block),)](part, y, M * N, SPLIT_K=sk, BLOCK=block, num_warps=4)
    return y


def _time(fn, reps=20) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def _valid(cfg, group, K, use_dot):
    bn, bk, *_ = cfg
    GROUP = K if group == -1 else group
    # A block must hold whole groups, or lie inside one group.
    if GROUP < bk and bk % GROUP:
        return False
    if GROUP >= bk and group != -1 and GROUP % bk:
        return False
    return not use_dot or bn >= 16


def best_config(x, qweight, scales, offsets, group, K):
    M = x.shape[0]
    use_dot = M > 1
    key = (1 if M == 1 else 16, qweight.shape[0], K, group, offsets is None, x.dtype)
    if key not in _BEST:
        configs = [c for c in (CONFIGS_GEMM if use_dot else CONFIGS_GEMV) if _valid(c, group, K, use_dot)]
        timed = []
        for c in configs:
            try:
                timed.append((_time(lambda: _launch(x, qweight, scales, offsets, group, K, c, use_dot)), c))
            except Exception:  # a config the compiler rejects (e.g. too much shared memory) is skipped
                continue
        if not timed:
            raise RuntimeError(f"no W4A16 kernel configuration compiles for N={qweight.shape[0]} K={K} g={group}")
        _BEST[key] = (min(timed)[1], use_dot)
    return _BEST[key]


def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None,
                 group: int, in_features: int, config: tuple | None = None) -> torch.Tensor:
    """y = x @ dequant(W)^T for x [M, K], M <= 16; see the module docstring."""
    if not available():
        raise RuntimeError("w4a16_matmul needs Triton and a CUDA device")
    if x.dim() != 2 or x.shape[1] != in_features:
        raise ValueError(f"x must be [M, {in_features}], got {tuple(x.shape)}")
    if x.shape[0] > MAX_M:
        raise ValueError(f"w4a16_matmul handles M <= {MAX_M}; got M={x.shape[0]}")
    x = x.contiguous()
    if config is None:
        config, use_dot = best_config(x, qweight, scales, offsets, group, in_features)
    else:
        use_dot = x.shape[0] > 1
    return _launch(x, qweight, scales, offsets, group, in_features, config, use_dot)
