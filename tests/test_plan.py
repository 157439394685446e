import pytest
from hypothesis import given, strategies as st

from egt.plan import CompressionPlan, LinearPlan, PlanError


def test_storage_bits_counts_values_scales_zeros_and_indices():
    assert LinearPlan().storage_bits(8, 128) == 8 * 128 * 16
    # int4 g128 asym: 4 bits a weight + one fp16 scale and one fp16 zero per 128 weights = 4.25 bpw
    assert LinearPlan(bits=4, group_size=128).storage_bits(8, 128) == 8 * 128 * 4 + 8 * 32
    assert LinearPlan(bits=4, group_size=128, symmetric=True).storage_bits(8, 128) == 8 * 128 * 4 + 8 * 16
    # 2:4 fp16: half the values at 16 bits + a 2-bit index each
    assert LinearPlan(sparsity="2:4").storage_bits(4, 64) == 4 * 32 * (16 + 2)
    # 1:4 int4 g32 (groups over kept values): 16 kept a row -> one group a row
    assert LinearPlan(bits=4, group_size=32, sparsity="1:4").storage_bits(4, 64) == 4 * 16 * (4 + 2) + 4 * 32


def test_invalid_fields_are_clear_errors():
    with pytest.raises(PlanError, match="bits"):
        LinearPlan(bits=5)
    with pytest.raises(PlanError, match="group_size"):
        LinearPlan(group_size=48)
    with pytest.raises(PlanError, match="sparsity"):
        LinearPlan(sparsity="3:4")


plans = st.builds(LinearPlan, bits=st.sampled_from([3, 4, 8, 16]), group_size=st.sampled_from([32, 64, 128, 256, -1]),
                  symmetric=st.booleans(), sparsity=st.sampled_from(["dense", "2:4", "1:4"]))


@given(st.dictionaries(st.from_regex(r"layers\.[0-9]\.mlp\.(up|down)_proj", fullmatch=True), plans, max_size=5))
def test_plan_round_trips_through_json(layers):
    import json

    plan = CompressionPlan("mixed", layers, {"budget": 4.25})
    again = CompressionPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan


def test_bits_per_weight_of_a_uniform_plan():
    shapes = {"a": (64, 256), "b": (128, 256)}
    plan = CompressionPlan("int4", {n: LinearPlan(bits=4, group_size=64, symmetric=True) for n in shapes})
    assert plan.bits_per_weight(shapes) == pytest.approx(4 + 16 / 64)
