"""In-process server tests with a scripted Targeter: micro-batching, back-pressure (503 + Retry-After), timeouts
(504), failure isolation, and the completion text-delta logic. A real uvicorn server on loopback, no model, fast.
The end-to-end tests with the real model and Targeter are in test_serve.py."""
from __future__ import annotations

import concurrent.futures as cf
import socket
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn

from egt.serve.app import Service, create_app
from egt.serve.completions import TextDelta
from egt.serve.config import ServeConfig


class WordTokenizer:
    """Counts whitespace words as tokens: enough for request validation."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [list(range(len(t.split()))) for t in texts]}


@dataclass
class Hit:
    id: str
    text: str
    score: float


@dataclass
class Result:
    entities: list
    timings: dict = field(default_factory=dict)


class ScriptedTargeter:
    """Ranks by a deterministic function of the text; sleeps per call; 'boom' in a text raises ValueError."""

    def __init__(self, delay: float):
        self.delay, self.calls, self.lock = delay, [], threading.Lock()

    def target_batch(self, texts, k):
        with self.lock:
            self.calls.append(len(texts))
        time.sleep(self.delay)
        if any("boom" in t for t in texts):
            raise ValueError("cannot target 'boom'")
        return [Result([Hit(f"{t}-{i}", f"{t}:{i}", -float(i)) for i in range(k)]) for t in texts]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InProcessServer:
    def __init__(self, targeter, **cfg):
        port = free_port()
        self.cfg = ServeConfig(port=port, **cfg)
        svc = Service(engine=None, targeters={"demo": targeter}, cfg=self.cfg, tokenizer=WordTokenizer())
        self.server = uvicorn.Server(uvicorn.Config(create_app(svc), host="127.0.0.1", port=port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "in-process server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=20)


def fire(url, bodies, workers):
    with httpx.Client(base_url=url, timeout=30) as c, cf.ThreadPoolExecutor(workers) as ex:
        return list(ex.map(lambda b: c.post("/v1/targeting", json=b), bodies))


def test_concurrent_requests_are_merged_and_answered_in_order():
    t = ScriptedTargeter(delay=0.2)
    with InProcessServer(t, max_batch=16, batch_wait_ms=20) as s:
        rs = fire(s.url, [{"text": f"ad{i}", "k": 2} for i in range(16)], 16)
    assert [r.status_code for r in rs] == [200] * 16
    for i, r in enumerate(rs):  # each request gets its own ad's result, never a neighbour's
        assert [e["id"] for e in r.json()["results"][0]["entities"]] == [f"ad{i}-0", f"ad{i}-1"]
    assert sum(t.calls) == 16 and max(t.calls) > 1, t.calls
    assert max(t.calls) <= 16


def test_batching_off_runs_one_ad_per_call():
    t = ScriptedTargeter(delay=0.01)
    with InProcessServer(t, max_batch=1, batch_wait_ms=0) as s:
        rs = fire(s.url, [{"text": f"ad{i}"} for i in range(8)], 8)
    assert all(r.status_code == 200 for r in rs)
    assert t.calls == [1] * 8


def test_different_k_are_not_merged():
    t = ScriptedTargeter(delay=0.1)
    with InProcessServer(t, max_batch=16, batch_wait_ms=50) as s:
        rs = fire(s.url, [{"text": f"ad{i}", "k": 1 + i % 2} for i in range(8)], 8)
    assert all(r.status_code == 200 for r in rs)
    for i, r in enumerate(rs):
        assert len(r.json()["results"][0]["entities"]) == 1 + i % 2


def test_full_queue_answers_503_with_retry_after():
    t = ScriptedTargeter(delay=0.5)
    with InProcessServer(t, max_batch=1, batch_wait_ms=0, max_queue=2) as s:
        rs = fire(s.url, [{"text": f"ad{i}"} for i in range(12)], 12)
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
    for r in rs:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "queue_full"


def test_request_timeout_answers_504_and_drops_queued_work():
    t = ScriptedTargeter(delay=0.6)
    with InProcessServer(t, max_batch=1, batch_wait_ms=0, request_timeout_s=0.3) as s:
        rs = fire(s.url, [{"text": f"ad{i}"} for i in range(4)], 4)
        time.sleep(0.8)  # let the one running batch finish
    assert [r.status_code for r in rs] == [504] * 4
    assert all(r.json()["error"]["code"] == "timeout" for r in rs)
    assert len(t.calls) < 4  # requests that timed out while queued never reached the model


def test_a_failing_ad_fails_only_its_own_request():
    t = ScriptedTargeter(delay=0.1)
    with InProcessServer(t, max_batch=16, batch_wait_ms=50) as s:
        rs = fire(s.url, [{"text": "boom" if i == 3 else f"ad{i}"} for i in range(6)], 6)
    codes = [r.status_code for r in rs]
    assert codes == [200, 200, 200, 422, 200, 200], codes
    assert "boom" in rs[3].json()["error"]["message"]


class CharTokenizer:
    """One token per character; decode joins them (so text deltas are easy to predict)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


@pytest.mark.parametrize("text,stop,expect", [
    ("hello world", [], "hello world"),
    ("hello world", ["lo w"], "hel"),
    ("abcabc", ["ca"], "ab"),
    ("no stop here", ["zz"], "no stop here"),
])
def test_text_delta_streams_exactly_the_final_text(text, stop, expect):
    d = TextDelta(CharTokenizer(), eos_ids=set(), stop=stop)
    ids = [ord(c) for c in text]
    out = ""
    for n in range(1, len(ids) + 1):
        out += d.update(ids[:n], final=n == len(ids))
        if d.stopped:
            break
        # text once sent is never retracted: what was streamed is always a prefix of the final text
        assert expect.startswith(out), (out, expect)
    assert out == expect
    assert d.stopped == bool(stop and any(s in text for s in stop))


class FakeEngine:
    """Greedy 'model' whose next token is always 7 (EOS is 0), with a slow decode step."""

    def __init__(self, step_s: float):
        import torch

        self.torch, self.step_s = torch, step_s
        self.device, self.eos_ids, self.max_len = torch.device("cpu"), {0}, 2048
        self.model = self

    def setup_cache(self, batch, max_len, device=None):
        return object()

    def _logits(self, b):
        x = self.torch.zeros(b, 16)
        x[:, 7] = 1.0
        return x

    def prefill(self, prompts, cache):
        return self._logits(len(prompts)), self.torch.zeros(len(prompts), dtype=self.torch.long)

    def decode_step(self, tokens, pad, slot, cache):
        time.sleep(self.step_s)
        return self._logits(tokens.numel())


class WordCodec(WordTokenizer):
    def decode(self, ids, skip_special_tokens=True):
        return "".join(f" w{i}" for i in ids)


def completion_server(step_s, **cfg):
    s = InProcessServer(ScriptedTargeter(0.0), **cfg)
    svc = Service(engine=FakeEngine(step_s), targeters={"demo": ScriptedTargeter(0.0)}, cfg=s.cfg,
                  tokenizer=WordCodec())
    s.server.config.app = create_app(svc)
    return s


def test_completion_streams_every_token_then_done():
    with completion_server(0.0) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        r = c.post("/v1/completions", json={"prompt": "a b", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["choices"][0] == {"text": " w7 w7 w7", "index": 0, "logprobs": None,
                                                                   "finish_reason": "length"}
        with c.stream("POST", "/v1/completions", json={"prompt": "a b", "max_tokens": 3, "stream": True}) as st:
            lines = [x for x in st.iter_lines() if x]
    assert len(lines) == 4 and lines[-1] == "data: [DONE]"


def test_completion_timeout_is_504_and_streams_an_error_event():
    with completion_server(0.25, request_timeout_s=0.5) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        r = c.post("/v1/completions", json={"prompt": "a", "max_tokens": 50})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        with c.stream("POST", "/v1/completions", json={"prompt": "a", "max_tokens": 50, "stream": True}) as st:
            lines = [x for x in st.iter_lines() if x]
    assert '"code": "timeout"' in lines[-2] and lines[-1] == "data: [DONE]"


def test_too_many_streams_get_503():
    with completion_server(0.1, max_streams=1) as s, httpx.Client(base_url=s.url, timeout=30) as c, \
            cf.ThreadPoolExecutor(3) as ex:
        rs = list(ex.map(lambda _: c.post("/v1/completions", json={"prompt": "a", "max_tokens": 10}), range(3)))
    codes = sorted(r.status_code for r in rs)
    assert codes[0] == 200 and 503 in codes, codes
    assert all(r.headers.get("retry-after") == "1" for r in rs if r.status_code == 503)


def test_defaults_bind_loopback_and_read_the_key_from_the_environment(monkeypatch):
    from egt.cli import build_parser
    from egt.serve.__main__ import build_parser as serve_parser

    for args in (build_parser().parse_args(["serve"]), serve_parser().parse_args([])):
        monkeypatch.delenv("EGT_API_KEY", raising=False)
        cfg = ServeConfig.from_args(args)
        assert cfg.host == "127.0.0.1" and cfg.is_loopback and cfg.api_key is None
        assert cfg.model == "default" and cfg.catalog is None and cfg.backend == "auto"
        monkeypatch.setenv("EGT_API_KEY", "from-env")
        cfg = ServeConfig.from_args(args)
        assert cfg.api_key == "from-env" and "from-env" not in repr(cfg)
    assert not ServeConfig(host="0.0.0.0").is_loopback and ServeConfig(host="::1").is_loopback
    with pytest.raises(ValueError):
        ServeConfig(max_k=0).validate()


def test_a_client_leaving_mid_stream_frees_its_slot():
    # 256 steps of 0.1 s: without the disconnect it would hold the only slot for 25 s.
    with completion_server(0.1, max_streams=1) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        with c.stream("POST", "/v1/completions", json={"prompt": "a", "max_tokens": 256, "stream": True}) as st:
            first = next(x for x in st.iter_lines() if x)
            assert first.startswith("data: ")
        # The server notices the disconnect, stops generating and releases the slot.
        deadline = time.monotonic() + 10
        while True:
            r = c.post("/v1/completions", json={"prompt": "a", "max_tokens": 2})
            if r.status_code == 200:
                break
            assert r.status_code == 503 and time.monotonic() < deadline, r.text
            time.sleep(0.1)


def test_identical_ads_in_one_batch_are_computed_once():
    t = ScriptedTargeter(delay=0.2)
    with InProcessServer(t, max_batch=16, batch_wait_ms=50) as s:
        rs = fire(s.url, [{"text": f"ad{i % 2}", "k": 2} for i in range(8)], 8)
    assert all(r.status_code == 200 for r in rs)
    for i, r in enumerate(rs):
        assert r.json()["results"][0]["entities"][0]["id"] == f"ad{i % 2}-0"
    assert sum(t.calls) < 8, t.calls  # duplicates shared within batches
