"""`egt eval`: run one cell (task x configuration) or the whole table, single-process or under `accelerate launch`.

Contract:
- `main(args)` takes the CLI's namespace: `.what` ("cell" | "report"), `.task`, `.config`, `.data`, `.limit`,
  `.device`, `.out` (and optionally `.source`, `.rerun`, `.aggregate_only`, `.progress`). It returns an exit code.
  - cell: evaluates one task x configuration and writes `OUT/cells/<task>__<config>.json`;
  - report: runs every missing (or stale) cell of the table, then writes `OUT/table1.json`, `OUT/report.md` and
    `OUT/pareto_<task>.png` (see `eval.report`).
- The model of a task: in prompting mode "lora" (`eval.tasks.prompting`) the LoRA adapter of `data/eval_lora/` is
  merged into the embedded default first (`eval.finetune.merged_source`), and FP16 and every compressed
  configuration of the task start from those merged weights; in mode "few-shot" from the model itself. The cell
  records `prompting` and the adapter's sha256; a report reruns cells whose mode or adapter changed.
- User errors (unknown task/config, missing files) raise ValueError / OSError, which the CLI prints as one line.
- A configuration whose compression stage is not in this checkout is written as status "not available" with the
  reason; a cell that crashes is written as status "error" with the message. Neither has numbers.
- Data parallelism: under `accelerate launch` (any number of processes, CPU or GPUs) the examples are split
  between processes, every process runs its share on its own device, the records are gathered in the original
  order, and the main process scores and writes them: the metrics equal the single-process ones (tested).
  Latencies are those each process measured; with several processes on one CPU they contend for cores.
- `python -m eval.run [cell|report] ...` is the same entry point with the extra flags, for `accelerate launch -m`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

from . import metrics as M
from .configs import NotAvailable, all_names, availability, prepare, slug, split_name
from .tasks import TASKS, prompting

DEFAULT_REPORT_LIMITS = {"targeting": 12, "csl-kg": 6, "csl-ts": 6, "slogans": 12}  # sized for a shared 2-core CPU


def cell_path(out: str | Path, task: str, config: str) -> Path:
    return Path(out) / "cells" / f"{task}__{slug(config)}.json"


def device_label(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {name}, {torch.get_num_threads()} threads"


def _state(device: str):
    from accelerate import PartialState

    import torch

    return PartialState(cpu=str(device) == "cpu" or not torch.cuda.is_available())


def _plan_summary(engine) -> dict:
    src = getattr(engine, "source", "")
    try:
        from egt.format import read_manifest
        from egt.plan import CompressionPlan

        m = read_manifest(src)
    except Exception:  # not an egt directory: the float model
        return {"method": "none"}
    plan = CompressionPlan.from_dict(m.get("plan", {}))
    return {"method": plan.method, "layers": dict(Counter(lp.describe() for lp in plan.layers.values()))}


def model_for(task: str, source: str) -> tuple[str, str]:
    """(prompting mode, model source) of a task: in mode "lora" the adapter merged into the embedded default (the
    adapter was trained on it), which every configuration of the task, FP16 included, then starts from."""
    mode = prompting(task)
    if mode != "lora":
        return mode, source
    if source not in ("default", "", None):
        raise ValueError(f"task {task} uses the LoRA adapter of the embedded default; for --source {source} set "
                         f"EGT_EVAL_PROMPTING=few-shot")
    from .finetune import merged_source

    return mode, merged_source("default")


def run_cell(task: str, config: str, data: str | None = None, limit: int | None = None, device: str = "auto",
             source: str = "default", progress: bool = True, state=None) -> dict:
    """Evaluate one cell; returns the cell dict (identical on every process)."""
    import torch

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if config.endswith("+ptpv") and task != "targeting":
        raise ValueError("+ptpv (parallel verification) applies to the targeting task only")
    split_name(config)  # validates the name
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be positive, got {limit}")
    t = TASKS[task]
    state = state or _state(device)
    cell = {"task": task, "config": config, "data": data, "limit": limit, "model": source,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "processes": state.num_processes,
            "command": f"egt eval --task {task} --config {config}" + (f" --limit {limit}" if limit else "")
                       + (f" --data {data}" if data else "") + (f" --device {device}" if device != "auto" else "")}
    ok, why = availability(config)
    if not ok:
        return {**cell, "status": "not available", "reason": why}
    examples = t.examples(data, limit)
    if not examples:
        raise ValueError(f"task {task}: no examples (check --data)")
    cell["n"] = len(examples)
    mode, model_source = model_for(task, source)
    cell["prompting"] = mode
    if mode == "lora":
        from .finetune import adapter_sha

        cell["adapter"] = {"dir": "data/eval_lora", "sha256": adapter_sha(), "merged_into": model_source}
    dev = state.device if state.num_processes > 1 else device
    if os.environ.get("EGT_EVAL_THREADS"):
        torch.set_num_threads(int(os.environ["EGT_EVAL_THREADS"]))
    elif state.num_processes > 1 and state.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // state.num_processes))
    try:
        with state.main_process_first():  # the main process compresses (once); the others then load from disk
            engine = prepare(config, source=model_source, device=dev)
    except NotAvailable as e:
        return {**cell, "status": "not available", "reason": str(e)}
    cell.update(device=str(engine.device), card=device_label(engine.device), dtype=str(engine.dtype).replace("torch.", ""),
                plan=_plan_summary(engine), settings=t.settings(mode))
    if split_name(config)[0] != "fp16":
        from .configs import compress_settings, is_stale

        cell["compress_settings"] = compress_settings(config, model_source)
        cell["model_dir"] = str(getattr(engine, "source", ""))
        cell["stale_code"] = is_stale(cell["model_dir"], config, model_source)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    run = t.runner(engine, config, data, mode)
    engine.generate([[1, 2, 3, 4, 5, 6, 7, 8]], max_new_tokens=2, chat=False)  # warm-up, not timed
    from accelerate.utils import gather_object

    mine = []
    with state.split_between_processes(list(range(len(examples)))) as idx:
        it = idx
        if progress and state.is_main_process:
            from tqdm import tqdm

            it = tqdm(idx, desc=f"{task} {config}", leave=False)
        for i in it:
            mine.append((i, run(examples[i])))
    allrec = sorted(gather_object(mine), key=lambda p: p[0])
    records = [r for _, r in allrec]
    if len(records) != len(examples):
        raise RuntimeError(f"gathered {len(records)} records for {len(examples)} examples")
    if load_before is not None:  # a shared machine inflates latencies: say how loaded it was
        cell["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    cell["metrics"] = t.score(records, examples)
    cell["latency"] = M.latency_summary(records)
    cell["status"] = "ok"
    cell["records"] = [{**{k: v for k, v in r.items() if k != "decode_ms"},
                        "ms_per_token": M.median(r.get("decode_ms", [])),
                        "reference": e.reference} for r, e in zip(records, examples)]
    return cell


def write_cell(cell: dict, out: str | Path) -> Path:
    p = cell_path(out, cell["task"], cell["config"])
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(cell, indent=1, ensure_ascii=False, default=float))
    tmp.replace(p)
    return p


def _fresh(p: Path, limit, data) -> bool:
    """An existing cell that a report may reuse: same slice, and not a 'not available' that has become available."""
    if not p.is_file():
        return False
    try:
        c = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if c.get("limit") != limit or c.get("data") != data:
        return False
    if c.get("prompting", "few-shot") != prompting(c["task"]):
        return False
    if c.get("prompting") == "lora":
        from .finetune import adapter_sha

        if (c.get("adapter") or {}).get("sha256") != adapter_sha():
            return False
    if c.get("status") == "not available":
        return not availability(c["config"])[0]
    return c.get("status") == "ok"


def _summary_line(cell: dict) -> str:
    if cell.get("status") != "ok":
        return f"{cell['task']:10s} {cell['config']:16s} {cell.get('status')}: {cell.get('reason', '')}"
    main = TASKS[cell["task"]].main_metric
    lat = cell["latency"]
    return (f"{cell['task']:10s} {cell['config']:16s} n={cell['n']:<4d} {main}={cell['metrics'][main]:.4f} "
            f"ms/token={lat['ms_per_token']:.2f} total_ms={lat['total_ms']:.1f} ({cell['card']})")


def main(args) -> int:
    what = getattr(args, "what", "cell") or "cell"
    out = Path(getattr(args, "out", None) or "eval/results")
    source = getattr(args, "source", None) or "default"
    progress = getattr(args, "progress", True)
    device = getattr(args, "device", "auto") or "auto"
    state = _state(device)
    if what == "cell":
        if not args.task:
            raise ValueError("egt eval needs --task (one of " + ", ".join(TASKS) + ") or 'report'")
        cell = run_cell(args.task, args.config or "fp16", args.data, args.limit, device, source, progress, state)
        if state.is_main_process:
            p = write_cell(cell, out)
            print(_summary_line(cell))
            print(f"wrote {p}")
        return 0
    if what != "report":
        raise ValueError(f"unknown eval action {what!r} (cell or report)")
    tasks = [args.task] if getattr(args, "task", None) else list(TASKS)
    if not getattr(args, "aggregate_only", False):
        for task in tasks:
            limit = args.limit or DEFAULT_REPORT_LIMITS[task]
            data = args.data if getattr(args, "task", None) else None
            for config in all_names(task):
                p = cell_path(out, task, config)
                if not getattr(args, "rerun", False) and _fresh(p, limit, data):
                    continue
                try:
                    cell = run_cell(task, config, data, limit, device, source, progress, state)
                except (ValueError, OSError):
                    raise
                except Exception as e:  # a crashing configuration is reported, and the table goes on
                    cell = {"task": task, "config": config, "limit": limit, "data": data, "status": "error",
                            "reason": f"{type(e).__name__}: {e}",
                            "trace": traceback.format_exc(limit=4)}
                if state.is_main_process:
                    write_cell(cell, out)
                    print(_summary_line(cell), flush=True)
    if state.is_main_process:
        from .report import write_report

        paths = write_report(out)
        for p in paths:
            print(f"wrote {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m eval.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="?", default="cell", choices=("cell", "report"))
    ap.add_argument("--task", choices=tuple(TASKS))
    ap.add_argument("--config", default="fp16")
    ap.add_argument("--data", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="eval/results")
    ap.add_argument("--source", default="default", help="model to evaluate and compress (default: embedded)")
    ap.add_argument("--rerun", action="store_true", help="report: rerun cells even when a matching one exists")
    ap.add_argument("--aggregate-only", action="store_true", help="report: only rebuild table/report/plots")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    return ap


def cli(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return main(args)
    except (ValueError, OSError) as e:
        print(f"eval: error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
