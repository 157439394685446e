"""`egt serve`: the HTTP targeting server (FastAPI on uvicorn) with micro-batching and Prometheus metrics.

Contract: `run_server(args)` is what the CLI calls; `create_app(Service)` builds the ASGI app without starting a
server; `ServeConfig` holds every limit. Imports of FastAPI/uvicorn/torch happen only when these are used.
"""
from __future__ import annotations

__all__ = ["run_server", "create_app", "ServeConfig", "Service"]


def run_server(args) -> int:
    from .server import run_server as _run

    return _run(args)


def __getattr__(name):
    if name in ("create_app", "Service"):
        from . import app

        return getattr(app, name)
    if name == "ServeConfig":
        from .config import ServeConfig

        return ServeConfig
    raise AttributeError(name)
