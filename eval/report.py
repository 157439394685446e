"""Turn the evaluated cells into the paper-style Table 1: `table1.json`, `report.md` and Pareto plots.

Contract:
- `write_report(out)` reads every `out/cells/*.json` and writes `out/table1.json` (all cells, grouped by task,
  without per-example records), `out/report.md` (per-task tables of quality, latency and speed-up against FP16,
  then the issue's goals checked against the numbers) and `out/pareto_<task>.png` (main metric against ms/token,
  Pareto front drawn). Returns the written paths.
- Speed-ups and relative changes are computed only between cells measured on the same card; otherwise they are
  left blank. Nothing is filled in for cells that are not available or failed.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .configs import all_names, split_name
from .tasks import TASKS

GOAL_REL_LOSS = 0.02  # Mix+INT4 may lose at most 2% relative on each task's main metric


def load_cells(out: str | Path) -> dict[str, dict[str, dict]]:
    cells: dict[str, dict[str, dict]] = {}
    for p in sorted((Path(out) / "cells").glob("*.json")):
        c = json.loads(p.read_text())
        cells.setdefault(c["task"], {})[c["config"]] = c
    return cells


def _fmt(x, nd=4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _same_card(a: dict, b: dict) -> bool:
    return a.get("card") == b.get("card") and a.get("processes") == b.get("processes")


def _ratio(c: dict, base: dict | None, key: str) -> float | None:
    if not base or base.get("status") != "ok" or c.get("status") != "ok" or not _same_card(c, base):
        return None
    num, den = base["latency"].get(key), c["latency"].get(key)
    if not num or not den or math.isnan(num) or math.isnan(den):
        return None
    return num / den


def _rescore(task: str, records: list[dict]) -> dict:
    from .tasks import Example

    return TASKS[task].score(records, [Example(str(r.get("id")), "", r.get("reference")) for r in records])


def paired_metrics(task: str, c: dict, base: dict) -> tuple[float | None, float | None, int]:
    """(config value, FP16 value, n) of the main metric on the examples both cells ran. Equal slices use the
    stored metrics; a shorter slice (a prefix of the same fixed order) is compared on its common examples."""
    metric = TASKS[task].main_metric
    if c.get("n") == base.get("n"):
        return c["metrics"].get(metric), base["metrics"].get(metric), c.get("n", 0)
    if "records" not in c or "records" not in base:
        return None, None, 0
    ids = {r.get("id") for r in c["records"]} & {r.get("id") for r in base["records"]}
    if not ids or any("reference" not in r for r in c["records"] + base["records"]):
        return None, None, 0
    a = [r for r in c["records"] if r.get("id") in ids]
    b = [r for r in base["records"] if r.get("id") in ids]
    return _rescore(task, a).get(metric), _rescore(task, b).get(metric), len(ids)


def _rel(c: dict, base: dict | None, metric: str, task: str | None = None) -> float | None:
    if not base or base.get("status") != "ok" or c.get("status") != "ok":
        return None
    if task is not None:
        v, b, _ = paired_metrics(task, c, base)
    else:
        b, v = base["metrics"].get(metric), c["metrics"].get(metric)
    if b is None or v is None or b == 0:
        return None
    return (v - b) / b


def _baseline(task: str, config: str, cells: dict) -> dict | None:
    """FP16 is the reference of every row (for targeting too: +ptpv rows are compared with plain FP16)."""
    return cells.get("fp16")


def _agreement(c: dict, base: dict | None) -> str:
    """How many examples got exactly the FP16 output (a paired, low-noise view of the damage compression does)."""
    if not base or base.get("status") != "ok" or "records" not in c or "records" not in base:
        return ""
    ref = {r.get("id"): r.get("output") for r in base["records"]}
    common = [r for r in c["records"] if r.get("id") in ref]
    if not common:
        return ""
    return f"{sum(r.get('output') == ref[r.get('id')] for r in common)}/{len(common)}"


def task_table(task: str, cells: dict[str, dict]) -> list[str]:
    t = TASKS[task]
    main = t.main_metric
    if task == "targeting":
        cols = ["recall@1", "recall@5", "recall@10", "precision@10"]
        lat_cols = [("ms/step", "ms_per_token"), ("total ms/ad", "total_ms")]
    else:
        cols = ["meteor", "bleu", "avg_len"]
        lat_cols = [("ms/token", "ms_per_token"), ("prefill ms", "prefill_ms")]
    head = ["config", "n"] + cols + [a for a, _ in lat_cols] + ["speed-up", f"Δ {main} vs FP16 (paired)",
                                                                 "same output as FP16",
                                                                 "card", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config in all_names(task):
        c = cells.get(config)
        if c is None:
            lines.append("| " + " | ".join([config] + [""] * (len(head) - 2) + ["not run"]) + " |")
            continue
        if c.get("status") != "ok":
            lines.append("| " + " | ".join([config] + [""] * (len(head) - 2) +
                                          [f"{c.get('status')}: {c.get('reason', '')}".replace("|", "/")]) + " |")
            continue
        base = _baseline(task, config, cells)
        sp_key = "total_ms" if task == "targeting" else "ms_per_token"
        sp = _ratio(c, base, sp_key)
        rel = _rel(c, base, main, task)
        row = [config, str(c["n"])] + [_fmt(c["metrics"].get(k), 2 if k == "avg_len" else 4) for k in cols]
        row += [_fmt(c["latency"].get(k), 2) for _, k in lat_cols]
        row += [f"{sp:.2f}x" if sp else "", f"{100 * rel:+.1f}%" if rel is not None else "", _agreement(c, base),
                c.get("card", ""), "ok (model from older compression code)" if c.get("stale_code") else "ok"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def goals(cells: dict[str, dict[str, dict]]) -> list[str]:
    lines = []
    for task in TASKS:
        tc = cells.get(task, {})
        main = TASKS[task].main_metric
        for config, label in (("mix+int4", "Mix+INT4"), ("mix+int4+rec", "Mix+INT4 recovered on ad texts"),
                              ("mix+int4+rec-tasks", "Mix+INT4 recovered on task pairs"),
                              ("mix+int4+rec-tasks-long", "Mix+INT4 recovered on task pairs, 1500 steps on a GPU")):
            c, base = tc.get(config), tc.get("fp16")
            rel = _rel(c, base, main, task) if c and base else None
            if rel is None:
                why = (c or {}).get("reason") or "not run"
                lines.append(f"- {task}: {label} vs FP16 on {main}: **not measured** ({why}).")
            else:
                ok = rel >= -GOAL_REL_LOSS
                v, b, n = paired_metrics(task, c, base)
                lines.append(f"- {task}: {label} {main} = {v:.4f} vs FP16 {b:.4f} on the same {n} examples "
                             f"({100 * rel:+.1f}% relative): **{'met' if ok else 'MISSED'}** "
                             f"(goal: at most -{100 * GOAL_REL_LOSS:.0f}%).")
    tc = cells.get("targeting", {})
    for config in all_names("targeting"):
        if config.endswith("+ptpv"):
            continue
        a, b = tc.get(config), tc.get(config + "+ptpv")
        if not (a and b and a.get("status") == "ok" and b.get("status") == "ok"):
            continue
        ra, rb = a["metrics"]["recall@10"], b["metrics"]["recall@10"]
        pairs = list(zip(a["records"], b["records"]))
        same_lists = sum(x["output"] == y["output"] for x, y in pairs)
        # where the lists differ, which search found the better-scored top 10 (sum of entity log-probabilities)?
        diff = [(sum(x["scores"]), sum(y["scores"])) for x, y in pairs
                if x["output"] != y["output"] and "scores" in x and "scores" in y]
        better = sum(sy > sx + 1e-6 for sx, sy in diff)
        worse = sum(sy < sx - 1e-6 for sx, sy in diff)
        score_note = (f"; where they differ, verification's top 10 scores higher on {better}, lower on {worse} "
                      f"of {len(diff)} ads" if diff else "")
        lines.append(f"- targeting {config}: recall@10 without verification {ra:.4f}, with {rb:.4f}: "
                     f"**{'equal' if abs(ra - rb) < 1e-12 else 'DIFFERENT'}**; identical top-10 lists on "
                     f"{same_lists}/{a['n']} ads{score_note}; verification fired on "
                     f"{b['metrics'].get('triggered', 0)} ads.")
    return lines


def pareto_plot(task: str, cells: dict[str, dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = TASKS[task].main_metric
    key = "total_ms" if task == "targeting" else "ms_per_token"
    pts = [(c["latency"][key], c["metrics"][main], name, c.get("card", ""))
           for name, c in cells.items() if c.get("status") == "ok"
           and c["latency"].get(key) is not None and not math.isnan(c["latency"][key])]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for x, y, name, _ in pts:
        ax.scatter([x], [y], color="tab:red" if name.startswith("fp16") else "tab:blue",
                   marker="^" if name.endswith("+ptpv") else "o")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    # Pareto front: lower latency and higher quality dominate
    front, best = [], -math.inf
    for x, y, _, _ in sorted(pts):
        if y > best:
            front.append((x, y))
            best = y
    ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="gray", lw=1, label="Pareto front")
    floor = (cells.get("fp16") or {}).get("metrics", {}).get(f"popularity_{main}")
    if floor is not None:  # targeting: the recall of always answering the most frequent interests
        ax.axhline(floor, color="tab:orange", ls=":", lw=1, label="popularity floor")
    cards = sorted({p[3] for p in pts})
    ax.set_xlabel(("total ms per ad" if task == "targeting" else "ms per generated token") + " (lower is better)")
    ax.set_ylabel(f"{main} (higher is better)")
    loads = [x for n, c in cells.items() if c.get("status") == "ok" for x in (c.get("load_avg_1min") or [])]
    load = f" (1-min load {min(loads):.1f}-{max(loads):.1f})" if loads else ""
    ax.set_title(f"{task}: quality vs latency\n{'; '.join(cards)}{load}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _selection() -> dict:
    """The validation-slice comparison that chose each task's prompting mode (data/eval_lora/recipe.json)."""
    from .finetune import ADAPTER_DIR

    try:
        return json.loads((ADAPTER_DIR / "recipe.json").read_text()).get("selection", {})
    except (OSError, json.JSONDecodeError):
        return {}


def method_notes(cells: dict[str, dict[str, dict]]) -> list[str]:
    ok = [c for tc in cells.values() for c in tc.values() if c.get("status") == "ok"]
    lines = ["- Model: the embedded SmolLM2-135M-Instruct. Per task, FP16 gets its best fair chance by one of two "
             "prompting modes, chosen on a validation slice disjoint from the test slice and the demonstrations: "
             "`few-shot` (the base model with demonstrations from a disjoint split) or `lora` (a LoRA adapter "
             "fine-tuned on the tasks' training splits, `data/eval_lora/`, recipe `python -m eval.finetune train`, "
             "merged into the float weights, prompted zero-shot). Every compressed configuration of a task is made "
             "by `egt compress` from that task's FP16 model (merged weights in mode `lora`), calibrated on the "
             "packaged demo ads, and loaded back from disk."]
    sel = _selection()
    for task in TASKS:
        modes = sorted({c.get("prompting", "few-shot") for c in cells.get(task, {}).values()
                        if c.get("status") == "ok"})
        s = sel.get(task)
        pick = (f" (validation, n={s['n']}, {s['metric']}: few-shot {s['few-shot']:.4f}, lora {s['lora']:.4f})"
                if s else "")
        if modes:
            lines.append(f"  - {task}: prompting {', '.join(modes)}{pick}.")
    ns = {task: sorted({c["n"] for c in tc.values() if c.get("status") == "ok"}) for task, tc in cells.items()}
    lines.append("- Slices (n per task, the same examples for every configuration of a task): "
                 + "; ".join(f"{t} n={'/'.join(map(str, v))}" for t, v in ns.items() if v) + ".")
    lines += ["- On CPU the float model runs in fp32 (CPU fp16 matmuls are emulated); on CUDA in fp16. On CPU the "
              "compressed modules run through the reference path, which caches the dequantized weight: compressed "
              "cells run at about fp32 speed there, so CPU speed-ups say nothing about the GPU kernels.",
              "- METEOR is exact + Porter-stem matching without the WordNet synonym stage (no offline WordNet); "
              "it equals nltk's `meteor_score` with an empty synonym list. BLEU is sacrebleu corpus BLEU "
              "(`zh` tokenizer for CSL). Both on a 0..1 scale.",
              "- Targeting: trie-constrained beam search over every interest in the IRA data (k = beam = 10); "
              "`+ptpv` adds prefix-tree parallel verification (trigger `auto`); latency is per ad.",
              "- The default model's weights lie on a Q4_1 grid (blocks of 32), so INT4 at group 32 is nearly "
              "lossless on the base model by construction (less so once an adapter is merged); read INT4 quality "
              "with that caveat.",
              "- `mix+int4+rec` / `mix+int4+rec-tasks`: Mix+INT4 with recovery distillation after pruning "
              "(`egt compress --recover-steps 150`: the kept values trained towards the task's FP16 model), on IRA ad "
              "texts of the targeting train split / on the LoRA tasks' training pairs in the chat format "
              "(`eval.configs.recovery_texts_file`, `recovery_pairs_file`); no test or validation example is used. "
              "`mix+int4+rec-tasks-long`: the same pairs, all of them, for 1500 steps with `--recover-device cuda`.",
              "- Speed-up = FP16 latency / configuration latency, measured on the same card in the same kind of run."]
    loads = [x for c in ok for x in (c.get("load_avg_1min") or [])]
    cpu = any(str(c.get("card", "")).startswith("CPU") for c in ok)
    if loads:
        lines.append(f"- Machine load: 1-minute load average {min(loads):.1f} to {max(loads):.1f} across the cells "
                     f"(before/after each, in `load_avg_1min`)" + (" on a 2-core CPU shared with other jobs: "
                     "absolute latencies are inflated and speed-ups between cells run at different loads are noisy."
                     if cpu else "."))
    return lines


def write_report(out: str | Path) -> list[Path]:
    out = Path(out)
    cells = load_cells(out)
    table = {task: {cfg: {k: v for k, v in c.items() if k not in ("records", "trace")} for cfg, c in tc.items()}
             for task, tc in cells.items()}
    written = []
    p = out / "table1.json"
    p.write_text(json.dumps(table, indent=1, ensure_ascii=False, default=float))
    written.append(p)
    md = ["# egt offline evaluation (Table 1 on our model)", "",
          "Generated by `egt eval report` from the cells in `cells/`; every cell records its command, card, date, "
          "slice and settings. Rerun one cell with the command in its JSON.", ""]
    md += ["## Method notes", ""] + method_notes(cells) + [""]
    for task in TASKS:
        if task not in cells:
            continue
        t = TASKS[task]
        md += [f"## {task}", "", t.description + f". Main metric: {t.main_metric}.", ""]
        md += task_table(task, cells[task])
        base = cells[task].get("fp16", {})
        if task == "targeting" and base.get("status") == "ok" and "popularity_recall@10" in base.get("metrics", {}):
            md += ["", f"Floor: always answering the 10 most frequent interests of the non-test ads gives recall@10 = "
                       f"{base['metrics']['popularity_recall@10']:.4f} on the same {base['n']} ads."]
        img = pareto_plot(task, cells[task], out / f"pareto_{task}.png")
        if img:
            written.append(img)
            md += ["", f"![{task} Pareto plot]({img.name})"]
        md.append("")
    md += ["## Goals", ""] + goals(cells) + [""]
    p = out / "report.md"
    p.write_text("\n".join(md))
    written.append(p)
    return written
