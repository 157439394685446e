"""Start the server: load the engine and catalog, warm up, and run uvicorn until SIGTERM/SIGINT.

Contract: `run_server(args)` takes the `egt serve` namespace, returns 0 after a graceful shutdown (uvicorn stops
accepting, lets in-flight requests finish within `graceful_timeout_s`, then the batcher stops) and raises
ValueError/OSError for user errors (bad model path, bad catalog, megakernel requested but unavailable), which the
CLI prints as one line. `--backend auto` uses the MegaKernel when CUDA and a MegaKernel plan are available and
falls back to torch otherwise, saying why in the log. The API key is never logged.
"""
from __future__ import annotations

import logging
import sys
import time

from .config import ServeConfig

log = logging.getLogger("egt.serve")


def _setup_logging():
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("egt").setLevel(logging.INFO)


def load_engine(cfg: ServeConfig):
    """The Engine for cfg.backend; returns (engine, backend actually used)."""
    import torch

    from egt.engine import Engine

    if cfg.backend == "torch":
        return Engine.from_pretrained(cfg.model, device=cfg.device, backend="torch"), "torch"
    if cfg.backend == "megakernel":
        return Engine.from_pretrained(cfg.model, device=cfg.device, backend="megakernel"), "megakernel"
    # auto
    if not torch.cuda.is_available() or cfg.device not in ("auto", "cuda") and not str(cfg.device).startswith("cuda"):
        log.info("backend auto: no CUDA device in use, serving with the torch backend")
        return Engine.from_pretrained(cfg.model, device=cfg.device, backend="torch"), "torch"
    try:
        engine = Engine.from_pretrained(cfg.model, device=cfg.device, backend="megakernel")
        log.info("backend auto: using the MegaKernel decode path")
        return engine, "megakernel"
    except Exception as e:  # noqa: BLE001 - any failure of the optional path falls back, with the reason logged
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.warning("backend auto: MegaKernel unavailable (%s: %s); falling back to torch", type(e).__name__, reason)
        return Engine.from_pretrained(cfg.model, device=cfg.device, backend="torch"), "torch"


def build_service(cfg: ServeConfig, warmup: bool = True):
    from egt.verify import Catalog, Targeter

    from .app import Service

    t0 = time.perf_counter()
    engine, backend = load_engine(cfg)
    catalog = Catalog.load(cfg.catalog) if cfg.catalog else Catalog.demo()
    name = getattr(catalog, "name", None) or "catalog"
    targeter = Targeter(engine, catalog)
    svc = Service(engine=engine, targeters={name: targeter}, cfg=cfg, model_name=cfg.model, backend=backend)
    log.info("loaded model %r (%s on %s) and catalog %r (%d entries) in %.1f s", cfg.model, backend,
             engine.device, name, len(catalog), time.perf_counter() - t0)
    if warmup:
        t0 = time.perf_counter()
        targeter.target_batch(["warm-up ad: running shoes on sale"], 1)
        log.info("warm-up done in %.1f s", time.perf_counter() - t0)
    return svc


def run_server(args) -> int:
    import uvicorn

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
                            timeout_graceful_shutdown=cfg.graceful_timeout_s, lifespan="on")
    server = uvicorn.Server(config)
    log.info("serving on http://%s:%d (auth %s)", cfg.host, cfg.port, "on" if cfg.api_key else "off")
    server.run()
    log.info("stopped")
    return 0
