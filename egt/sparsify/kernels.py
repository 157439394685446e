"""Sparse (2:4, 1:4) and dense W4A16 GEMV in Triton, for decode batches of 1-8 rows.

Contract:
- `sparse_w4_gemv(x [B, in], qweight, indices, scales, offsets, n, group)` computes x @ W^T for the packed N:4
  INT4 weight of `SparseQuantLinear` (kept-value codes in egt.quant's int32 layout, 2-bit in-group positions four
  per byte, fp16 scales and optional offsets per group of `group` kept values: w = scale * code + offset);
  `n=4` with `indices=None` is the same kernel on a dense INT4 `QuantLinear` weight, so that variant differs only
  in what it reads.
- Output dtype = x dtype; accumulation in fp32. 1 <= B <= 8.
- Checked against the dense-expanded dequantized weight in float32 (tests/test_sparsify_kernels.py, CUDA only).

Why the weights need no gather from global memory: row r keeps value k of group k // n at position idx (0..3);
the kernel loads the activation block once per program as four strided vectors (x[4g + p], p = 0..3), shared by
all rows of the program, and picks x[4g + idx] per kept value with selects in registers. Only the packed weight
bytes stream from DRAM, so time should follow bytes: 6 bits per kept value instead of 4 bits per weight.
"""
from __future__ import annotations

import functools

import torch


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def _configs():
    import triton

    out = []
    for bn, bk, w in [(2, 256, 2), (4, 128, 2), (4, 256, 4), (8, 128, 4), (8, 256, 4), (16, 128, 4)]:
        out.append(triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w))
    return out


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def w4_gemv(x_ptr, q_ptr, idx_ptr, s_ptr, o_ptr, y_ptr, OUT, KC: tl.constexpr, NG, QROW, stride_x, stride_y,
                N: tl.constexpr, GROUP: tl.constexpr, B: tl.constexpr, BPAD: tl.constexpr, SYM: tl.constexpr,
                GATHER: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < OUT
        bcol = tl.arange(0, BPAD)
        acc = tl.zeros([BLOCK_N, BPAD], dtype=tl.float32)
        rows64 = rows.to(tl.int64)
        for k0 in range(0, KC, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            kmask = kk < KC
            # Two codes per byte, first in the low nibble: join(lo, hi) interleaves them back into order.
            kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            qb = tl.load(q_ptr + rows64[:, None] * QROW + kb[None, :],
                         mask=rmask[:, None] & (kb[None, :] < KC // 2), other=0)
            q = tl.join(qb & 15, qb >> 4).reshape(BLOCK_N, BLOCK_K).to(tl.float32)
            if GROUP >= BLOCK_K:
                g = k0 // GROUP
                s = tl.load(s_ptr + rows64 * NG + g, mask=rmask, other=0.0).to(tl.float32)[:, None]
                if SYM:
                    o = -8.0 * s
                else:
                    o = tl.load(o_ptr + rows64 * NG + g, mask=rmask, other=0.0).to(tl.float32)[:, None]
            else:
                sp = rows64[:, None] * NG + (kk // GROUP)[None, :]
                smask = rmask[:, None] & kmask[None, :]
                s = tl.load(s_ptr + sp, mask=smask, other=0.0).to(tl.float32)
                if SYM:
                    o = -8.0 * s
                else:
                    o = tl.load(o_ptr + sp, mask=smask, other=0.0).to(tl.float32)
            w = q * s + o
            if N == 4:
                for b in tl.static_range(B):
                    xv = tl.load(x_ptr + b * stride_x + kk, mask=kmask, other=0.0).to(tl.float32)
                    part = tl.sum(w * xv[None, :], axis=1)
                    acc += tl.where(bcol[None, :] == b, part[:, None], 0.0)
            else:
                # Four 2-bit positions per byte, first in the low bits; join twice restores their order.
                ib = k0 // 4 + tl.arange(0, BLOCK_K // 4)
                ibyte = tl.load(idx_ptr + rows64[:, None] * (KC // 4) + ib[None, :],
                                mask=rmask[:, None] & (ib[None, :] < KC // 4), other=0)
                idx = tl.join(tl.join(ibyte & 3, (ibyte >> 4) & 3),
                              tl.join((ibyte >> 2) & 3, (ibyte >> 6) & 3)).reshape(BLOCK_N, BLOCK_K)
                if GATHER:
                    cols = (kk // N)[None, :] * 4 + idx.to(tl.int32)
                    for b in tl.static_range(B):
                        xv = tl.load(x_ptr + b * stride_x + cols, mask=rmask[:, None] & kmask[None, :],
                                     other=0.0).to(tl.float32)
                        part = tl.sum(w * xv, axis=1)
                        acc += tl.where(bcol[None, :] == b, part[:, None], 0.0)
                else:
                    grp = k0 // N + tl.arange(0, BLOCK_K // N)
                    gmask = grp < KC // N
                    for b in tl.static_range(B):
                        xb = x_ptr + b * stride_x + grp * 4
                        x0 = tl.load(xb, mask=gmask, other=0.0).to(tl.float32)
                        x1 = tl.load(xb + 1, mask=gmask, other=0.0).to(tl.float32)
                        x2 = tl.load(xb + 2, mask=gmask, other=0.0).to(tl.float32)
                        x3 = tl.load(xb + 3, mask=gmask, other=0.0).to(tl.float32)
                        if N == 2:  # each group holds two kept values: repeat its activations twice
                            x0 = tl.join(x0, x0).reshape(BLOCK_K)
                            x1 = tl.join(x1, x1).reshape(BLOCK_K)
                            x2 = tl.join(x2, x2).reshape(BLOCK_K)
                            x3 = tl.join(x3, x3).reshape(BLOCK_K)
                        xv = tl.where(idx == 0, x0[None, :],
                                      tl.where(idx == 1, x1[None, :], tl.where(idx == 2, x2[None, :], x3[None, :])))
                        part = tl.sum(w * xv, axis=1)
                        acc += tl.where(bcol[None, :] == b, part[:, None], 0.0)
        y = y_ptr + bcol[None, :] * stride_y + rows64[:, None]
        tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=rmask[:, None] & (bcol[None, :] < B))

    return triton.autotune(configs=_configs(), key=["OUT", "KC", "N", "B", "GROUP"])(w4_gemv)


def sparse_w4_gemv(x: torch.Tensor, qweight: torch.Tensor, indices: torch.Tensor | None, scales: torch.Tensor,
                   offsets: torch.Tensor | None, n: int, group: int, gather: bool = False,
                   config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """y [B, out] = x [B, in] @ W^T. qweight: int32 words of egt.quant.packing (8 codes per word, first in the
    low bits, so its bytes hold two codes each, first in the low nibble); kept values per row = in * n / 4.
    config: (BLOCK_N, BLOCK_K, num_warps) to skip autotuning (tests); None autotunes once per shape."""
    if x.dim() != 2 or not 1 <= x.shape[0] <= 8:
        raise ValueError(f"x must be [B, in] with 1 <= B <= 8, got {tuple(x.shape)}")
    if n not in (1, 2, 4):
        raise ValueError(f"n must be 1, 2 (sparse) or 4 (dense), got {n}")
    if (n == 4) != (indices is None):
        raise ValueError("indices are required for n=1/2 and must be None for dense (n=4)")
    in_f = x.shape[1]
    kc = in_f * n // 4
    out_f = qweight.shape[0]
    qbytes = qweight.view(torch.uint8) if qweight.dtype != torch.uint8 else qweight
    if qbytes.shape[1] * 2 < kc or (indices is not None and indices.shape[1] * 4 != kc):
        raise ValueError(f"packed weight {tuple(qweight.shape)} does not hold {kc} kept values per row")
    b = x.shape[0]
    x = x.contiguous()
    y = torch.empty(b, out_f, dtype=x.dtype, device=x.device)
    ng = scales.shape[1]
    group = kc if group == -1 else group
    args = (x, qbytes, qbytes if indices is None else indices, scales, scales if offsets is None else offsets, y,
            out_f, kc, ng, qbytes.stride(0), x.stride(0), y.stride(0))
    kw = dict(N=n, GROUP=group, B=b, BPAD=max(2, 1 << (b - 1).bit_length()), SYM=offsets is None, GATHER=gather)
    if config is None:
        grid = lambda meta: (triton_cdiv(out_f, meta["BLOCK_N"]),)  # noqa: E731
        _kernel()[grid](*args, **kw)
    else:
        bn, bk, warps = config
        _kernel().fn[(triton_cdiv(out_f, bn),)](*args, **kw, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps)
    return y


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
