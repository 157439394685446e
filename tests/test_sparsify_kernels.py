"""Sparse W4A16 GEMV (Triton) against the dense-expanded dequantized weight in float32 (CUDA only)."""
import pytest
import torch

from egt.plan import LinearPlan
from egt.quant.packing import pack
from egt.quant.quantizer import dequantize_groups, quantize_groups
from egt.sparsify import pattern as P

pytestmark = pytest.mark.cuda


def _packed(out_f, in_f, n, group, sym, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.05
    if n == 4:
        vals, idx = w, None
    else:
        vals, idx = P.compact(w, P.topn_in_groups(torch.rand(out_f, in_f, generator=g), n), n)
    qg = quantize_groups(vals, 4, group, sym)
    deq = dequantize_groups(qg.q, qg.scale, qg.offset, 4, group)
    dense = deq if n == 4 else P.expand(deq, idx, n, in_f)
    dev = "cuda"
    return (pack(qg.q, 4).to(dev), None if idx is None else P.pack_indices(idx).to(dev), qg.scale.to(dev),
            None if qg.offset is None else qg.offset.to(dev), dense.to(dev))


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("out_f,in_f,group,sym", [(256, 512, 128, False), (96, 576, 128, True), (200, 1536, 64, False),
                                                  (1536, 8960, 128, False), (64, 768, -1, False)])
def test_gemv_matches_expanded_reference(n, out_f, in_f, group, sym):
    from egt.sparsify.kernels import sparse_w4_gemv

    q, idx, s, o, dense = _packed(out_f, in_f, n, group, sym, seed=out_f + in_f + n)
    # (batch, dtype, gather, config): a fixed config keeps compile time down; one case autotunes.
    cases = [(1, torch.float16, False, None), (8, torch.float16, False, (4, 128, 4)),
             (3, torch.bfloat16, False, (8, 64, 2)), (5, torch.float16, False, (2, 256, 2))]
    if n < 4:
        cases.append((2, torch.float16, True, (4, 128, 4)))
    for b, dtype, gather, config in cases:
        x = torch.randn(b, in_f, device="cuda").to(dtype)  # fresh inputs every call
        ref = x.float() @ dense.T
        y = sparse_w4_gemv(x, q, idx, s, o, n, group, gather=gather, config=config)
        assert y.dtype == dtype and y.shape == (b, out_f)
        tol = (4e-3 if dtype == torch.float16 else 2e-2) * ref.abs().max().item()
        err = (y.float() - ref).abs().max().item()
        assert err <= tol, (n, out_f, in_f, b, dtype, gather, err, tol)


def test_module_forward_uses_kernel_and_matches_cpu_path():
    from egt.sparsify.modules import SparseQuantLinear

    g = torch.Generator().manual_seed(1)
    w = torch.randn(384, 1024, generator=g) * 0.05
    vals, idx = P.compact(w, P.magnitude_mask(w, 2), 2)
    lp = LinearPlan(bits=4, group_size=128, sparsity="2:4")
    m = SparseQuantLinear.from_codes(lp, quantize_groups(vals, 4, 128, False), idx, 1024, bias=torch.randn(384, generator=g))
    x = torch.randn(1, 3, 1024, generator=g)
    want = m(x)  # CPU: reference path by expansion
    mc = m.to("cuda", torch.float16)
    assert mc.scales.dtype == torch.float16
    got = mc(x.to("cuda", torch.float16))
    assert torch.allclose(got.float().cpu(), want, atol=5e-3 * want.abs().max().item())


def test_bad_input_is_rejected_clearly():
    from egt.sparsify.kernels import sparse_w4_gemv

    q, idx, s, o, _ = _packed(64, 256, 2, 128, False, 0)
    with pytest.raises(ValueError, match="1 <= B <= 8"):
        sparse_w4_gemv(torch.randn(9, 256, device="cuda", dtype=torch.float16), q, idx, s, o, 2, 128)
    with pytest.raises(ValueError, match="does not hold"):
        sparse_w4_gemv(torch.randn(1, 512, device="cuda", dtype=torch.float16), q, idx, s, o, 2, 128)
