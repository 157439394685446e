"""Start the server: load the engine and catalog, warm up, and run uvicorn until SIGTERM/SIGINT.

Contract: `run_server(args)` takes the `egt serve` namespace, returns 0 after a graceful shutdown (uvicorn stops
accepting, lets in-flight requests finish within `graceful_timeout_s`, then the batcher stops) and raises
ValueError/OSError for user errors (bad model path, bad catalog, megakernel requested but unavailable), which the
CLI prints as one line. `--backend auto` uses the MegaKernel when CUDA and a MegaKernel plan are available and
falls back to torch otherwise, saying why in the log. The API key is never logged.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time

import uvicorn

from .config import ServeConfig

log = logging.getLogger("egt.serve")


def _setup_logging():
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("egt").setLevel(logging.INFO)


SELF_CHECK_PROMPT = "Real-time ad targeting self-check: the quick brown fox"


def _megakernel_like(engine):
    """A megakernel Engine over the same weights, accepted only if its greedy tokens equal the torch path's."""
    from egt.engine import Engine

    mk = Engine(engine.model, engine.tokenizer, engine.device, max_len=engine.max_len, backend="megakernel")
    for attr in ("source", "load_seconds"):
        if hasattr(engine, attr):
            setattr(mk, attr, getattr(engine, attr))
    prompt = engine.encode(SELF_CHECK_PROMPT, chat=False)
    want = engine.generate([prompt], max_new_tokens=4).tokens
    got = mk.generate([prompt], max_new_tokens=4).tokens
    if got != want:
        raise RuntimeError(f"MegaKernel greedy tokens {got} differ from the torch path's {want}")
    return mk


def load_engine(cfg: ServeConfig):
    """The Engine for cfg.backend; returns (engine, backend actually used). The MegaKernel path is accepted only
    after a short greedy self-check against the torch path on the same weights."""
    import torch

    from egt.engine import Engine

    engine = Engine.from_pretrained(cfg.model, device=cfg.device, backend="torch")
    if cfg.backend == "torch":
        return engine, "torch"
    if cfg.backend == "megakernel":
        try:
            return _megakernel_like(engine), "megakernel"
        except Exception as e:  # noqa: BLE001 - explicit request: a user-facing error, not a silent fallback
            raise ValueError(f"backend 'megakernel' unavailable: {type(e).__name__}: {_first_line(e)}") from e
    if engine.device.type != "cuda" or not torch.cuda.is_available():
        log.info("backend auto: no CUDA device in use, serving with the torch backend")
        return engine, "torch"
    try:
        mk = _megakernel_like(engine)
        log.info("backend auto: using the MegaKernel decode path (self-check passed)")
        return mk, "megakernel"
    except Exception as e:  # noqa: BLE001 - the optional path falls back, with the reason logged
        log.warning("backend auto: MegaKernel unavailable (%s: %s); falling back to torch", type(e).__name__,
                    _first_line(e))
        return engine, "torch"


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def build_service(cfg: ServeConfig, warmup: bool = True):
    from egt.verify import Catalog, Targeter

    from .app import Service

    t0 = time.perf_counter()
    catalog = Catalog.load(cfg.catalog) if cfg.catalog else Catalog.demo()  # before the model: fail fast
    engine, backend = load_engine(cfg)
    name = getattr(catalog, "name", None) or "catalog"
    targeter = Targeter(engine, catalog, trigger=cfg.trigger)
    svc = Service(engine=engine, targeters={name: targeter}, cfg=cfg, model_name=cfg.model, backend=backend)
    log.info("loaded model %r (%s on %s) and catalog %r (%d entries) in %.1f s", cfg.model, backend,
             engine.device, name, len(catalog), time.perf_counter() - t0)
    if warmup:
        t0 = time.perf_counter()
        # On a GPU, capture the search graphs of requests with k <= 10 now (60-70 ms each on first use otherwise);
        # the prompt adds the template's tokens to the ad's.
        graphs = targeter.warmup(max_prompt=cfg.max_text_tokens + 64, k=min(10, cfg.max_k))
        targeter.target_batch(["warm-up ad: running shoes on sale"], 1)
        log.info("warm-up done in %.1f s (%d search graphs captured)", time.perf_counter() - t0, graphs)
    return svc


class _Server(uvicorn.Server):
    """uvicorn.Server that, after a graceful shutdown on SIGTERM/SIGINT, returns instead of re-raising the signal,
    so `egt serve` exits 0 (uvicorn re-raises for embedders that chain handlers; a CLI has none to chain)."""

    stopped_by_signal: int | None = None

    def handle_exit(self, sig, frame):
        self.stopped_by_signal = sig
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        before = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


def run_server(args) -> int:
    from .app import create_app

    _setup_logging()
    cfg = ServeConfig.from_args(args)
    if not cfg.is_loopback:
        log.warning("binding to %s, which is reachable from other machines%s", cfg.host,
                    "" if cfg.api_key else "; no API key is set (use --api-key or EGT_API_KEY)")
    svc = build_service(cfg, warmup=not getattr(args, "no_warmup", False))
    app = create_app(svc)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info",
                            access_log=bool(getattr(args, "access_log", False)),
                            timeout_graceful_shutdown=cfg.shutdown_grace_s, lifespan="on")
    server = _Server(config)
    log.info("serving on http://%s:%d (auth %s)", cfg.host, cfg.port, "on" if cfg.api_key else "off")
    server.run()
    if server.stopped_by_signal is not None:
        log.info("stopped by %s after finishing in-flight requests", signal.Signals(server.stopped_by_signal).name)
    return 0
