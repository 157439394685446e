"""egt.kernels (CUDA W4A16 GEMV, dense / 2:4 / 1:4 INT4): the byte-keyed index tables (every 2-bit position
pattern), odd group counts and split-K ranges, the shared-memory plan, and programmatic dependent launch (eager
and inside CUDA graphs, replayed back to back). Every check is against the dense-expanded dequantized weight in float64 on fresh random inputs.
CUDA only (skips elsewhere); tests/test_quant_cuda.py and tests/test_sparsify_kernels.py cover the rest."""
from __future__ import annotations

import pytest
import torch

from egt import kernels as K
from kernel_weights import packed_int4

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not K.available(), reason="needs CUDA and nvcc (or a built kernel library)")]


def _check(y, x, dense, rel=2e-3):
    ref = x.double() @ dense.T
    assert y.shape == ref.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    bound = rel * (x.double().abs() @ dense.abs().T) + rel * ref.abs() + 1e-3
    err = (y.double() - ref).abs()
    assert torch.all(err <= bound), float((err - bound).max())


@pytest.mark.parametrize("m,n,kept,group,cps,warps", [(1, 4, 8960, 128, 70, 16), (16, 4, 8960, 32, 35, 16),
                                                       (8, 2, 4480, 64, 12, 8), (3, 1, 288, 32, 3, 4),
                                                       (1, 4, 1536, -1, 12, 4), (9, 4, 1152, 256, 5, 8)])
def test_smem_plan_mirror_matches_library(m, n, kept, group, cps, warps):
    assert K.smem_bytes(m, n, kept, group, cps, warps) == K.library_smem_bytes(m, n, kept, group, cps, warps)


# Odd group counts and odd rows (scale words straddle rows; the last word of the tensor is half outside it),
# split-K ranges that start on odd groups, every warp count.
CASES = [(77, 1152, 4, 128, False), (77, 1152, 4, 64, True), (77, 1152, 2, 64, False), (77, 1152, 1, 32, False),
         (131, 2304, 2, 32, True), (131, 2304, 1, 128, False), (33, 512, 4, -1, False), (33, 512, 2, -1, True),
         (1536, 8960, 2, 128, False), (1536, 8960, 1, 128, False), (8960, 1536, 4, 128, False)]


@pytest.mark.parametrize("out_f,in_f,n,group,sym", CASES)
def test_matches_fp64_reference_every_config(out_f, in_f, n, group, sym):
    wts, dense = packed_int4(out_f, in_f, n, group, sym, seed=out_f * 3 + in_f + n)
    for m in (1, 2, 5, 12, K.MAX_M):
        for config in (None, (1, 1, 4), (1, 2, 8), (1, 3, 16), (1, 5, 4)):
            x = torch.randn(m, in_f, device="cuda", dtype=torch.float16)  # fresh inputs every call
            _check(K.w4_gemv(x, *wts, n, group, config), x, dense)


def _chain_weights(seed):
    """A chain of GEMVs whose outputs feed the next input: dense, 2:4, 1:4, a split-K config, a long row."""
    specs = [(1536, 1536, 4, 128, False, None), (1024, 1536, 2, 128, False, None), (2048, 1024, 1, 128, True, None),
             (1536, 2048, 4, 64, False, (1, 3, 8)), (4096, 1536, 2, 64, True, (1, 2, 4)), (1536, 4096, 4, 128, True, None)]
    out = []
    for i, (o, k, n, g, sym, cfg) in enumerate(specs):
        wts, dense = packed_int4(o, k, n, g, sym, seed + i)
        out.append((wts, dense, n, g, cfg))
    return out


def _run_chain(x, chain, pdl):
    h = x
    for wts, _, n, g, cfg in chain:
        h = K.w4_gemv(h, *wts, n, g, cfg, pdl=pdl)
    return h


def _ref_chain(x, chain):
    """Step by step: each step's reference uses the kernel's own (rounded) input, so only one step's error counts."""
    h = x
    for wts, dense, n, g, cfg in chain:
        y = K.w4_gemv(h, *wts, n, g, cfg)
        _check(y, h, dense)
        h = y
    return h


@pytest.mark.parametrize("m", [1, 4])
def test_pdl_eager_chain_equals_plain_launches(m):
    chain = _chain_weights(5)
    torch.cuda.synchronize()  # weights written before any PDL launch (the contract)
    for _ in range(3):
        x = torch.randn(m, 1536, device="cuda", dtype=torch.float16)
        want = _ref_chain(x, chain)
        got = _run_chain(x, chain, pdl=True)
        assert torch.equal(got, want)  # same kernels, fixed reduction order: bit for bit


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pdl_inside_cuda_graph(dtype):
    chain = _chain_weights(11)
    x = torch.randn(2, 1536, device="cuda", dtype=dtype)
    _run_chain(x, chain, pdl=True)  # build/load and scratch outside the capture
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        _run_chain(x, chain, pdl=True)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        y = _run_chain(x, chain, pdl=True)
    for _ in range(4):
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.cuda.synchronize()
        want = _run_chain(x, chain, pdl=False)
        assert torch.equal(y, want)
        h = x
        for wts, dense, n, gr, cfg in chain:  # and each step against float64
            yy = K.w4_gemv(h, *wts, n, gr, cfg)
            _check(yy, h, dense, rel=2e-3 if dtype == torch.float16 else 1.5e-2)
            h = yy


def _norm(y):
    """Rescale to max |y| = 1 so repeated chains stay finite (the same torch ops eagerly and in the graph)."""
    return y / y.abs().amax().clamp_min(1e-3)


def test_pdl_graph_replayed_back_to_back():
    """Replays queued without a sync in between: each replay's first kernel must still wait for the last one."""
    chain = _chain_weights(23)
    x = torch.randn(1, 1536, device="cuda", dtype=torch.float16)
    _run_chain(x, chain, pdl=True)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    with torch.cuda.graph(g, stream=s):
        x.copy_(_norm(_run_chain(x, chain, pdl=True)))  # the chain's (rescaled) output is the next replay's input
    x0 = torch.randn(1, 1536, device="cuda", dtype=torch.float16)
    x.copy_(x0)
    for _ in range(5):
        g.replay()
    torch.cuda.synchronize()
    h = x0
    for _ in range(5):
        h = _norm(_run_chain(h, chain, pdl=False))
    assert torch.isfinite(h).all() and h.abs().max() > 0.5
    assert torch.equal(x, h)
