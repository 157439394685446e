"""The compressed-model directory: atomic save, verified load, identical generation after a round trip."""
import json

import pytest
import torch

from egt.format import CorruptModelError, atomic_directory, load_compressed, save_compressed, verify_directory
from egt.plan import CompressionPlan


@pytest.fixture(scope="module")
def saved(default_engine, tmp_path_factory):
    from egt.models import load_model

    loaded = load_model("default", dtype=torch.float32)
    out = tmp_path_factory.mktemp("fmt") / "model"
    save_compressed(loaded.model, loaded.tokenizer, loaded.hf_config, CompressionPlan(), out, shard_bytes=200 << 20)
    return out


def test_round_trip_generates_identical_tokens(saved, default_engine):
    from egt.engine import Engine

    again = Engine.from_pretrained(str(saved), device="cpu", dtype="fp32", max_len=512)
    ids = default_engine.encode("Who should see an ad for a yoga studio?")
    assert again.generate([ids], max_new_tokens=16).tokens == default_engine.generate([ids], max_new_tokens=16).tokens


def test_manifest_lists_every_file_with_sha256_and_the_plan(saved):
    m = verify_directory(saved)
    assert m["egt_format"] == 1 and m["method"] == "none" and m["plan"]["method"] == "none"
    names = {p.name for p in saved.iterdir()} - {"egt_manifest.json"}
    assert set(m["files"]) == names
    assert len([n for n in names if n.endswith(".safetensors")]) >= 2  # sharded at 200 MB
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())


def _copy(saved, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(saved, dst)
    return dst


def test_flipped_byte_fails_the_checksum(saved, tmp_path):
    d = _copy(saved, tmp_path)
    shard = sorted(d.glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptModelError, match=f"{shard.name} fails its sha256 check"):
        load_compressed(d)


def test_truncated_file_is_reported(saved, tmp_path):
    d = _copy(saved, tmp_path)
    shard = sorted(d.glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(CorruptModelError, match="truncated"):
        load_compressed(d)


def test_missing_file_is_reported(saved, tmp_path):
    d = _copy(saved, tmp_path)
    (d / "config.json").unlink()
    with pytest.raises(CorruptModelError, match="config.json is missing"):
        load_compressed(d)


def test_unlisted_shard_is_reported(saved, tmp_path):
    d = _copy(saved, tmp_path)
    (d / "model-99999-of-99999.safetensors").write_bytes(b"x")
    with pytest.raises(CorruptModelError, match="not listed"):
        load_compressed(d)


def test_bad_manifest_json_is_reported(saved, tmp_path):
    d = _copy(saved, tmp_path)
    (d / "egt_manifest.json").write_text("{not json")
    with pytest.raises(CorruptModelError, match="not valid JSON"):
        load_compressed(d)


def test_crash_during_save_leaves_the_old_directory_intact(tmp_path):
    out = tmp_path / "model"
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as tmp:
            (tmp / "a.txt").write_text("new, half written")
            raise RuntimeError("simulated crash")
    assert (out / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary directory left behind


def test_plan_survives_the_manifest(tmp_path):
    from egt.models import SHAPES, random_model

    m = random_model("smollm2-135m", dtype=torch.float32, device="cpu")
    plan = CompressionPlan("none", meta={"note": "float"})
    from egt.models import hf_config_for_shape

    save_compressed(m, None, hf_config_for_shape(SHAPES["smollm2-135m"]), plan, tmp_path / "r")
    manifest = json.loads((tmp_path / "r" / "egt_manifest.json").read_text())
    assert CompressionPlan.from_dict(manifest["plan"]) == plan
    assert manifest["shape"]["hidden"] == 576
