"""W4A16 GEMV/GEMM on CUDA (Triton): y[M, N] = x[M, K] @ dequant(W)[N, K]^T for M <= 16 (decode, small batches).

Contract:
- `w4a16_matmul(x, qweight, scales, offsets, group, in_features)`: x [M, K] float16/bfloat16 on CUDA, qweight the
  4-bit layout of `egt.quant.packing` (int32 [N, ceil(K/8)], 8 codes per word along K), scales/offsets
  [N, G] (offsets None = symmetric, code 8 is zero). Returns y [M, N] in x's dtype. Accumulates in float32;
  the dequantized weight enters the tensor-core dot in float16 (exact for codes; scales/offsets are float16 already).
- `available()` says whether Triton and a CUDA device are present; callers fall back to dequantize-then-matmul.
- Tuning: the first call for a (M bucket, N, K, group, sym) times a handful of tile/split-K configurations (in a
  CUDA graph) and caches the fastest in-process (`_BEST`); make that first call before capturing a graph of
  your own. Split-K writes float32 partial sums that a second tiny kernel adds up.
- Measured (bench/results/quant_kernels.md, H100, 2026-11-27): 1.0-1.6x faster than fp16 cuBLAS at M = 1 on most
  shapes but only 4-29% of copy bandwidth, far from the 75% goal; slower than fp16 cuBLAS at M = 4-16. That run's
  tuner timed host-bound plain launches (fixed since to time CUDA graphs, not re-measured), so its choices were
  close to arbitrary.
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
    def _nibble(words, j: tl.constexpr):
        # Nibble j as float32 without an int->float conversion (a quarter-rate instruction): OR the 4 bits into the
        # mantissa of 2**23 and subtract 2**23, which is exact.
        bits = ((words >> (4 * j)) & 0xF) | 0x4B000000
        return bits.to(tl.float32, bitcast=True) - 8388608.0

    # Sizes are not specialised (one compile serves every M, N, K); KW (words per row) is, so aligned rows get
    # vectorised loads. Both kernels work in "word space": a tile of int32 words is loaded once and nibble j of
    # every word is extracted with a shift, never by reshaping registers (a reshape costs a shared-memory round trip).
    @triton.jit(do_not_specialize=["N", "K", "k_span"])
    def _gemv_kernel(x_ptr, qw_ptr, s_ptr, o_ptr, y_ptr, N, K, KW, G_COUNT, k_span,
                     GROUP: tl.constexpr, SYM: tl.constexpr, BLOCK_N: tl.constexpr, GPB: tl.constexpr,
                     WPG: tl.constexpr, SPLIT_K: tl.constexpr):
        """M = 1. Per iteration: BLOCK_N rows x GPB group slices x WPG words (8 columns each)."""
        BLOCK_K: tl.constexpr = GPB * WPG * 8
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        gi = tl.arange(0, GPB)
        wi = tl.arange(0, WPG)
        acc = tl.zeros((BLOCK_N, GPB, WPG), dtype=tl.float32)
        k_lo = pid_k * k_span
        for kk in range(0, k_span, BLOCK_K):
            w0 = (k_lo + kk) // 8
            widx = w0 + gi[:, None] * WPG + wi[None, :]  # [GPB, WPG] word index within the row
            wmask = widx < KW
            words = tl.load(qw_ptr + offs_n[:, None, None] * KW + widx[None, :, :],
                            mask=n_mask[:, None, None] & wmask[None, :, :], other=0)
            part = tl.zeros((BLOCK_N, GPB, WPG), dtype=tl.float32)
            xsum = tl.zeros((GPB, WPG), dtype=tl.float32)
            for j in tl.static_range(8):
                col = widx * 8 + j
                xj = tl.load(x_ptr + col, mask=col < K, other=0.0).to(tl.float32)
                part += _nibble(words, j) * xj[None, :, :]
                xsum += xj
            g = (w0 * 8 + gi * (WPG * 8)) // GROUP  # group of each slice (a slice never straddles two groups)
            smask = n_mask[:, None] & (g[None, :] < G_COUNT)
            sc = tl.load(s_ptr + offs_n[:, None] * G_COUNT + g[None, :], mask=smask, other=0.0).to(tl.float32)
            if SYM:
                of = sc * -8.0
            else:
                of = tl.load(o_ptr + offs_n[:, None] * G_COUNT + g[None, :], mask=smask, other=0.0).to(tl.float32)
            # sum_k (s q_k + o) x_k = s * sum_k q_k x_k + o * sum_k x_k  (per group slice)
            acc += sc[:, :, None] * part + of[:, :, None] * xsum[None, :, :]
        y = tl.sum(tl.sum(acc, axis=2), axis=1)
        tl.store(y_ptr + pid_k * N + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_mask)

    @triton.jit(do_not_specialize=["M", "N", "K", "stride_xm", "k_span"])
    def _gemm_kernel(x_ptr, qw_ptr, s_ptr, o_ptr, y_ptr, M, N, K, KW, G_COUNT, stride_xm, k_span,
                     GROUP: tl.constexpr, SYM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_KW: tl.constexpr, SPLIT_K: tl.constexpr):
        """2 <= M <= 16: eight tensor-core dots per tile, one per nibble position (K = BLOCK_KW words each)."""
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_mask = offs_n < N
        offs_m = tl.arange(0, BLOCK_M)
        m_mask = offs_m < M
        wi = tl.arange(0, BLOCK_KW)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        k_lo = pid_k * k_span
        for kk in range(0, k_span, BLOCK_KW * 8):
            widx = (k_lo + kk) // 8 + wi
            wmask = widx < KW
            words = tl.load(qw_ptr + offs_n[:, None] * KW + widx[None, :], mask=n_mask[:, None] & wmask[None, :],
                            other=0)  # [BN, BKW]
            g = widx * 8 // GROUP
            smask = n_mask[:, None] & wmask[None, :]
            sc = tl.load(s_ptr + offs_n[:, None] * G_COUNT + g[None, :], mask=smask, other=0.0).to(tl.float32)
            if SYM:
                of = sc * -8.0
            else:
                of = tl.load(o_ptr + offs_n[:, None] * G_COUNT + g[None, :], mask=smask, other=0.0).to(tl.float32)
            for j in tl.static_range(8):
                col = widx * 8 + j
                xj = tl.load(x_ptr + offs_m[:, None] * stride_xm + col[None, :],
                             mask=m_mask[:, None] & (col[None, :] < K), other=0.0)
                wj = _nibble(words, j) * sc + of
                acc += tl.dot(xj.to(tl.float16), tl.trans(wj.to(tl.float16)))
        ptrs = y_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :]
        tl.store(ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])

    @triton.jit
    def _sum_splits_kernel(p_ptr, y_ptr, MN, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < MN
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in range(SPLIT_K):
            acc += tl.load(p_ptr + s * MN + offs, mask=mask, other=0.0)
        tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


# GEMV: (BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages); GEMM: (BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages).
# Short lists, because every entry is one Triton compile.
CONFIGS_GEMV = [(16, 256, 1, 4, 3), (16, 512, 1, 4, 3), (8, 1024, 1, 4, 3), (16, 1024, 2, 8, 3), (8, 1024, 4, 4, 3),
                (8, 2048, 4, 8, 3), (16, 1024, 8, 8, 3), (4, 1024, 8, 4, 3), (32, 512, 4, 8, 3), (16, 256, 4, 4, 3)]
CONFIGS_GEMM = [(16, 256, 1, 4, 3), (32, 512, 1, 4, 3), (16, 512, 4, 4, 3), (32, 512, 4, 4, 3), (16, 1024, 4, 8, 3),
                (32, 1024, 2, 8, 3), (64, 512, 2, 8, 3), (16, 512, 8, 4, 3)]
_BEST: dict[tuple, tuple] = {}


def _launch(x, qweight, scales, offsets, group, K, cfg, use_dot):
    bn, bk, sk, nw, ns = cfg
    M = x.shape[0]
    N = qweight.shape[0]
    G = scales.shape[1]
    GROUP = K if group == -1 else group
    k_span = triton.cdiv(triton.cdiv(K, sk), bk) * bk
    part = torch.empty((sk, M, N) if sk > 1 else (M, N), device=x.device,
                       dtype=torch.float32 if sk > 1 else x.dtype)
    grid = (triton.cdiv(N, bn), sk)
    o = scales if offsets is None else offsets
    if use_dot:
        _gemm_kernel[grid](x, qweight, scales, o, part, M, N, K, qweight.shape[1], G, x.stride(0), k_span,
                           GROUP=GROUP, SYM=offsets is None, BLOCK_M=16, BLOCK_N=bn, BLOCK_KW=bk // 8, SPLIT_K=sk,
                           num_warps=nw, num_stages=ns)
    else:
        # A slice is a whole group, or the part of one group that a block holds.
        slice_cols = min(GROUP, bk) if group != -1 else bk
        _gemv_kernel[grid](x, qweight, scales, o, part, N, K, qweight.shape[1], G, k_span, GROUP=GROUP,
                           SYM=offsets is None, BLOCK_N=bn, GPB=bk // slice_cols, WPG=slice_cols // 8, SPLIT_K=sk,
                           num_warps=nw, num_stages=ns)
    if sk == 1:
        return part
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    block = 1024
    _sum_splits_kernel[(triton.cdiv(M * N, block),)](part, y, M * N, SPLIT_K=sk, BLOCK=block, num_warps=4)
    return y


def _time(fn, reps=20) -> float:
    """Milliseconds per call of fn, from a CUDA graph of `reps` calls when possible.

    Timing plain launches would measure Triton's ~20 us host-side launch cost instead of the kernel (the kernels
    here run in 3-20 us), which makes every configuration look alike; a graph replay has no host cost.
    """
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(reps):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        start.record()
        graph.replay()
        end.record()
    except RuntimeError:  # e.g. called while another graph is being captured: fall back to plain launches
        start.record()
        for _ in range(reps):
            fn()
        end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def _valid(cfg, group, K, use_dot):
    bn, bk, *_ = cfg
    if use_dot and bn < 16:
        return False
    if group == -1:  # one group per row: every block lies inside it
        return True
    # A block must hold whole groups, or lie inside one group.
    return bk % group == 0 if group < bk else group % bk == 0


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
