"""Sparsification: N:4 masks, the 2-bit-index packed format, SparseGPT, exact-density assignment, packed modules."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from egt.plan import LinearPlan
from egt.sparsify import SparsifyOptions, apply_patterns, plan_mix, prunable_modules, sparsify_linear
from egt.sparsify import assign as A
from egt.sparsify import pattern as P
from egt.sparsify.modules import SparseLinear, SparseQuantLinear

pytestmark = pytest.mark.usefixtures("one_thread")


shapes = st.tuples(st.integers(1, 9), st.integers(1, 6).map(lambda k: 16 * k), st.sampled_from([1, 2]),
                   st.integers(0, 2**31 - 1))


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_compact_expand_pack_round_trip(args):
    out_f, in_f, n, seed = args
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    mask = P.topn_in_groups(torch.rand(out_f, in_f, generator=g), n)
    vals, idx = P.compact(w, mask, n)
    assert vals.shape == (out_f, in_f * n // 4) and int(idx.max()) <= 3
    assert torch.equal(P.expand(vals, idx, n, in_f), w * mask)
    assert torch.equal(P.unpack_indices(P.pack_indices(idx)), idx)
    # Positions ascend inside a group (so the kernel and the expansion agree on order).
    if n == 2:
        assert bool((idx.view(out_f, -1, 2)[..., 0] < idx.view(out_f, -1, 2)[..., 1]).all())


@settings(max_examples=25, deadline=None)
@given(shapes, st.sampled_from([32, 64, -1]), st.booleans(), st.sampled_from([3, 4, 8]))
def test_quantized_module_state_dict_round_trip(args, group, sym, bits):
    from egt.quant.quantizer import dequantize_groups, quantize_groups

    out_f, in_f, n, seed = args
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    mask = P.magnitude_mask(w, n)
    vals, idx = P.compact(w, mask, n)
    qg = quantize_groups(vals, bits, group, sym)
    lp = LinearPlan(bits=bits, group_size=group, symmetric=sym, sparsity=f"{n}:4")
    m = SparseQuantLinear.from_codes(lp, qg, idx, in_f, bias=torch.randn(out_f, generator=g))
    fresh = SparseQuantLinear(lp, out_f, in_f, bias=True)
    fresh.load_state_dict(m.state_dict())
    want = P.expand(dequantize_groups(qg.q, qg.scale, qg.offset, bits, group), idx, n, in_f)
    assert torch.equal(fresh.dense_weight(), want)
    x = torch.randn(3, in_f, generator=g)
    assert torch.allclose(fresh(x), x @ want.T + m.bias, atol=1e-4)
    # Bytes held = what the plan counts (scales/offsets stay fp16 after .half()).
    fresh.half()
    held = sum(t.numel() * t.element_size() for k, t in fresh.state_dict().items() if k != "bias")
    if (in_f * n // 4) % (32 if bits == 3 else 8) == 0:
        assert held * 8 == lp.storage_bits(out_f, in_f)


def test_wanda_keeps_n_per_group_and_prefers_large_activations():
    w = torch.ones(2, 8)
    norm = torch.tensor([1.0, 9.0, 4.0, 0.0, 0.0, 1.0, 16.0, 25.0])
    mask = P.wanda_mask(w, norm, 2)
    assert mask.tolist()[0] == [False, True, True, False, False, False, True, True]
    assert bool((mask.view(2, -1, 4).sum(-1) == 2).all())


def test_compact_rejects_a_mask_that_is_not_n_of_4():
    w = torch.randn(2, 8)
    with pytest.raises(ValueError, match="not 2:4"):
        P.compact(w, torch.ones(2, 8, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="multiple"):
        P.check_shape(20, 1)


def _problem(out_f=24, in_f=64, tokens=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Correlated inputs with uneven scales: where compensation has something to work with.
    mix = torch.randn(in_f, in_f, generator=g) / in_f**0.5 + torch.eye(in_f)
    x = torch.randn(tokens, in_f, generator=g) @ mix * torch.linspace(0.2, 3, in_f)
    w = torch.randn(out_f, in_f, generator=g)
    return w, x


def test_sparsegpt_compensation_beats_plain_wanda_on_output_error():
    w, x = _problem()
    h = (x.T.double() @ x.double()) / x.shape[0]
    sq = (x.double() ** 2).sum(0)
    for n in (1, 2):
        wanda = w * P.wanda_mask(w, sq, n)
        obs, keep = P.obs_prune(w, h, n)
        assert bool((keep.view(w.shape[0], -1, 4).sum(-1) == n).all())
        assert torch.equal(obs == 0, ~keep) or bool(((obs == 0) | keep).all())
        err = lambda v: float(((x @ (w - v).T) ** 2).mean())  # noqa: E731
        assert err(obs) < err(wanda)


def test_joint_sparse_quant_sweep_codes_round_trip():
    w, x = _problem(out_f=8, in_f=128)
    h = (x.T.double() @ x.double()) / x.shape[0]
    from types import SimpleNamespace

    stats = SimpleNamespace(sq_norm=(x.double() ** 2).sum(0), hessian=h)
    lin = torch.nn.Linear(128, 8, bias=True)
    lin.weight.data = w
    err = lambda v: float(((x @ (w - v).T) ** 2).mean())  # noqa: E731
    for sym in (False, True):
        lp = LinearPlan(bits=4, group_size=32, symmetric=sym, sparsity="2:4")
        m = sparsify_linear(lin, lp, stats, "sparsegpt")
        obs, _, _ = P.obs_prune(w, h, 2, quant=(4, 32, sym))
        assert torch.allclose(m.dense_weight(), obs, atol=1e-3)
        assert m.quantize_kept(lp) is m
        rtn = sparsify_linear(lin, lp, stats, "wanda")
        assert err(m.dense_weight()) < err(rtn.dense_weight())


def test_assign_exact_meets_density_and_prefers_cheap_items():
    items = [(64, {"dense": 0.0, "2:4": c, "1:4": 3 * c}) for c in (5.0, 1.0, 0.1, 0.2)]
    pats = A.assign_exact(items, 0.375)
    kept = sum(64 * A.DENSITY[p] for p in pats)
    assert kept == 0.375 * 256
    assert pats[0] in ("dense", "2:4") and pats[2] == "1:4"
    with pytest.raises(ValueError, match="not reachable"):
        A.assign_exact(items, 0.3)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([16, 32, 48]), st.floats(0, 10), st.floats(0, 10)), min_size=2, max_size=8))
def test_assign_exact_is_optimal_against_brute_force(raw):
    import itertools

    items = [(s, {"dense": 0.0, "2:4": a, "1:4": a + b}) for s, a, b in raw]
    total = sum(s for s, _ in items)
    target = 0.5
    best = None
    for combo in itertools.product(["dense", "2:4", "1:4"], repeat=len(items)):
        if sum(s * A.DENSITY[p] for (s, _), p in zip(items, combo)) == target * total:
            c = sum(cost[p] for (_, cost), p in zip(items, combo))
            best = c if best is None else min(best, c)
    pats = A.assign_exact(items, target)
    got = sum(cost[p] for (_, cost), p in zip(items, pats))
    assert sum(s * A.DENSITY[p] for (s, _), p in zip(items, pats)) == target * total
    assert got == pytest.approx(best, abs=1e-9)


def test_storage_report_counts_two_bit_indices_against_csr():
    lp = LinearPlan(bits=16, sparsity="2:4")
    r = P.storage_report(1536, 8960, lp)
    kept = 1536 * 8960 // 2
    assert r["packed_bytes"] == kept * 18 / 8
    assert r["csr_bytes"] == kept * 2 + kept * 4 + 1537 * 4
    q = P.storage_report(1536, 8960, LinearPlan(bits=4, group_size=128, sparsity="1:4"))
    assert q["packed_bytes"] < 0.4 * q["dense_same_precision_bytes"]


# ----------------------------------------------------------------------------------------------------------------
# A tiny random model: the whole pipeline (importance, assignment, packing, plan, save/load) in seconds.


@pytest.fixture(scope="module")
def tiny():
    from egt.models import ModelShape, build_model

    shape = ModelShape("tiny", hidden=64, intermediate=128, layers=4, heads=4, kv_heads=2, head_dim=16, vocab=97)
    model = build_model(shape)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g) if name.endswith("norm.weight")
                    else torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model.eval()


def _tiny_stats(model, seqs):
    from egt.calibrate import LinearStats
    from egt.plan import linear_modules

    acc = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, a, o, n=n: acc.setdefault(n, []).append(a[0].reshape(-1, a[0].shape[-1]).double()))
        for n in linear_modules(model)]
    from egt.sparsify.importance import _forward

    with torch.inference_mode():
        for s in seqs:
            _forward(model, s)
    for h in hooks:
        h.remove()
    out = {}
    for n, xs in acc.items():
        x = torch.cat(xs)
        out[n] = LinearStats(x.T @ x, (x**2).sum(0), x.abs().mean(0), x[:64].float(), x.shape[0])
    return out


def test_mix_plan_is_exact_and_modules_swap(tiny):
    import copy

    model = copy.deepcopy(tiny)
    seqs = [torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    stats = _tiny_stats(model, seqs)
    from egt.sparsify.importance import capture

    cap = capture(model, seqs)
    for gran in ("layer", "module"):
        opts = SparsifyOptions(granularity=gran)
        patterns, rep = plan_mix(model, None, [], stats, 0.375, opts, cap=cap)
        assert rep["achieved_density"] == 0.375
    before = model.layers[0].mlp.down_proj.weight.detach().clone()
    lps = apply_patterns(model, patterns, stats, bits=4, group_size=32, symmetric=False, method="sparsegpt")
    assert all(isinstance(model.get_submodule(n), SparseQuantLinear) for n in lps)
    with torch.inference_mode():
        from egt.sparsify.importance import _forward

        assert torch.isfinite(_forward(model, seqs[0])).all()
    if "layers.0.mlp.down_proj" in lps:
        m = model.layers[0].mlp.down_proj
        idx = P.unpack_indices(m.indices)
        structure = P.expand(torch.ones(idx.shape), idx, m.n, m.in_features)  # quantized kept values may be 0
        assert structure.mean() == A.DENSITY[patterns["layers.0.mlp.down_proj"]]
        assert m.dense_weight().shape == before.shape


def test_float_sparse_module_matches_masked_linear():
    w = torch.randn(12, 64)
    mask = P.magnitude_mask(w, 2)
    b = torch.randn(12)
    m = SparseLinear.from_dense(LinearPlan(sparsity="2:4"), w, mask, b)
    x = torch.randn(2, 5, 64)
    assert torch.allclose(m(x), torch.nn.functional.linear(x, w * mask, b), atol=1e-5)
    fresh = SparseLinear(LinearPlan(sparsity="2:4"), 12, 64, bias=True)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.dense_weight(), w * mask)


class _CharTokenizer:
    """Enough of a tokenizer for calibration on the tiny model: one token per character."""

    def __call__(self, text, add_special_tokens=False, truncation=True, max_length=256, **_):
        return {"input_ids": [ord(c) % 97 for c in text][:max_length]}


@pytest.mark.parametrize("mode", ["sequential", "oneshot", "sequential-module"])
def test_compress_mix_int4_composes_with_egt_quant_and_round_trips(tiny, tmp_path, mode):
    """sparsify_model then egt.quant.quantize_model (as egt.compress runs them), then save / load the directory."""
    import copy
    from types import SimpleNamespace

    from egt.compress import CompressConfig
    from egt.plan import CompressionPlan
    from egt.quant import quantize_model
    from egt.sparsify import sparsify_model
    from egt.sparsify.importance import _forward

    model = copy.deepcopy(tiny)
    loaded = SimpleNamespace(model=model, tokenizer=_CharTokenizer())
    texts = [f"ad number {i}: running shoes for trail runners, 20% off this week" for i in range(6)]
    cfg = CompressConfig(bits=4, sparsity="mix", density=0.375, group_size=32, calibration_mode=mode)
    cfg.quant_refine = "rtn"
    cfg.quant_metric = getattr(__import__("egt.quant.sensitivity", fromlist=["METRICS"]), "METRICS")[0]
    plan = sparsify_model(loaded, CompressionPlan(method=cfg.method), cfg, texts, progress=False,
                          options=SparsifyOptions(importance_texts=3, importance_tokens=32,
                                                  calibration=cfg.calibration_mode))
    assert plan.meta["sparsify"]["density"] == 0.375
    assert plan.meta["sparsify"]["options"]["calibration"] == mode
    sparse = {n: lp for n, lp in plan.layers.items() if lp.sparsity != "dense"}
    assert sparse and all(lp.bits == 4 and lp.group_size == 32 for lp in sparse.values())
    before = {n: model.get_submodule(n) for n in sparse}
    plan = quantize_model(loaded, plan, cfg, texts, progress=False)
    for n in sparse:  # the hook returns the module the joint sweep already quantized
        assert model.get_submodule(n) is before[n] and plan.layers[n] == sparse[n]
    ids = torch.tensor([5, 17, 33, 2, 60, 41, 8])
    with torch.inference_mode():
        want = _forward(model, ids)
    from egt.format import load_compressed, save_compressed

    hf_config = SimpleNamespace(save_pretrained=lambda d: None)
    save_compressed(model, None, hf_config, plan, tmp_path / "m")
    from egt.format import verify_directory

    manifest = verify_directory(tmp_path / "m")
    assert manifest["plan"]["layers"][next(iter(sparse))]["sparsity"] in ("2:4", "1:4")
    # load_compressed needs an HF config and tokenizer on disk; rebuild the skeleton the same way it does.
    from safetensors.torch import load_file

    from egt.models import build_model
    from egt.modules import install_compressed_modules

    again = build_model(model.shape)
    install_compressed_modules(again, plan)
    state = {}
    for f in sorted((tmp_path / "m").glob("*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = again.load_state_dict(state, strict=False)
    assert not unexpected and not [m for m in missing if m != "lm_head.weight"]
    again.eval()
    with torch.inference_mode():
        got = _forward(again, ids)
    assert torch.allclose(got, want, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Sequential calibration (egt.calibrate.sequential_stats): streamed per stage, on the model as compressed so far.

_TEXTS = [f"ad number {i}: running shoes for trail runners, 20% off this week" for i in range(6)]


def _same_stats(a, b):
    assert a.tokens == b.tokens
    assert torch.allclose(a.xtx, b.xtx, rtol=1e-9, atol=1e-9)
    assert torch.allclose(a.sq_norm, b.sq_norm, rtol=1e-9, atol=1e-9)
    assert torch.allclose(a.abs_mean, b.abs_mean, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("per", ["layer", "module"])
def test_sequential_stats_with_nothing_compressed_equal_collect_stats(tiny, per):
    """Identity plan: streaming layer by layer sees exactly what one forward pass of the model sees."""
    from egt.calibrate import collect_stats, sequential_stats, tokenize_texts

    tok = _CharTokenizer()
    want = collect_stats(tiny, tok, _TEXTS, progress=False)
    got, calls = {}, []

    def on_stage(i, st):
        calls.append((i, sorted(st)))
        got.update(st)

    hidden = sequential_stats(tiny, tok, _TEXTS, on_stage, per=per)
    assert sorted(got) == sorted(want)
    for n in want:
        _same_stats(got[n], want[n])
        assert got[n].sample.shape[1] == want[n].sample.shape[1] and got[n].sample.shape[0] > 0
    # Stages come in forward order and cover each module once.
    assert [i for i, _ in calls] == sorted(i for i, _ in calls)
    assert sum(len(m) for _, m in calls) == len(want)
    if per == "module":
        assert calls[1][1] == ["layers.0.self_attn.o_proj"]
    with torch.inference_mode():
        for ids, h in zip(tokenize_texts(tok, _TEXTS), hidden):
            t = len(ids)
            slots = torch.arange(t)
            ref = tiny(ids.view(1, -1), slots.view(1, -1), slots, tiny.setup_cache(1, t), kv_len=t, hidden_only=True)
            assert torch.allclose(tiny.norm(h), ref, atol=1e-6)


@pytest.mark.parametrize("per", ["layer", "module"])
def test_sequential_stats_come_from_the_already_compressed_earlier_stages(tiny, per):
    """Each stage's statistics equal collect_stats on a model whose earlier stages are compressed and later dense."""
    import copy

    from egt.calibrate import _stages, collect_stats, sequential_stats

    tok = _CharTokenizer()
    names = tiny_linear_names(tiny)

    def compress(model, mods):  # 2:4 magnitude pruning in place
        for n in mods:
            lin = model.get_submodule(n)
            lin.weight.data = lin.weight.data * P.magnitude_mask(lin.weight.data, 2)

    model = copy.deepcopy(tiny)
    got = []
    sequential_stats(model, tok, _TEXTS, lambda i, st: (got.append(st), compress(model, st)), modules=names, per=per)
    ref = copy.deepcopy(tiny)
    stages = [s for layer in _stages(ref, names, per)[0] for s in layer]
    assert [sorted(s) for s in got] == [sorted(s) for s in stages]
    dense = collect_stats(tiny, tok, _TEXTS, progress=False)
    for k, (st, stage) in enumerate(zip(got, stages)):
        want = collect_stats(ref, tok, _TEXTS, modules=stage, progress=False)
        for n in stage:
            _same_stats(st[n], want[n])
        if k > 0:  # the earlier compression really changed what this stage sees
            assert not torch.allclose(st[stage[0]].xtx, dense[stage[0]].xtx)
        compress(ref, stage)
    for n in names:
        assert torch.equal(model.get_submodule(n).weight, ref.get_submodule(n).weight)


def tiny_linear_names(model):
    from egt.plan import linear_modules

    return [n for n in linear_modules(model) if n != "lm_head"]


def test_sequential_pruning_keeps_layer_zero_and_changes_later_layers(tiny):
    """Layer 0 sees the same inputs in both modes (same packed module); later layers are calibrated differently."""
    import copy

    from egt.calibrate import collect_stats
    from egt.sparsify import apply_patterns_sequential

    tok = _CharTokenizer()
    pats = {n: "2:4" for n in tiny_linear_names(tiny)}
    one = copy.deepcopy(tiny)
    apply_patterns(one, pats, collect_stats(one, tok, _TEXTS, progress=False), None, 128, False, "sparsegpt")
    seq = copy.deepcopy(tiny)
    lps = apply_patterns_sequential(seq, tok, _TEXTS, pats, None, 128, False, "sparsegpt")
    assert sorted(lps) == sorted(pats) and all(isinstance(seq.get_submodule(n), SparseLinear) for n in pats)
    w = lambda m, n: m.get_submodule(n).dense_weight()  # noqa: E731
    from egt.sparsify.importance import layer_modules

    for n in layer_modules(tiny, 0):
        assert torch.allclose(w(one, n), w(seq, n), atol=1e-6)
    assert not torch.allclose(w(one, "layers.3.mlp.down_proj"), w(seq, "layers.3.mlp.down_proj"), atol=1e-4)


def test_calibration_mode_is_validated():
    from egt.compress import CompressConfig

    with pytest.raises(ValueError, match="calibration_mode"):
        CompressConfig(sparsity="2:4", calibration_mode="twice").validate()
    with pytest.raises(ValueError, match="calibration"):
        SparsifyOptions(calibration="twice").validate()


@pytest.mark.parametrize("mode", ["sequential", "sequential-module"])
def test_quant_sequential_gptq_differs_from_oneshot_only_after_layer_zero(tiny, mode):
    """egt.quant with sequential calibration: layer 0 sees the dense inputs either way, later layers do not."""
    import copy
    from types import SimpleNamespace

    from egt.compress import CompressConfig
    from egt.plan import CompressionPlan
    from egt.quant import quantize_model

    out = {}
    for m in ("oneshot", mode):
        model = copy.deepcopy(tiny)
        cfg = CompressConfig(bits=4, group_size=32, calibration_mode=m)
        plan = quantize_model(SimpleNamespace(model=model, tokenizer=_CharTokenizer()), CompressionPlan("int4"), cfg,
                              _TEXTS, progress=False)
        assert plan.meta["quant"]["calibration"] == m
        out[m] = model
    q = lambda m, n: out[m].get_submodule(n).qweight  # noqa: E731
    assert torch.equal(q("oneshot", "layers.0.self_attn.q_proj"), q(mode, "layers.0.self_attn.q_proj"))
    assert not torch.equal(q("oneshot", "layers.3.mlp.down_proj"), q(mode, "layers.3.mlp.down_proj"))


def test_recovery_lowers_kl_and_keeps_the_masks(tiny):
    """Distillation trains only the kept values: the 2-bit indices, the pruned zeros and every other weight stay."""
    import copy

    from egt.sparsify.importance import _forward
    from egt.sparsify.recover import RecoverOptions, distill_kl, recover

    seqs = [torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    model = copy.deepcopy(tiny)
    stats = _tiny_stats(model, seqs)
    apply_patterns(model, {n: "1:4" for n in prunable_modules(model)}, stats, bits=None, group_size=32,
                   symmetric=False, method="sparsegpt")
    texts = ["".join(chr(97 + (7 * i + j) % 26) for j in range(150)) for i in range(8)]
    probe = torch.tensor([[ord(c) % 97 for c in texts[0][:64]]])

    def kl_to_teacher(m):
        with torch.inference_mode():
            return float(distill_kl(_forward(tiny, probe[0]), _forward(m, probe[0])))

    before_kl = kl_to_teacher(model)
    down = model.layers[1].mlp.down_proj
    idx, norm = down.indices.clone(), model.layers[1].post_attention_layernorm.weight.clone()
    rep = recover(model, tiny, _CharTokenizer(), texts, RecoverOptions(steps=30, lr=3e-3, warmup=2, batch=2,
                                                                      seq_len=32), progress=False)
    assert rep["modules"] == len(prunable_modules(tiny)) and len(rep["losses"]) == 30
    assert kl_to_teacher(model) < 0.7 * before_kl
    assert torch.equal(down.indices, idx) and torch.equal(model.layers[1].post_attention_layernorm.weight, norm)
    assert not down.values.requires_grad and all(p.requires_grad for p in model.parameters())
    assert (P.expand(torch.ones(idx.shape[0], down.kept), P.unpack_indices(idx), 1, 128).bool()
            | (down.dense_weight() == 0)).all()  # nothing outside the mask became nonzero
    with pytest.raises(ValueError, match="no float sparse|has none"):
        recover(copy.deepcopy(tiny), tiny, _CharTokenizer(), texts, RecoverOptions(steps=1), progress=False)


def test_compress_with_recovery_prunes_in_float_then_quantizes(tiny):
    """--recover-steps: prune in float, distill, then egt.quant rounds the recovered kept values."""
    import copy
    from types import SimpleNamespace

    from egt.compress import CompressConfig, compress_model

    loaded = SimpleNamespace(model=copy.deepcopy(tiny), tokenizer=_CharTokenizer())
    cfg = CompressConfig(bits=4, sparsity="2:4", group_size=32, calibration_samples=4, recover_steps=3,
                         recover_samples=8, quant_refine="rtn", calibration_mode="oneshot")
    plan = compress_model(loaded, cfg, progress=False)
    rec = plan.meta["recover"]
    assert rec["options"]["steps"] == 3 and rec["modules"] == len(prunable_modules(tiny)) and "losses" not in rec
    for n in prunable_modules(tiny):
        assert isinstance(loaded.model.get_submodule(n), SparseQuantLinear)
        assert plan.layers[n].bits == 4 and plan.layers[n].sparsity == "2:4"
    with pytest.raises(ValueError, match="needs --sparsity"):
        CompressConfig(bits=4, recover_steps=3).validate()
    with pytest.raises(ValueError, match="cpu or cuda"):
        CompressConfig(sparsity="2:4", recover_steps=3, recover_device="tpu").validate()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compress_with_recovery_on_cuda_returns_a_cpu_model(tiny):
    """--recover-device cuda: only the training runs on the GPU; the compressed model comes back to the CPU."""
    import copy
    from types import SimpleNamespace

    from egt.compress import CompressConfig, compress_model

    loaded = SimpleNamespace(model=copy.deepcopy(tiny), tokenizer=_CharTokenizer())
    cfg = CompressConfig(bits=4, sparsity="2:4", group_size=32, calibration_samples=4, recover_steps=20,
                         recover_samples=8, quant_refine="rtn", calibration_mode="oneshot", recover_device="cuda")
    plan = compress_model(loaded, cfg, progress=False)
    rec = plan.meta["recover"]
    assert rec["kl_last"] < rec["kl_first"] and plan.meta["config"]["recover_device"] == "cuda"
    assert all(t.device.type == "cpu" for t in loaded.model.state_dict().values())
