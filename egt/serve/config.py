"""Server settings: one frozen dataclass with every limit the server enforces.

Contract: `ServeConfig.from_args(args)` reads the `egt serve` namespace (model, catalog, host, port, backend,
device, api_key) plus optional tuning attributes that `python -m egt.serve` adds (max_batch, batch_wait_ms, ...);
anything missing takes the default below. The API key comes from `--api-key` or `EGT_API_KEY` and is kept out of
`repr` so that it can never reach a log line.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields

LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ServeConfig:
    model: str = "default"
    catalog: str | None = None  # None = the packaged demo catalog
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "auto"
    device: str = "auto"
    api_key: str | None = field(default=None, repr=False)
    # Targeting limits: a request may carry up to max_ads texts, each of at most max_text_tokens tokens.
    max_k: int = 50
    max_ads: int = 32
    max_text_tokens: int = 256
    max_body_bytes: int = 1 << 20
    # Completions limits.
    max_completion_tokens: int = 256
    max_prompts: int = 8
    max_prompt_tokens: int = 1024
    max_streams: int = 32  # completions being generated at once; the next one gets 503
    # Micro-batching: the batcher waits up to batch_wait_ms after the first queued ad for more, then runs up to
    # max_batch ads in one Targeter.target_batch call. max_batch=1 turns batching off. None = 16 on a GPU, 1 on a
    # CPU: on the 2-core CPU, merging ads lowered throughput and doubled p50 latency (eval/results/serve.json),
    # since batched passes there cost as much per ad as single ones and every ad of a batch waits for all of it.
    max_batch: int | None = None
    batch_wait_ms: float = 5.0
    # Back-pressure: at most max_queue ads wait; the next request gets 503 with Retry-After.
    max_queue: int = 256
    request_timeout_s: float = 60.0
    # Targeter trigger: "auto" uses the measured cost model (calibrated once per device, then cached),
    # "always" verifies the whole remaining trie right after prefill, "never" decodes to the end.
    trigger: str = "auto"
    # On SIGTERM uvicorn stops accepting and waits this long for in-flight requests; None = request_timeout_s + 5,
    # which is enough for every accepted request, since each one is answered (200 or 504) within its timeout.
    graceful_timeout_s: float | None = None

    @classmethod
    def from_args(cls, args) -> "ServeConfig":
        kw = {f.name: getattr(args, f.name) for f in fields(cls)
              if getattr(args, f.name, None) is not None}
        if not kw.get("api_key"):
            kw["api_key"] = os.environ.get("EGT_API_KEY") or None
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.backend not in ("auto", "torch", "megakernel"):
            raise ValueError(f"backend must be auto, torch or megakernel, got {self.backend!r}")
        if self.trigger not in ("auto", "always", "never"):
            raise ValueError(f"trigger must be auto, always or never, got {self.trigger!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        for name in ("max_k", "max_ads", "max_text_tokens", "max_queue", "max_completion_tokens",
                     "max_prompts", "max_prompt_tokens", "max_body_bytes", "max_streams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0 or self.request_timeout_s <= 0 or (self.graceful_timeout_s or 0) < 0:
            raise ValueError("batch_wait_ms must be >= 0 and request_timeout_s > 0")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty")

    def batch_limit(self, device_type: str) -> int:
        if self.max_batch is not None:
            return self.max_batch
        return 1 if device_type == "cpu" else 16

    @property
    def shutdown_grace_s(self) -> float:
        return self.request_timeout_s + 5 if self.graceful_timeout_s is None else self.graceful_timeout_s

    @property
    def is_loopback(self) -> bool:
        if self.host in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
