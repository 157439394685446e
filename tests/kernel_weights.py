"""Random INT4 weights, dense or N:4 sparse, in the layout egt.kernels' GEMV reads, with their dense dequantized
weight in float64 as the reference: shared by the CUDA GEMV tests (test_w4_gemv.py, test_sparsify_kernels.py)."""
import torch

from egt.quant.packing import pack
from egt.quant.quantizer import dequantize_groups, quantize_groups
from egt.sparsify import pattern as P


def packed_int4(out_f, in_f, n, group, sym, seed):
    """((qweight, indices or None, scales, offsets or None) on CUDA, dense dequantized weight [out_f, in_f] float64
    on CUDA). n = kept values per group of 4 (4: dense)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.05
    if n == 4:
        vals, idx = w, None
    else:  # random masks: every position pattern, not only what magnitude pruning would pick
        vals, idx = P.compact(w, P.topn_in_groups(torch.rand(out_f, in_f, generator=g), n), n)
    qg = quantize_groups(vals, 4, group, sym)
    deq = dequantize_groups(qg.q, qg.scale, qg.offset, 4, group)
    dense = deq if n == 4 else P.expand(deq, idx, n, in_f)
    wts = (pack(qg.q, 4).cuda(), None if idx is None else P.pack_indices(idx).cuda(), qg.scale.cuda(),
           None if qg.offset is None else qg.offset.cuda())
    return wts, dense.cuda().double()
