"""The `egt` command line: compress | target | serve | eval | bench | megakernel | info.

Contract: a user error (bad path, bad argument, unreadable or corrupt file) prints one line `egt: error: ...` to
stderr and exits with 2, never a traceback. Long work shows a progress bar. Each subcommand's `--help` says what
it does and what it writes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# OSError covers missing, unreadable and unwritable paths; ValueError covers our own load/plan/format errors.
USER_ERRORS = (ValueError, OSError)


class UsageError(Exception):
    """Raised for user mistakes found after argument parsing."""


def _compress_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bits", type=int, choices=(3, 4, 8), help="weight bits (default: keep float)")
    p.add_argument("--budget", type=float, help="average bits per weight incl. scales; the allocator picks "
                                                "per-layer group sizes (and bits) to meet it")
    p.add_argument("--group-size", type=int, choices=(32, 64, 128, 256, -1),
                   help="fixed group size for every layer (-1 = per channel); default: chosen by sensitivity")
    p.add_argument("--sparsity", default="none", choices=("none", "2:4", "1:4", "mix"),
                   help="N:M pattern; mix assigns 2:4 / 1:4 per layer by importance")
    p.add_argument("--density", type=float, help="target average density for --sparsity mix (e.g. 0.375)")
    p.add_argument("--calibration", help="calibration data file (default: the packaged demo ads)")
    p.add_argument("--calibration-samples", type=int, default=32)
    p.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="dtype of float tensors")
    p.add_argument("--quant-refine", help="gptq (default) | clip | rtn | awq | awq+gptq")
    p.add_argument("--quant-metric", help="allocator sensitivity metric: fisher (default) | output | output_rel | "
                                          "hessian | weight")
    p.add_argument("--sparse-method", help="mask choice: sparsegpt (default) | wanda | wanda+obs")
    p.add_argument("--sparse-metric", help="layer importance: alone_kl (default) | block_influence | outlier_ratio")
    p.add_argument("--sparse-granularity", help="layer (default) | module")
    p.add_argument("--calibration-mode", choices=("oneshot", "sequential", "sequential-module"),
                   help="statistics from the dense model (oneshot) or from the model as already compressed, per layer "
                        "or per module group (default: sequential-module)")
    p.add_argument("--recover-steps", type=int, default=0,
                   help="after pruning, distill the kept values towards the dense model for N steps (0 = off); "
                        "wants many texts: see --recover-data")
    p.add_argument("--recover-samples", type=int, default=1024, help="texts used by --recover-steps")
    p.add_argument("--recover-data", help="data file for --recover-steps, read as --calibration is (default: the "
                                          "calibration data)")
    p.add_argument("--recover-device", choices=("cpu", "cuda"), default="cpu",
                   help="where the --recover-steps training runs (default cpu; the rest of compression runs on the CPU)")



class OneLineErrors(argparse.ArgumentParser):
    """Bad arguments: one line on stderr and exit code 2 (argparse would print the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

def build_parser() -> argparse.ArgumentParser:
    ap = OneLineErrors(prog="egt", description="Compress an advertising LLM and serve it for real-time targeting.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("compress", help="compress a model into an egt directory",
                       description="Load MODEL ('default' = embedded SmolLM2-135M-Instruct, an HF checkpoint "
                                   "directory, or a hub id), compress it, and write an egt directory atomically.")
    p.add_argument("model", nargs="?", default="default")
    p.add_argument("--out", required=True, help="output directory (replaced atomically if it exists)")
    _compress_args(p)

    p = sub.add_parser("target", help="answer targeting queries with a model and a catalog",
                       description="Rank catalog entities for each ad text with trie-constrained beam search and "
                                   "prefix-tree parallel verification; prints results and per-token timings.")
    p.add_argument("model", help="egt directory, HF checkpoint directory or 'default'")
    p.add_argument("ads", nargs="+", help="ad texts")
    p.add_argument("--catalog", default=None, help="catalog file (CSV/TSV/JSONL); default: packaged demo catalog")
    p.add_argument("-k", type=int, default=5, help="number of entities to return")
    p.add_argument("--search", default="beam", choices=("beam", "exact"),
                   help="beam: trie-constrained beam search with parallel verification; exact: best-first exact top k")
    p.add_argument("--trigger", default="auto", choices=("auto", "always", "never"),
                   help="when to verify all remaining trie paths in one pass (auto: measured cost model)")
    p.add_argument("--length-penalty", type=float, default=0.0, help="rank by sum logp / len**PENALTY")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("serve", help="run the HTTP targeting server",
                       description="Serve /v1/targeting, /v1/completions, /health and /metrics with FastAPI/uvicorn.")
    p.add_argument("model", nargs="?", default="default")
    p.add_argument("--catalog", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "megakernel"))
    p.add_argument("--device", default="auto")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set EGT_API_KEY, "
                                                   "which, unlike a flag, does not show in `ps`)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="ads merged into one model pass (default: 16 on GPU, 1 on CPU, where merging measured slower)")
    p.add_argument("--batch-wait-ms", type=float, default=None, help="micro-batching wait window (default 5)")
    p.add_argument("--max-queue", type=int, default=None, help="queued ads before 503 + Retry-After (default 256)")
    p.add_argument("--request-timeout-s", type=float, default=None, help="per-request timeout, 504 after it (default 60)")
    p.add_argument("--trigger", default=None, choices=("auto", "always", "never"), help="verification trigger")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up request at start")
    p.add_argument("--access-log", action="store_true", help="log every request")

    p = sub.add_parser("eval", help="offline evaluation on advertising data sets",
                       description="Run one cell (--task, --config) or 'egt eval report' for the whole table.")
    p.add_argument("what", nargs="?", default="cell", choices=("cell", "report"))
    p.add_argument("--task", choices=("targeting", "csl-kg", "csl-ts", "slogans"))
    p.add_argument("--config", default="fp16")
    p.add_argument("--data", default=None, help="data file (default: ../shared/data/...)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="eval/results")
    p.add_argument("--rerun", action="store_true", help="recompute cells that already have results")
    p.add_argument("--aggregate-only", action="store_true", help="report: rebuild table and plots from existing cells")

    p = sub.add_parser("bench", help="decode-latency benchmark",
                       description="Time batch-1 decode of a model (or a random-weight shape) per backend.")
    p.add_argument("model", nargs="?", default="default")
    p.add_argument("--backend", default="torch", choices=("torch", "megakernel"))
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)

    # Listed for the top-level help only: main() hands `egt megakernel ...` to egt.megakernel.cli.
    sub.add_parser("megakernel", help="MegaKernel planner: plan | dag (CPU; see egt megakernel --help)")

    p = sub.add_parser("info", help="print an egt directory's manifest and plan",
                       description="Verify an egt directory's checksums and print its manifest and per-layer plan.")
    p.add_argument("directory")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check")
    return ap


def cmd_compress(a) -> int:
    from .compress import CompressConfig, compress

    cfg = CompressConfig(bits=a.bits, budget=a.budget, group_size=a.group_size, sparsity=a.sparsity,
                         density=a.density, calibration=a.calibration, calibration_samples=a.calibration_samples,
                         dtype=a.dtype, quant_refine=a.quant_refine, quant_metric=a.quant_metric,
                         sparse_method=a.sparse_method, sparse_metric=a.sparse_metric,
                         sparse_granularity=a.sparse_granularity, calibration_mode=a.calibration_mode,
                         recover_steps=a.recover_steps, recover_samples=a.recover_samples,
                         recover_data=a.recover_data, recover_device=a.recover_device)
    cfg.validate()
    path, plan, secs = compress(a.model, a.out, cfg)
    from .format import read_manifest
    from .plan import linear_modules

    m = read_manifest(path)
    size = sum(f["bytes"] for n, f in m["files"].items() if n.endswith(".safetensors"))
    print(f"wrote {path} ({plan.method}, {size / 1e6:.1f} MB of tensors) in {secs:.1f} s")
    return 0


def cmd_target(a) -> int:
    from .engine import Engine
    from .verify import Catalog, Targeter

    catalog = Catalog.load(a.catalog) if a.catalog else Catalog.demo()
    engine = Engine.from_pretrained(a.model, device=a.device)
    targeter = Targeter(engine, catalog, trigger=a.trigger, length_penalty=a.length_penalty, search=a.search)
    for ad in a.ads:
        res = targeter.target(ad, k=a.k)
        if a.json:
            print(json.dumps(res.to_dict()))
            continue
        print(f"\nad: {ad}")
        for rank, hit in enumerate(res.entities, 1):
            print(f"  {rank:2d}. {hit.text:<40s} id={hit.id:<12s} score={hit.score:.3f}")
        t = res.timings
        steps = f"{t.steps} decode steps at {t.ms_per_token:.2f} ms/token" if t.steps else "no decode steps"
        print(f"  timings: prefill {t.prefill_ms:.1f} ms, {steps}, verification {t.verify_ms:.1f} ms, "
              f"total {t.total_ms:.1f} ms ({engine.device.type})")
    return 0


def cmd_serve(a) -> int:
    from .serve import run_server

    return run_server(a)


def cmd_eval(a) -> int:
    from eval.run import main as eval_main  # the evaluation harness lives beside the package

    return eval_main(a)


def cmd_bench(a) -> int:
    import torch

    from .engine import Engine

    engine = Engine.from_pretrained(a.model, device=a.device, dtype=a.dtype, backend=a.backend)
    prompt = [int(x) for x in torch.randint(100, 1000, (a.prompt_tokens,), generator=torch.Generator().manual_seed(0))]
    engine.generate([prompt], max_new_tokens=4)  # warm-up
    g = engine.generate([prompt], max_new_tokens=a.new_tokens)
    print(json.dumps({"model": a.model, "backend": a.backend, "device": str(engine.device), "dtype": str(engine.dtype),
                      "prompt_tokens": a.prompt_tokens, "new_tokens": len(g.tokens[0]),
                      "prefill_ms": round(g.timings.prefill_ms, 3), "ms_per_token": round(g.timings.ms_per_token, 3),
                      "date": time.strftime("%Y-%m-%d")}))
    return 0


def cmd_info(a) -> int:
    from rich.console import Console
    from rich.table import Table

    from .format import read_manifest, verify_directory
    from .plan import CompressionPlan

    d = Path(a.directory)
    if not d.is_dir():
        raise UsageError(f"{d}: no such directory")
    m = read_manifest(d) if a.no_verify else verify_directory(d)
    plan = CompressionPlan.from_dict(m.get("plan", {}))
    con = Console()
    head = Table(title=f"egt directory {d}", show_header=False)
    for key in ("egt_format", "egt_version", "created", "method", "dtype", "source"):
        head.add_row(key, str(m.get(key, "")))
    shape = m.get("shape", {})
    head.add_row("shape", ", ".join(f"{k}={v}" for k, v in shape.items()))
    head.add_row("files", f"{len(m['files'])} ({sum(f['bytes'] for f in m['files'].values()) / 1e6:.1f} MB), "
                          f"{'sha256 verified' if not a.no_verify else 'not verified'}")
    con.print(head)
    if plan.layers:
        t = Table(title="per-module plan")
        for col in ("module", "bits", "group", "sym", "sparsity", "stored"):
            t.add_column(col)
        for name, lp in plan.layers.items():
            t.add_row(name, str(lp.bits), "ch" if lp.group_size == -1 else str(lp.group_size),
                      "yes" if lp.symmetric else "no", lp.sparsity, lp.describe())
        con.print(t)
    else:
        con.print(f"plan: method {plan.method!r}, every module in float")
    return 0


COMMANDS = {"compress": cmd_compress, "target": cmd_target, "serve": cmd_serve, "eval": cmd_eval,
            "bench": cmd_bench, "info": cmd_info}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["megakernel"]:  # its own parser owns every option after the word, --help included
        from .megakernel.cli import main as megakernel_main

        return megakernel_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 with one usage line on bad arguments
    try:
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print("egt: interrupted", file=sys.stderr)
        return 130
    except UsageError as e:
        print(f"egt: error: {e}", file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"egt: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
