import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)"))


@pytest.fixture(scope="module")
def one_thread():
    """Small tensor ops on the 2 shared cores: OpenMP threads spin-waiting against other processes ran 5-20x slower
    than one thread. Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def default_engine():
    """The embedded default model on CPU in float32 (loaded once per test session)."""
    from egt.engine import Engine

    return Engine.from_pretrained("default", device="cpu", dtype="fp32", max_len=512)


@pytest.fixture(scope="session")
def default_hf_model():
    from transformers import AutoModelForCausalLM

    from egt.models import default_model_dir

    return AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype=torch.float32).eval()
