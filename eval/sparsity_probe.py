"""Which modules break the sparse configurations of the eval model? A quick probe (issue 8, step 4).

Contract: `python -m eval.sparsity_probe [--source S] [--texts N] [--out PATH]` loads the float model the eval
uses (default: the LoRA-merged default when any task is in mode "lora", else the embedded default), collects
activation statistics on the packaged demo ads (`egt.calibrate.collect_stats`, no Gram matrices), and measures
the mean per-token KL(float || pruned) on N held-out ad texts (`egt.data.heldout_texts`) when one group of
modules is pruned with a Wanda N:4 mask (`egt.sparsify.importance.assignment_kl`) and everything else stays
dense. Groups: each projection kind across all layers, the first / middle / last layers, all at 2:4 and at 1:4.
Wanda masks without error compensation are cruder than `egt compress`'s SparseGPT, so the numbers rank the groups;
they are not the compressed model's loss. Writes a JSON and prints a table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

KINDS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
         "mlp.up_proj", "mlp.down_proj"]


def groups(n_layers: int) -> dict[str, list[str]]:
    def mods(layers, kinds=KINDS):
        return [f"layers.{i}.{k}" for i in layers for k in kinds]

    g = {f"all {k.split('.')[-1]}": mods(range(n_layers), [k]) for k in KINDS}
    third = n_layers // 3
    g["first 3 layers"] = mods(range(3))
    g["last 3 layers"] = mods(range(n_layers - 3, n_layers))
    g[f"layers 0-{third - 1}"] = mods(range(third))
    g[f"layers {third}-{2 * third - 1}"] = mods(range(third, 2 * third))
    g[f"layers {2 * third}-{n_layers - 1}"] = mods(range(2 * third, n_layers))
    g["all but first/last 2 layers"] = mods(range(2, n_layers - 2))
    g["all, down_proj dense"] = mods(range(n_layers), [k for k in KINDS if k != "mlp.down_proj"])
    g["all"] = mods(range(n_layers))
    return g


def probe(source: str, n_texts: int = 8, patterns=("2:4", "1:4"), n_calib: int = 32, log=print) -> dict:
    from egt.calibrate import collect_stats
    from egt.data import calibration_texts, heldout_texts
    from egt.models import load_model
    from egt.sparsify import importance as I

    torch.manual_seed(0)
    lm = load_model(source, dtype=torch.float32, device="cpu")
    model, tok = lm.model, lm.tokenizer
    stats = collect_stats(model, tok, calibration_texts(None, n_calib, 0), progress=False, gram=False)
    seqs = [torch.tensor(tok(t, add_special_tokens=False)["input_ids"][:128]) for t in heldout_texts(n_texts, 0)]
    cap = I.capture(model, seqs)
    res = {"source": source, "texts": n_texts, "calibration_texts": n_calib, "tokens": cap.tokens, "mask": "wanda", "rows": []}
    for name, mods in groups(len(model.layers)).items():
        row = {"group": name, "modules": len(mods)}
        for pat in patterns:
            t0 = time.perf_counter()
            row[pat] = I.assignment_kl(model, cap, stats, {m: pat for m in mods})
            row[f"{pat}_s"] = round(time.perf_counter() - t0, 1)
        res["rows"].append(row)
        log(f"{name:32s} {len(mods):4d} " + " ".join(f"{p} KL {row[p]:.4f}" for p in patterns), flush=True)
    return res


def default_source() -> str:
    from .run import model_for
    from .tasks import TASKS

    for task in TASKS:
        mode, src = model_for(task, "default")
        if mode == "lora":
            return src
    return "default"


def cli(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.sparsity_probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=None)
    ap.add_argument("--texts", type=int, default=8)
    ap.add_argument("--calib", type=int, default=32, help="demo-ad texts for the activation statistics")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    res = probe(a.source or default_source(), a.texts, n_calib=a.calib)
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    res["command"] = f"python -m eval.sparsity_probe --texts {a.texts} --calib {a.calib}"
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
