"""CUDA tests of the W4A16 kernel (egt.kernels, dense INT4) and of QuantLinear's GPU dispatch (skip without CUDA)."""
from __future__ import annotations

import pytest
import torch

from egt.plan import LinearPlan
from egt.quant import QuantLinear, dequantize_groups, pack, quantize_groups
from egt.quant import kernels

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not kernels.available(), reason="needs CUDA and nvcc (or a built kernel library)")]

SHAPES = [(1536, 576), (576, 1536), (1536, 8960), (8960, 1536), (200, 320), (49, 96)]
VARIANTS = [(128, False), (128, True), (32, True), (64, False), (256, False), (-1, False), (-1, True)]


def _case(n, k, m, group, sym, seed, dtype=torch.float16):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", generator=gen) * 0.05
    qg = quantize_groups(w, 4, group, sym)
    deq = dequantize_groups(qg.q, qg.scale, qg.offset, 4, group).double()
    x = torch.randn(m, k, device="cuda", generator=gen).to(dtype)
    return qg, deq, x, x.double() @ deq.T


def _check(y, x, deq, ref, rel=2e-3):
    assert y.shape == ref.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    # Error relative to the size of the terms summed (fp16 weight rounding + fp16 output rounding, fp32 sums).
    bound = rel * (x.double().abs() @ deq.abs().T) + rel * ref.abs() + 1e-3
    err = (y.double() - ref).abs()
    assert torch.all(err <= bound), float((err - bound).max())


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("group,sym", VARIANTS)
def test_w4a16_matches_fp32_dequantized(n, k, m, group, sym):
    qg, deq, x, ref = _case(n, k, m, group, sym, n * 7 + k * 3 + m + group)
    y = kernels.w4a16_matmul(x, pack(qg.q, 4), qg.scale, qg.offset, group, k)
    _check(y, x, deq, ref)


@pytest.mark.parametrize("config", [(1, 1, 4), (1, 1, 16), (1, 3, 8), (1, 7, 4), (1, 70, 16)])
@pytest.mark.parametrize("m", [1, 5, 16])
def test_every_config_is_correct_and_deterministic(config, m):
    """Row tiles per warp and split-K (with the last-block reduction) give the same right answer on every call."""
    qg, deq, x, ref = _case(1536, 8960, m, 128, False, 11 + m)
    qw = pack(qg.q, 4)
    y0 = kernels.w4a16_matmul(x, qw, qg.scale, qg.offset, 128, 8960, config=config)
    _check(y0, x, deq, ref)
    for _ in range(3):  # arrival counters must be back at zero after each call
        x2 = torch.randn_like(x)
        y = kernels.w4a16_matmul(x2, qw, qg.scale, qg.offset, 128, 8960, config=config)
        _check(y, x2, deq, x2.double() @ deq.T)
    assert torch.equal(kernels.w4a16_matmul(x, qw, qg.scale, qg.offset, 128, 8960, config=config), y0)


@pytest.mark.parametrize("m", [1, 4, 16])
def test_bf16_input(m):
    qg, deq, x, ref = _case(576, 1536, m, 64, False, 3 + m, torch.bfloat16)
    y = kernels.w4a16_matmul(x, pack(qg.q, 4), qg.scale, qg.offset, 64, 1536)
    _check(y, x, deq, ref, rel=1.5e-2)  # bf16 weights and output: 8 significant bits


def test_inside_cuda_graph():
    qg, deq, x, ref = _case(1536, 1536, 2, 128, False, 21)
    qw = pack(qg.q, 4)
    kernels.w4a16_matmul(x, qw, qg.scale, qg.offset, 128, 1536)  # build/load outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = kernels.w4a16_matmul(x, qw, qg.scale, qg.offset, 128, 1536)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    _check(y, x, deq, x.double() @ deq.T)


def test_bad_input_is_rejected():
    qg, _, x, _ = _case(64, 256, 1, 128, False, 0)
    qw = pack(qg.q, 4)
    with pytest.raises(ValueError, match="M <= 16"):
        kernels.w4a16_matmul(torch.randn(17, 256, device="cuda").half(), qw, qg.scale, qg.offset, 128, 256)
    with pytest.raises(ValueError, match="must be"):
        kernels.w4a16_matmul(torch.randn(1, 128, device="cuda").half(), qw, qg.scale, qg.offset, 128, 256)
    with pytest.raises(ValueError, match="scales"):
        kernels.w4a16_matmul(x, qw, qg.scale[:, :1].contiguous(), qg.offset, 128, 256)
    with pytest.raises(ValueError, match="config"):
        kernels.w4a16_matmul(x, qw, qg.scale, qg.offset, 128, 256, config=(2, 1, 4))
    assert not kernels.supports(100, 1) and not kernels.supports(256, 17) and kernels.supports(256, 16)


def test_quant_linear_uses_kernel_on_gpu_and_reference_elsewhere(monkeypatch):
    lin = torch.nn.Linear(576, 320, bias=True)
    m = QuantLinear.from_linear(lin, LinearPlan(bits=4, group_size=64, symmetric=False)).cuda().half()
    calls = []
    real = kernels.w4a16_matmul
    monkeypatch.setattr(kernels, "w4a16_matmul", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(1, 5, 576, device="cuda").half()
    y = m(x)
    assert calls, "QuantLinear did not use the W4A16 kernel for 5 rows on CUDA"
    ref = x.float() @ m.dequantize().T + m.bias.float()
    assert torch.allclose(y.float(), ref, atol=2e-2, rtol=1e-2)
    calls.clear()
    big = torch.randn(40, 576, device="cuda").half()  # > 16 rows: dequantize + cuBLAS
    assert torch.allclose(m(big).float(), big.float() @ m.dequantize().T + m.bias.float(), atol=2e-2, rtol=1e-2)
    assert not calls
    m3 = QuantLinear.from_linear(lin, LinearPlan(bits=3, group_size=128)).cuda().half()  # int3: reference path
    assert torch.allclose(m3(x).float(), x.float() @ m3.dequantize().T + m3.bias.float(), atol=2e-2, rtol=1e-2)
