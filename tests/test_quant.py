"""Tests of egt.quant on CPU: quantizer, packing round trips, GPTQ, allocation, packed module, save/load/generate."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from egt.plan import CompressionPlan, LinearPlan
from egt.quant import (InfeasibleBudget, QuantLinear, dequantize_groups, fake_quantize, gptq_quantize, pack,
                       quantize_groups, unpack)
from egt.quant.allocate import Option, allocate
from egt.quant.packing import packed_words

BITS = (3, 4, 8)
GROUPS = (32, 64, 128, 256, -1)


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(BITS), out_f=st.integers(1, 9), in_f=st.integers(1, 200), seed=st.integers(0, 2**31))
def test_pack_unpack_round_trip(bits, out_f, in_f, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 2 ** bits, (out_f, in_f), generator=g, dtype=torch.uint8)
    words = pack(q, bits)
    assert words.dtype == torch.int32 and words.shape == (out_f, packed_words(in_f, bits))
    assert torch.equal(unpack(words, bits, in_f), q)


def test_pack_exact_bits_per_weight():
    # 3-bit packing stores exactly 3 bits per code when the width is a multiple of 32.
    for bits in BITS:
        q = torch.zeros(4, 576, dtype=torch.uint8)
        assert pack(q, bits).numel() * 32 == 4 * 576 * bits


def test_pack_rejects_out_of_range():
    with pytest.raises(ValueError):
        pack(torch.full((2, 8), 16, dtype=torch.uint8), 4)


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from(BITS), group=st.sampled_from(GROUPS), sym=st.booleans(), out_f=st.integers(1, 6),
       in_f=st.integers(1, 300), seed=st.integers(0, 2**31))
def test_quantize_codes_and_error_bound(bits, group, sym, out_f, in_f, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * torch.rand(out_f, 1, generator=g) * 3
    q, scale, offset = quantize_groups(w, bits, group, sym)
    assert q.dtype == torch.uint8 and int(q.max()) < 2 ** bits
    assert scale.dtype == torch.float16 and (offset is None) == sym
    deq = dequantize_groups(q, scale, offset, bits, group)
    # Round to nearest on a grid that covers the group's range: error <= half a step (+ fp16 rounding slack).
    gl = in_f if group == -1 else group
    step = scale.float().repeat_interleave(gl, 1)[:, :in_f]
    assert torch.all((deq - w).abs() <= step * 0.5 + 2e-3 * w.abs().amax() + 1e-6)
    # Stored parameters decode to exactly the same weights (what the packed module multiplies by).
    m = QuantLinear.from_linear(_linear(w), LinearPlan(bits=bits, group_size=group, symmetric=sym),
                                quantize_groups(w, bits, group, sym))
    assert torch.equal(m.dequantize(), deq)


def test_q41_grid_is_reproduced_exactly():
    # The default model's weights are Q4_1 (blocks of 32, fp16 scale d and min m): int4 g32 asym must be lossless.
    g = torch.Generator().manual_seed(0)
    d = (torch.rand(8, 4, generator=g) * 0.05 + 0.01).half().float()
    m = (-torch.rand(8, 4, generator=g) * 0.3).half().float()
    codes = torch.randint(0, 16, (8, 4, 32), generator=g).float()
    codes[..., 0], codes[..., 1] = 0, 15  # each block spans its full range, as Q4_1 blocks do
    w = (codes * d.unsqueeze(-1) + m.unsqueeze(-1)).view(8, 128)
    assert torch.allclose(fake_quantize(w, 4, 32, False), w, atol=1e-6, rtol=0)
    assert (fake_quantize(w, 4, 64, False) - w).abs().max() > 1e-3  # coarser groups are not free


def test_clip_search_lowers_error():
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(1))
    plain = (fake_quantize(w, 3, 128, False) - w).pow(2).sum()
    clipped = (fake_quantize(w, 3, 128, False, clip=(1.0, 0.9, 0.8)) - w).pow(2).sum()
    assert clipped < plain


def test_quantize_rejects_bad_input():
    with pytest.raises(ValueError):
        quantize_groups(torch.randn(4, 8), 5, 32, True)
    with pytest.raises(ValueError):
        quantize_groups(torch.randn(4, 8), 4, 48, True)
    with pytest.raises(ValueError):
        quantize_groups(torch.tensor([[float("nan"), 1.0]]), 4, 32, True)


def _linear(w, bias=None):
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


def test_gptq_beats_rtn_on_output_error():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 256, generator=g) @ (torch.eye(256) + 0.2 * torch.randn(256, 256, generator=g))
    w = torch.randn(96, 256, generator=g) * 0.05
    H = (x.T @ x).double()
    for bits, group, sym in [(4, 128, False), (3, 64, True), (4, -1, True)]:
        qg = gptq_quantize(w, H, bits, group, sym)
        e_gptq = (x @ (w - dequantize_groups(qg.q, qg.scale, qg.offset, bits, group)).T).pow(2).mean()
        e_rtn = (x @ (w - fake_quantize(w, bits, group, sym)).T).pow(2).mean()
        assert e_gptq < 0.7 * e_rtn, (bits, group, sym, float(e_gptq), float(e_rtn))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), layers=st.integers(1, 4), slack=st.floats(0.0, 1.0))
def test_allocate_matches_brute_force(seed, layers, slack):
    rng = torch.Generator().manual_seed(seed)
    options = {}
    for li in range(layers):
        opts = []
        for j in range(3):
            bits = int(torch.randint(100, 1000, (1,), generator=rng))
            opts.append(Option(LinearPlan(bits=4, group_size=GROUPS[j]), bits, float(torch.rand(1, generator=rng))))
        options[f"l{li}"] = opts
    lo = sum(min(o.bits for o in v) for v in options.values())
    hi = sum(max(o.bits for o in v) for v in options.values())
    budget = lo + slack * (hi - lo)
    got = allocate(options, budget)
    assert sum(o.bits for o in got.values()) <= budget
    best = min(sum(o.error for o in combo) for combo in itertools.product(*options.values())
               if sum(o.bits for o in combo) <= budget)
    # Exact up to the cost discretisation (budget/100000 per layer), which these small integer costs never hit.
    assert math.isclose(sum(o.error for o in got.values()), best, rel_tol=1e-9, abs_tol=1e-12)


def test_allocate_infeasible_budget_is_a_clear_error():
    options = {"a": [Option(LinearPlan(bits=4), 400, 1.0)], "b": [Option(LinearPlan(bits=4), 400, 1.0)]}
    with pytest.raises(InfeasibleBudget, match="infeasible"):
        allocate(options, 700, weights=200)


def test_quant_linear_forward_state_dict_and_dtype():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(48, 96, generator=g), torch.randn(48, generator=g)
    for bits, group, sym in [(4, 32, False), (3, -1, True), (8, 64, False)]:
        lp = LinearPlan(bits=bits, group_size=group, symmetric=sym)
        m = QuantLinear.from_linear(_linear(w, b), lp)
        x = torch.randn(5, 96, generator=g)
        ref = x @ m.dequantize().T + b
        assert torch.allclose(m(x), ref, atol=1e-5)
        empty = QuantLinear(lp, 48, 96, bias=True)
        empty.load_state_dict(m.state_dict())
        assert torch.equal(empty.dequantize(), m.dequantize())
        stored = sum(t.numel() * t.element_size() * 8 for k, t in m.state_dict().items() if k != "bias")
        assert stored == lp.storage_bits(48, 96) + (0 if bits != 3 else (packed_words(96, 3) * 32 - 96 * 3) * 48)
        m16 = m.to(torch.bfloat16)
        assert m16.scales.dtype == torch.float16 and m16.bias.dtype == torch.bfloat16
        y = m16(x.bfloat16())
        assert y.dtype == torch.bfloat16 and torch.allclose(y.float(), ref, atol=0.1 * ref.abs().max())


def test_quantize_model_save_load_generate(tmp_path):
    """A tiny model with the default tokenizer: allocate under a budget, save, reload, generate on CPU."""
    from transformers import AutoTokenizer

    from egt.compress import CompressConfig
    from egt.engine import Engine
    from egt.format import save_compressed
    from egt.models import LoadedModel, ModelShape, build_model, default_model_dir, hf_config_for_shape
    from egt.quant import quantize_model

    tok = AutoTokenizer.from_pretrained(default_model_dir(progress=False))
    shape = ModelShape("tiny", hidden=128, intermediate=256, layers=2, heads=4, kv_heads=2, head_dim=32,
                       vocab=len(tok), tie_embeddings=True)
    hf = hf_config_for_shape(shape)
    torch.manual_seed(0)
    model = build_model(shape, hf)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("norm.weight") else torch.randn_like(p) * 0.08)
    loaded = LoadedModel(model.eval(), tok, hf, "tiny", 0.0)
    texts = ["Shop the new summer collection today", "Free shipping on all orders over $50",
             "Join thousands of happy customers", "Limited offer: two for one on coffee beans"]
    plan = quantize_model(loaded, CompressionPlan("int3"), CompressConfig(bits=3, budget=3.6), texts, progress=False)
    q = plan.meta["quant"]
    assert q["bpw"] <= 3.6 and len(plan.layers) == 14  # tied LM head stays the (float) embedding
    assert all(isinstance(model.get_submodule(n), QuantLinear) for n in plan.layers)
    with pytest.raises(InfeasibleBudget):
        quantize_model(LoadedModel(build_model(shape, hf), tok, hf, "t", 0), CompressionPlan(),
                       CompressConfig(bits=4, budget=3.5), texts, progress=False)
    ids = tok(texts[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        cache = model.setup_cache(1, ids.shape[1])
        slots = torch.arange(ids.shape[1])
        want = model(ids, slots.view(1, -1), slots, cache, kv_len=ids.shape[1])
    out = save_compressed(model, tok, hf, plan, tmp_path / "q")
    eng = Engine.from_pretrained(str(out), device="cpu", dtype="fp32")
    with torch.no_grad():
        cache = eng.model.setup_cache(1, ids.shape[1])
        got = eng.model(ids, slots.view(1, -1), slots, cache, kv_len=ids.shape[1])
    assert torch.allclose(got, want, atol=1e-4)
    gen = eng.generate([texts[1]], max_new_tokens=4)
    assert len(gen.tokens[0]) >= 1


def _tiny_model(seed=0):
    from transformers import AutoTokenizer

    from egt.models import ModelShape, build_model, default_model_dir, hf_config_for_shape

    tok = AutoTokenizer.from_pretrained(default_model_dir(progress=False))
    shape = ModelShape("tiny", hidden=128, intermediate=256, layers=2, heads=4, kv_heads=2, head_dim=32,
                       vocab=len(tok), tie_embeddings=True)
    hf = hf_config_for_shape(shape)
    torch.manual_seed(seed)
    model = build_model(shape, hf)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if name.endswith("norm.weight") else torch.randn_like(p) * 0.08)
    return model.eval(), tok, hf


def test_awq_scaling_preserves_the_float_model_and_its_statistics():
    from egt.calibrate import collect_stats
    from egt.quant.awq import apply_awq

    model, tok, _ = _tiny_model()
    texts = ["Shop the new summer collection today", "Free shipping on all orders over $50"]
    ids = tok(texts[0], return_tensors="pt")["input_ids"]
    slots = torch.arange(ids.shape[1])

    def logits():
        with torch.no_grad():
            return model(ids, slots.view(1, -1), slots, model.setup_cache(1, ids.shape[1]), kv_len=ids.shape[1])

    before = logits()
    stats = collect_stats(model, tok, texts, progress=False)
    alphas = apply_awq(model, stats, 3, 32)
    assert len(alphas) == 6 and any(a > 0 for a in alphas.values())
    assert torch.allclose(logits(), before, atol=1e-4)
    fresh = collect_stats(model, tok, texts, progress=False)
    for n in ("layers.0.self_attn.k_proj", "layers.1.mlp.down_proj", "layers.1.mlp.up_proj"):
        assert torch.allclose(stats[n].xtx, fresh[n].xtx, rtol=1e-4, atol=1e-6 * fresh[n].xtx.abs().max())


def test_cpu_dense_cache_follows_buffer_changes():
    """The CPU reference path caches the dequantized weight; an in-place change of a packed buffer must invalidate it."""
    from egt.quant.linear import QuantLinear

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    m = QuantLinear.from_linear(lin, LinearPlan(bits=4, group_size=32, symmetric=False))
    x = torch.randn(2, 64)
    with torch.no_grad():
        y1 = m(x)
        assert torch.equal(m(x), y1)
        m.scales.mul_(2)  # what load_state_dict's in-place copy does to the version counter
        y2 = m(x)
        torch.testing.assert_close(y2, x @ m.dequantize().T + lin.bias)
        assert not torch.allclose(y1, y2)


def test_gemv_pdl_is_opt_in(monkeypatch):
    """PDL measured no gain in the torch-graph decode step (bench/results/quant_kernels.notes.md): off unless asked."""
    from egt import kernels
    monkeypatch.delenv("EGT_GEMV_PDL", raising=False)
    assert not kernels.default_pdl()
    monkeypatch.setenv("EGT_GEMV_PDL", "1")
    assert kernels.default_pdl()
