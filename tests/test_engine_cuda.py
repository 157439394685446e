"""The reference engine on CUDA agrees with itself on the CPU (random weights of a real shape)."""
import pytest
import torch

pytestmark = pytest.mark.cuda


def _engine(device, dtype):
    from egt.engine import Engine
    from egt.models import random_model

    return Engine(random_model("smollm2-135m", dtype=dtype, device=device, seed=3), None, torch.device(device), max_len=256)


def test_cuda_fp32_logits_match_cpu():
    cpu, gpu = _engine("cpu", torch.float32), _engine("cuda", torch.float32)
    prompts = [[int(t) for t in torch.randint(0, 49152, (n,), generator=torch.Generator().manual_seed(n))] for n in (5, 40)]
    for p in prompts:
        ref = cpu.prefill([p], cpu.new_cache(1))[0]
        got = gpu.prefill([p], gpu.new_cache(1))[0].cpu()
        rel = (got - ref).norm() / ref.norm()
        assert rel < 1e-4, rel


def test_cuda_bf16_greedy_tracks_fp32_reference():
    ref, gpu = _engine("cuda", torch.float32), _engine("cuda", torch.bfloat16)
    p = [int(t) for t in torch.randint(0, 49152, (32,), generator=torch.Generator().manual_seed(7))]
    a = ref.prefill([p], ref.new_cache(1))[0].float()
    b = gpu.prefill([p], gpu.new_cache(1))[0].float()
    assert ((b - a).norm() / a.norm()) < 3e-2  # bf16 weights and activations
    g = gpu.generate([p], max_new_tokens=16)
    assert len(g.tokens[0]) == 16 and g.timings.ms_per_token > 0
