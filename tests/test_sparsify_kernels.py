"""Sparse W4A16 GEMV (egt.kernels, CUDA) against the dense-expanded dequantized weight in float64 (CUDA only)."""
import pytest
import torch

from egt.plan import LinearPlan
from egt.quant.quantizer import quantize_groups
from egt.sparsify import pattern as P
from kernel_weights import packed_int4

from egt import kernels as _kernels  # noqa: E402

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not _kernels.available(), reason="needs CUDA and nvcc (or a built kernel library)")]


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("out_f,in_f,group,sym", [(256, 512, 128, False), (96, 640, 32, True), (200, 1536, 64, False),
                                                  (1536, 8960, 128, False), (8960, 1536, 128, True),
                                                  (64, 768, -1, False), (48, 1024, 256, True)])
def test_gemv_matches_expanded_reference(n, out_f, in_f, group, sym):
    from egt.sparsify.kernels import sparse_w4_gemv

    (q, idx, s, o), dense = packed_int4(out_f, in_f, n, group, sym, seed=out_f + in_f + n)
    cases = [(1, torch.float16, None), (8, torch.float16, None), (3, torch.bfloat16, None), (2, torch.float16, (1, 1, 16)),
             (5, torch.float16, (1, 4, 4)), (4, torch.float16, (1, 2, 8)), (16, torch.float16, None),
             (11, torch.bfloat16, None), (9, torch.float16, (1, 3, 8))]
    for b, dtype, config in cases:
        x = torch.randn(b, in_f, device="cuda").to(dtype)  # fresh inputs every call
        ref = x.double() @ dense.T
        y = sparse_w4_gemv(x, q, idx, s, o, n, group, config=config)
        assert y.dtype == dtype and y.shape == (b, out_f) and torch.isfinite(y).all()
        rel = 2e-3 if dtype == torch.float16 else 1.5e-2
        bound = rel * (x.double().abs() @ dense.abs().T) + rel * ref.abs() + 1e-3
        err = (y.double() - ref).abs()
        assert torch.all(err <= bound), (n, out_f, in_f, b, dtype, config, float((err - bound).max()))


@pytest.mark.parametrize("n,in_f", [(2, 1024), (1, 1024), (1, 576)])
def test_module_forward_matches_cpu_path(n, in_f):
    """SparseQuantLinear on CUDA (kernel, or the reference fallback where the width is unaligned: 1:4 of 576)."""
    from egt.sparsify import kernels
    from egt.sparsify.modules import SparseQuantLinear

    g = torch.Generator().manual_seed(1)
    w = torch.randn(384, in_f, generator=g) * 0.05
    vals, idx = P.compact(w, P.magnitude_mask(w, n), n)
    lp = LinearPlan(bits=4, group_size=128 if in_f % 512 == 0 else 64, sparsity=f"{n}:4")
    m = SparseQuantLinear.from_codes(lp, quantize_groups(vals, 4, lp.group_size, False), idx, in_f,
                                     bias=torch.randn(384, generator=g))
    x = torch.randn(1, 3, in_f, generator=g)
    want = m(x)  # CPU: reference path by expansion
    mc = m.to("cuda", torch.float16)
    assert mc.scales.dtype == torch.float16
    assert kernels.supports(in_f, n, 3) == (in_f != 576)  # 1:4 of 576 keeps 144 values: not 16-byte aligned
    got = mc(x.to("cuda", torch.float16))
    assert torch.allclose(got.float().cpu(), want, atol=5e-3 * want.abs().max().item())


def test_bad_input_is_rejected_clearly():
    from egt.sparsify.kernels import sparse_w4_gemv

    (q, idx, s, o), _ = packed_int4(64, 256, 2, 128, False, 0)
    with pytest.raises(ValueError, match="1 <= B <= 16"):
        sparse_w4_gemv(torch.randn(17, 256, device="cuda", dtype=torch.float16), q, idx, s, o, 2, 128)
    with pytest.raises(ValueError, match="does not hold"):
        sparse_w4_gemv(torch.randn(1, 512, device="cuda", dtype=torch.float16), q, idx, s, o, 2, 128)
    with pytest.raises(ValueError, match="indices"):
        sparse_w4_gemv(torch.randn(1, 256, device="cuda", dtype=torch.float16), q, None, s, o, 2, 128)
