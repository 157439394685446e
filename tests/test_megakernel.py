"""MegaKernel planning on the CPU: task DAG, shared-memory model, search, plan JSON, code generation (and one
nvcc build where nvcc exists). The GPU behaviour is in test_megakernel_cuda.py."""
import json
import shutil

import pytest

from egt.megakernel.codegen import generate_source, scratch_layout
from egt.megakernel.dag import build_dag, check_phases
from egt.megakernel.profiles import PROFILES
from egt.megakernel.schedule import AttnSchedule, MatvecSchedule, MegaPlan
from egt.megakernel.search import PlanStore, predict_ms, search, spearman
from egt.models import SHAPES
from egt.plan import CompressionPlan


def test_dag_bytes_edges_and_phases():
    s = SHAPES["smollm2-135m"]
    dag = build_dag(s, CompressionPlan(), batch=2, attn_splits=3)
    assert dag.total_weight_bytes() == s.weight_params() * 2
    assert len(dag.topo_order()) == len(dag.tasks)
    assert check_phases(dag) == []
    g = s.heads // s.kv_heads
    t = dag.tasks["layers.4.attn.b1.h2.s0"]
    # attention on kv head 2 waits for its own q heads and its own k/v head only (fine-grained RAW edges)
    assert t.deps == {f"layers.4.q{2 * g + j}" for j in range(g)} | {"layers.4.rope_kv2"}
    assert dag.tasks["layers.4.attn_reduce.b1.h2"].deps == {f"layers.4.attn.b1.h2.s{i}" for i in range(3)}
    # resource edge: down_proj overwrites the residual buffer o_proj read
    assert "layers.4.o_proj" in dag.tasks["layers.4.down_proj"].deps


def test_dag_operand_kind_follows_compression_plan():
    s = SHAPES["smollm2-135m"]
    plan = CompressionPlan(method="mixed").with_module("layers.0.mlp.down_proj", bits=4, group_size=64)
    plan = plan.with_module("layers.1.mlp.up_proj", bits=4, group_size=128, sparsity="2:4")
    dag = build_dag(s, plan)
    w = dag.tasks["layers.0.down_proj"].weights[0]
    assert w.kind == "int4-g64-asym"
    assert w.bytes == plan.for_module("layers.0.mlp.down_proj").storage_bits(s.hidden, s.intermediate) // 8
    assert dag.tasks["layers.1.gate_up"].weights[1].kind == "2:4-int4-g128-asym"
    assert dag.tasks["layers.1.gate_up"].weights[0].kind == "dense-bf16"
    assert dag.total_weight_bytes() < s.weight_params() * 2


def test_phase_check_catches_a_backwards_edge():
    dag = build_dag(SHAPES["smollm2-135m"], batch=1)
    dag.tasks["layers.0.q0"].deps.add("layers.0.down_proj")
    assert any("backwards" in e for e in check_phases(dag))


def test_ksplit_halves_smem_and_ada_profile_needs_it():
    s = SHAPES["qwen2.5-1.5b"]
    ada = PROFILES["ada-l20"]
    plans = search(s, 16, ada, max_plans=2)
    assert plans, "some schedule must fit the L20 profile"
    best = plans[0]
    assert best.blocks == 92
    assert best.smem["peak"] <= ada.smem_per_block
    assert best.smem["peak_without_ksplit"] >= 2 * best.smem["peak"]  # activations of b16 x 8960 need K-split
    no_ks = MegaPlan(**{**best.__dict__, "ops": {k: MatvecSchedule(v.tr, v.tk, v.stages, 1, v.wpr, v.rot)
                                                for k, v in best.ops.items()}})
    assert any("shared memory" in e for e in no_ks.check(ada.smem_per_block))


def test_search_ranks_and_cost_model_reacts():
    s = SHAPES["llama-3.2-1b"]
    plans = search(s, 1, "h100", max_plans=4)
    assert len(plans) >= 2
    assert [p.predicted_ms for p in plans] == sorted(p.predicted_ms for p in plans)
    floor = s.weight_params() * 2 / (PROFILES["h100"].bandwidth_gbs * 1e9) * 1e3
    assert plans[0].predicted_ms > floor  # the model never beats physics
    shallow = MegaPlan(**{**plans[0].__dict__, "ops": {k: MatvecSchedule(v.tr, v.tk, 2, v.ksplit, v.wpr, v.rot)
                                                      for k, v in plans[0].ops.items()}})
    tiny = MegaPlan(**{**shallow.__dict__, "ops": {k: MatvecSchedule(v.tr, 64, 2, v.ksplit, v.wpr, v.rot)
                                                   for k, v in shallow.ops.items()}})
    assert predict_ms(tiny, PROFILES["h100"]) > predict_ms(shallow, PROFILES["h100"])  # less in flight: slower


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)


def test_plan_json_roundtrip_hash_and_store(tmp_path):
    p = search(SHAPES["smollm2-135m"], 1, "h100", max_plans=1)[0]
    q = MegaPlan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert q.plan_hash() == p.plan_hash() and q.key() == p.key()
    r = MegaPlan(**{**q.__dict__, "attn": AttnSchedule(q.attn.splits, q.attn.sub, q.attn.rot, 4096)})
    assert r.plan_hash() != p.plan_hash()
    store = PlanStore(tmp_path)
    assert store.get(p.key()) is None
    p.measured_ms = 0.5
    store.put(p)
    got = store.get(p.key())
    assert got.plan_hash() == p.plan_hash() and got.measured_ms == 0.5


def test_generated_source_bakes_the_schedule():
    p = search(SHAPES["qwen2.5-0.5b"], 2, "h100", max_plans=1)[0]
    src = generate_source(p)
    s = p.ops["gateup"]
    assert f"MvCfg<{SHAPES['qwen2.5-0.5b'].intermediate}, 896, 2, {s.tr}, {s.tk}, {s.stages}, {s.ksplit}" in src
    assert "constexpr bool QKV_BIAS = true" in src and "NB = 2" in src
    lay = scratch_layout(p)
    assert f"SCR_H = {lay['H']}" in src
    bad = MegaPlan(**{**p.__dict__, "ops": {**p.ops, "o": MatvecSchedule(7, 100, 1, 1, 1, 0)}})
    with pytest.raises(ValueError):
        generate_source(bad)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_nvcc_builds_a_plan(tmp_path, monkeypatch):
    from egt.megakernel.codegen import build
    monkeypatch.setenv("EGT_CACHE", str(tmp_path))
    monkeypatch.setenv("EGT_MK_ARCHS", "90")
    p = search(SHAPES["smollm2-135m"], 1, "h100", max_plans=1)[0]
    lib = build(p)
    assert lib.exists() and lib.stat().st_size > 10000
    assert build(p) == lib  # cached by plan hash


def test_cli_plan_and_dag(capsys):
    from egt.megakernel.cli import main
    assert main(["plan", "--model", "smollm2-135m", "--profile", "ada-l20"]) == 0
    out = capsys.readouterr().out
    assert "ada-l20" in out and "92 blocks" in out and "without K-split" in out
    assert main(["plan", "--model", "qwen2.5-0.5b", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["batch"] == 1 and set(d["ops"]) == {"qkv", "o", "gateup", "down", "lm_head"}
    assert main(["dag", "--model", "smollm2-135m", "--batch", "2", "--splits", "2"]) == 0
    assert "respects every edge" in capsys.readouterr().out
