"""`python -m egt.serve`: `egt serve` plus the tuning flags (batching, limits, timeouts) for experiments and tests.

Every flag maps to a `ServeConfig` field of the same name; the CLI's `egt serve` uses the defaults.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from .config import ServeConfig

BASIC = ("model", "catalog", "host", "port", "backend", "device", "api_key")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m egt.serve", description="Run the egt HTTP targeting server.")
    ap.add_argument("model", nargs="?", default="default")
    ap.add_argument("--catalog", default=None)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--backend", default="auto", choices=("auto", "torch", "megakernel"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set EGT_API_KEY)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up targeting call at start")
    ap.add_argument("--access-log", action="store_true", help="log every request line")
    for f in fields(ServeConfig):
        if f.name in BASIC:
            continue
        kind = type(f.default) if f.default is not None else (int if f.name == "max_batch" else float)
        ap.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                        help=f"default {f.default}")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .server import run_server

    try:
        return run_server(args)
    except (ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"egt: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
