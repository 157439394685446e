"""Our Transformer computes the same logits as transformers for each supported family (tiny random configs)."""
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from egt.models import ModelLoadError, load_model

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=300, max_position_embeddings=256, tie_word_embeddings=False)
CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON),
    "llama3-rope": lambda: LlamaConfig(**COMMON, rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                       "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 64}),
    "mistral": lambda: MistralConfig(**COMMON),
    "qwen2": lambda: Qwen2Config(**COMMON),
    "qwen3": lambda: Qwen3Config(**COMMON, head_dim=16),
}


def _save_tiny(kind, tmp_path, tokenizer_dir):
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(CONFIGS[kind]()).eval()
    with torch.no_grad():  # randomise norms and biases too, so a missed weight shows up
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp_path)
    return hf


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_logits_match_transformers(kind, tmp_path):
    from egt.models import default_model_dir

    hf = _save_tiny(kind, tmp_path, default_model_dir())
    ours = load_model(str(tmp_path), dtype=torch.float32).model
    ids = torch.randint(0, 300, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        cache = ours.setup_cache(2, 64)
        slots = torch.arange(37)
        got = ours(ids, slots.expand(2, -1), slots, cache)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_incremental_decode_matches_full_forward(tmp_path):
    """Prefill + token-by-token decode through the cache equals one full causal forward."""
    from egt.models import default_model_dir

    _save_tiny("qwen2", tmp_path, default_model_dir())
    m = load_model(str(tmp_path), dtype=torch.float64).model
    ids = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = m(ids, torch.arange(20).view(1, -1), torch.arange(20), m.setup_cache(1, 32))
        cache = m.setup_cache(1, 32)
        steps = [m(ids[:, :12], torch.arange(12).view(1, -1), torch.arange(12), cache)[:, -1]]
        for t in range(12, 20):
            steps.append(m(ids[:, t:t + 1], torch.tensor([[t]]), torch.tensor([t]), cache)[:, -1])
    torch.testing.assert_close(torch.stack(steps[1:], 1), full[:, 12:], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(steps[0], full[:, 11], rtol=1e-9, atol=1e-9)


def test_unsupported_family_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_embd": 8}')
    with pytest.raises(ModelLoadError, match="unsupported model_type 'gpt2'"):
        load_model(str(tmp_path))


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_model(str(tmp_path / "nope"))


def test_pickle_checkpoints_are_refused(tmp_path):
    from egt.models import default_model_dir

    _save_tiny("llama", tmp_path, default_model_dir())
    for f in tmp_path.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ModelLoadError, match="never loads pickled"):
        load_model(str(tmp_path))


def test_random_model_keeps_the_asked_layers():
    """random_model(layers=N): the shape's layer geometry with N layers under its own name (plans are keyed by it)."""
    from egt.models import SHAPES, random_model
    m = random_model("smollm2-135m", dtype=torch.float32, device="cpu", layers=2)
    full = SHAPES["smollm2-135m"]
    assert m.shape.name == "smollm2-135m-2l" and m.shape.layers == 2 and len(m.layers) == 2
    assert (m.shape.hidden, m.shape.heads, m.shape.kv_heads) == (full.hidden, full.heads, full.kv_heads)
    with pytest.raises(ModelLoadError):
        random_model("no-such-shape", device="cpu", layers=2)
