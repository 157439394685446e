"""End-to-end CLI on the embedded default: compress, info, and the one-line exit-2 errors."""
import os
import subprocess
import sys

import pytest
import torch


def egt(*args, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "egt.cli", *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def compressed_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "smol"
    r = egt("compress", "default", "--out", str(out), "--dtype", "fp16")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    return out


def test_info_prints_manifest_and_plan(compressed_dir):
    r = egt("info", str(compressed_dir))
    assert r.returncode == 0, r.stderr
    assert "sha256 verified" in r.stdout and "method" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (("info", "/nonexistent/dir"), "no such directory"),
    (("compress", "/nonexistent/model", "--out", "/tmp/x"), "no such directory"),
    (("compress", "default", "--out", "/tmp/x", "--budget", "4.25"), "--budget needs --bits"),
    (("compress", "default", "--out", "/tmp/x", "--sparsity", "2:4", "--density", "0.4"), "--density applies to --sparsity mix only"),
    (("compress", "default", "--out", "/tmp/x", "--bits", "4", "--recover-steps", "50"), "needs --sparsity"),
    (("compress", "default", "--out", "/tmp/x", "--sparsity", "2:4", "--recover-steps", "-1"), "--recover-steps must"),
    *([(("compress", "default", "--out", "/tmp/x", "--sparsity", "2:4", "--recover-steps", "5", "--recover-device",
         "cuda"), "no CUDA device")] if not torch.cuda.is_available() else []),
])
def test_user_errors_exit_2_with_one_line(args, needle):
    r = egt(*args)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("egt: error:") and needle in lines[0], r.stderr


@pytest.mark.parametrize("args", [("compress", "default", "--out", "/tmp/x", "--bits", "5"),
                                  ("compress", "default", "--out", "/tmp/x", "--calibration-mode", "bogus"),
                                  ("nonsense",), ("megakernel", "plan", "--model", "nope")])
def test_bad_argument_is_exit_2_with_one_line(args):
    r = egt(*args)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "invalid choice" in lines[0], r.stderr


def test_corrupted_directory_is_exit_2(compressed_dir, tmp_path):
    import shutil

    d = tmp_path / "bad"
    shutil.copytree(compressed_dir, d)
    shard = sorted(d.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    r = egt("info", str(d))
    assert r.returncode == 2 and "truncated" in r.stderr and "Traceback" not in r.stderr


def test_every_subcommand_has_help():
    for cmd in ("compress", "target", "serve", "eval", "bench", "megakernel", "info"):
        r = egt(cmd, "--help")
        assert r.returncode == 0 and "usage: egt " + cmd in r.stdout, cmd
