"""CUDA tests of the W4A16 Triton kernel and of QuantLinear's GPU dispatch (skip without CUDA; run on the device)."""
from __future__ import annotations

import pytest
import torch

from egt.plan import LinearPlan
from egt.quant import QuantLinear, dequantize_groups, pack, quantize_groups
from egt.quant import kernels

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not kernels.available(), reason="needs CUDA and Triton")]

SHAPES = [(1536, 576), (576, 1536), (1536, 8960), (200, 320), (49, 96)]
FIXED = {False: (16, 512, 2, 4, 3), True: (32, 512, 2, 4, 3)}  # one split-K config per path (GEMV / dot)


def _case(n, k, m, group, sym, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", generator=gen) * 0.05
    qg = quantize_groups(w, 4, group, sym)
    deq = dequantize_groups(qg.q, qg.scale, qg.offset, 4, group).double()
    x = torch.randn(m, k, device="cuda", generator=gen).half()
    return qg, deq, x, x.double() @ deq.T


def _check(y, x, deq, ref):
    assert y.shape == ref.shape and y.dtype == torch.float16
    # fp16 inputs/output, fp32 accumulation: error relative to the size of the terms summed.
    bound = 2e-3 * (x.double().abs() @ deq.abs().T) + 1e-3 * ref.abs() + 1e-3
    assert torch.all((y.double() - ref).abs() <= bound), float((y.double() - ref).abs().max())


@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("group,sym", [(128, False), (32, True), (64, False), (-1, False)])
def test_w4a16_matches_fp32_dequantized(n, k, m, group, sym):
    qg, deq, x, ref = _case(n, k, m, group, sym, n * 7 + k * 3 + m + group)
    cfg = FIXED[m > 1]
    y = kernels.w4a16_matmul(x, pack(qg.q, 4), qg.scale, qg.offset, group, k, config=cfg)
    _check(y, x, deq, ref)


@pytest.mark.parametrize("m", [1, 16])
def test_every_tuning_config_is_correct(m):
    """Each configuration the tuner may pick (tile sizes, split-K) gives the right answer, as does the tuner."""
    qg, deq, x, ref = _case(1536, 1536, m, 128, False, 5 + m)
    qw = pack(qg.q, 4)
    for cfg in (kernels.CONFIGS_GEMV if m == 1 else kernels.CONFIGS_GEMM):
        _check(kernels.w4a16_matmul(x, qw, qg.scale, qg.offset, 128, 1536, config=cfg), x, deq, ref)
    _check(kernels.w4a16_matmul(x, qw, qg.scale, qg.offset, 128, 1536), x, deq, ref)


def test_bf16_input():
    w = torch.randn(256, 512, device="cuda") * 0.05
    qg = quantize_groups(w, 4, 128, False)
    x = torch.randn(2, 512, device="cuda").bfloat16()
    y = kernels.w4a16_matmul(x, pack(qg.q, 4), qg.scale, qg.offset, 128, 512)
    ref = x.double() @ dequantize_groups(qg.q, qg.scale, qg.offset, 4, 128).double().T
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.double(), ref, atol=0.05, rtol=0.02)


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
