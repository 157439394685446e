"""The LoRA recipe of the evaluation: fine-tune the embedded default on the tasks' training splits, keep the small
adapter in `data/eval_lora/`, merge it into the float weights, and choose per task between it and few-shot prompts.

Contract:
- `python -m eval.finetune train [--steps N]` recreates `data/eval_lora/` from scratch, deterministically up to
  CPU floating-point order (fixed seed, fixed data order): one LoRA adapter (peft, `RECIPE`) trained on the
  training splits of all four tasks at once (`Task.split("train")`, pairs from `Task.train_pairs`, i.e. the
  zero-shot prompts `egt eval` uses in mode "lora"), loss on the answer tokens only. It writes
  `adapter_model.safetensors` (fp16, peft's key names, loadable by `peft.PeftModel.from_pretrained`),
  `adapter_config.json` (peft's) and `recipe.json` (settings, data sizes, loss curve, time).
- `python -m eval.finetune select [--n N]` scores, on each task's validation slice (`Task.split("val")[:N]`),
  the base model with few-shot prompts against the merged model with zero-shot prompts, and records both numbers
  and the choice in `recipe.json["selection"]`; `eval.tasks.PROMPTING` must agree with it (tested).
- `load_adapter(dir)` -> (peft config dict, {HF weight name: (A, B, scale)}); `merge_state(state, adapter)`
  adds scale * B @ A (fp32) to the named HF weights in place; `merged_source(base="default")` writes (once) a
  plain HF checkpoint directory of the merged model under the eval model cache and returns its path, so the FP16
  configuration and every compressed one start from the same merged weights (`egt compress` takes it as source).
- Nothing is downloaded: the base is the embedded default. peft is needed only to train (and by the tests).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
ADAPTER_DIR = REPO / "data" / "eval_lora"
ADAPTER_FILE = "adapter_model.safetensors"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Short CPU recipe (2 shared cores, ~60 s for one full-depth step of 8 examples): rank 8 on every projection of
# the last 10 of 30 layers only, so the backward pass stops there (0.8M parameters, 1.6 MB in fp16), and the
# vocabulary projection runs on the answer tokens only.
RECIPE = {"seed": 0, "r": 8, "alpha": 16, "dropout": 0.0, "targets": TARGETS, "layers": list(range(20, 30)),
          "lr": 2e-3, "warmup": 4, "batch": 8, "steps": 60, "max_tokens": 448, "weight_decay": 0.0,
          "grad_clip": 1.0,
          # share of batches per task (CSL examples are ~2x longer, so they get fewer batches)
          "task_weights": {"targeting": 0.4, "slogans": 0.3, "csl-kg": 0.15, "csl-ts": 0.15}}


# ----------------------------------------------------------------------------------------------- adapter files

def adapter_sha(adapter_dir: Path = ADAPTER_DIR) -> str:
    return hashlib.sha256((Path(adapter_dir) / ADAPTER_FILE).read_bytes()).hexdigest()


def load_adapter(adapter_dir: Path | str = ADAPTER_DIR) -> tuple[dict, dict[str, tuple]]:
    """The adapter as {HF weight name: (A [r, in], B [out, r], scale)} (fp32), with peft's config dict."""
    from safetensors.torch import load_file

    d = Path(adapter_dir)
    if not (d / ADAPTER_FILE).is_file() or not (d / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{d}: no LoRA adapter ({ADAPTER_FILE} + adapter_config.json); "
                                f"recreate it with `python -m eval.finetune train`")
    cfg = json.loads((d / "adapter_config.json").read_text())
    if cfg.get("use_rslora") or cfg.get("use_dora"):
        raise ValueError(f"{d}: rsLoRA/DoRA adapters are not supported by this merger")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{d}: per-module rank/alpha patterns are not supported by this merger")
    scale = float(cfg["lora_alpha"]) / float(cfg["r"])
    raw = load_file(str(d / ADAPTER_FILE))
    out: dict[str, tuple] = {}
    for k, a in raw.items():
        if ".lora_A." not in k:
            continue
        b = raw.get(k.replace(".lora_A.", ".lora_B."))
        if b is None:
            raise ValueError(f"{d}: {k} has no matching lora_B")
        # peft: base_model.model.<HF module>.lora_A.weight -> <HF module>.weight
        mod = k.split(".lora_A.")[0]
        if mod.startswith("base_model.model."):
            mod = mod[len("base_model.model."):]
        out[mod + ".weight"] = (a.float(), b.float(), scale)
    if not out:
        raise ValueError(f"{d}: the adapter holds no LoRA weights")
    return cfg, out


def merge_state(state: dict[str, torch.Tensor], adapter: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """W <- W + scale * B @ A for every adapted weight of an HF-named state dict (in place; returns it)."""
    for name, (a, b, scale) in adapter.items():
        if name not in state:
            raise ValueError(f"the adapter targets {name!r}, which the base checkpoint does not have")
        w = state[name]
        if tuple(w.shape) != (b.shape[0], a.shape[1]):
            raise ValueError(f"{name}: adapter shape {(b.shape[0], a.shape[1])} != weight shape {tuple(w.shape)}")
        state[name] = (w.float() + scale * (b @ a)).to(w.dtype)
    return state


def merged_source(base: str = "default", adapter_dir: Path | str = ADAPTER_DIR,
                  cache_root: Path | None = None) -> str:
    """Path of a plain HF checkpoint of `base` with the adapter merged (made once; keyed by both)."""
    from safetensors.torch import load_file, save_file

    from egt.format import atomic_directory
    from egt.models import DEFAULT_MODEL, _resolve

    from .configs import default_cache_root

    base_dir = _resolve(base)
    if base not in (DEFAULT_MODEL, "default") and not (base_dir / "model.safetensors").is_file():
        raise ValueError(f"{base}: merging needs a single-file float checkpoint (model.safetensors)")
    key = hashlib.sha1((adapter_sha(Path(adapter_dir)) + str(base_dir.resolve())).encode()).hexdigest()[:10]
    out = Path(cache_root or default_cache_root()) / f"merged-{key}"
    if (out / "model.safetensors").is_file() and (out / "egt_merged.json").is_file():
        return str(out)
    _, adapter = load_adapter(adapter_dir)
    state = merge_state(load_file(str(base_dir / "model.safetensors")), adapter)
    with atomic_directory(out) as tmp:
        for f in base_dir.iterdir():  # config, tokenizer, chat template: unchanged
            if f.is_file() and f.name not in ("model.safetensors", "egt_manifest.json"):
                shutil.copy2(f, tmp / f.name)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "egt_merged.json").write_text(json.dumps(
            {"base": str(base_dir), "adapter": str(adapter_dir), "adapter_sha256": adapter_sha(Path(adapter_dir))},
            indent=1))
    return str(out)


# ----------------------------------------------------------------------------------------------------- training

def encode_pair(tok, user: str, answer: str, end_id: int, max_tokens: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one chat pair, exactly as `egt eval` prompts (chat template + generation prompt),
    the answer followed by the end-of-turn token; labels are -100 on the prompt. Long prompts lose their start."""
    ids = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    ans = list(tok(answer, add_special_tokens=False)["input_ids"]) + [end_id]
    ids = ids[-max(1, max_tokens - len(ans)):]
    return ids + ans, [-100] * len(ids) + ans


def _batches(tok, end_id: int, rng: random.Random, recipe: dict):
    from .tasks import TASKS

    pools, sizes = {}, {}
    for name, w in recipe["task_weights"].items():
        pairs = [p for ex in TASKS[name].split("train") for p in TASKS[name].train_pairs(ex)]
        sizes[name] = len(pairs)
        rng.shuffle(pairs)
        pools[name] = pairs
    names = list(recipe["task_weights"])
    weights = [recipe["task_weights"][n] for n in names]
    plan = rng.choices(names, weights, k=recipe["steps"])  # task of each step, fixed by the seed
    pos = {n: 0 for n in names}
    out = []
    for name in plan:
        items = []
        for _ in range(recipe["batch"]):
            pool = pools[name]
            items.append(encode_pair(tok, *pool[pos[name] % len(pool)], end_id, recipe["max_tokens"]))
            pos[name] += 1
        out.append((name, items))
    return out, sizes, pos


def _collate(items, pad_id: int):
    n = max(len(i) for i, _ in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    lab = torch.full((len(items), n), -100, dtype=torch.long)
    att = torch.zeros((len(items), n), dtype=torch.long)
    for j, (i, l) in enumerate(items):
        ids[j, : len(i)] = torch.tensor(i)
        lab[j, : len(l)] = torch.tensor(l)
        att[j, : len(i)] = 1
    return ids, lab, att


def lora_config(recipe: dict = RECIPE):
    from peft import LoraConfig

    return LoraConfig(r=recipe["r"], lora_alpha=recipe["alpha"], lora_dropout=recipe["dropout"],
                      target_modules=list(recipe["targets"]), layers_to_transform=recipe.get("layers"),
                      bias="none", task_type="CAUSAL_LM")


def answer_loss(hf_model, ids, lab, att) -> torch.Tensor:
    """Mean next-token cross-entropy on the answer tokens, with the vocabulary projection on those rows only."""
    hidden = hf_model.model(input_ids=ids, attention_mask=att).last_hidden_state  # [B, T, H]
    tgt = lab[:, 1:]
    keep = tgt != -100
    logits = hf_model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), tgt[keep])


def save_adapter(peft_model, out: Path, extra: dict) -> None:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
    save_file(state, str(out / ADAPTER_FILE), metadata={"format": "pt"})
    peft_model.peft_config["default"].save_pretrained(str(out))
    (out / "recipe.json").write_text(json.dumps(extra, indent=1, ensure_ascii=False))


def train(recipe: dict = RECIPE, out: Path = ADAPTER_DIR, threads: int | None = None, log=print) -> dict:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from egt.models import default_model_dir

    torch.manual_seed(recipe["seed"])
    rng = random.Random(recipe["seed"])
    if threads:
        torch.set_num_threads(threads)
    base = default_model_dir()
    tok = AutoTokenizer.from_pretrained(base)
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, lora_config(recipe))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    steps = recipe["steps"]

    def lr_at(s):  # linear warm-up, then cosine to 0
        if s < recipe["warmup"]:
            return (s + 1) / recipe["warmup"]
        return 0.5 * (1 + math.cos(math.pi * (s - recipe["warmup"]) / max(1, steps - recipe["warmup"])))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    batches, sizes, used = _batches(tok, end_id, rng, recipe)
    pad = tok.pad_token_id if tok.pad_token_id is not None else end_id
    losses, t0 = [], time.perf_counter()
    for s, (name, items) in enumerate(batches):
        ids, lab, att = _collate(items, pad)
        loss = answer_loss(model.get_base_model(), ids, lab, att)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe["grad_clip"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append((name, round(loss.item(), 4)))
        if s % 10 == 0 or s == steps - 1:
            log(f"step {s + 1}/{steps} {name:9s} loss {loss.item():.3f}  {time.perf_counter() - t0:.0f} s")
    secs = time.perf_counter() - t0
    record = {"recipe": recipe, "base": "embedded default (SmolLM2-135M-Instruct)",
              "train_pairs_available": sizes, "train_pairs_seen": used, "seconds": round(secs, 1),
              "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "loss": losses, "command": "python -m eval.finetune train"}
    save_adapter(model, Path(out), record)
    return record


# ---------------------------------------------------------------------------------------------------- selection

def select(n: int = 8, tasks: list[str] | None = None, modes=("few-shot", "lora"), adapter_dir: Path = ADAPTER_DIR,
           record_path: Path | None = None, log=print) -> dict:
    """Main metric of (base, few-shot) and (merged, lora) on each task's validation slice; records the choice.
    The few-shot half does not depend on the adapter, so it may run before (or beside) the training: it is then
    kept in `record_path` (default: the adapter's recipe.json) and the choice is made once both halves exist."""
    from egt.engine import Engine

    from .tasks import TASKS

    rec_path = Path(record_path or Path(adapter_dir) / "recipe.json")
    record = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
    sel = record.get("selection", {})
    for mode in modes:
        src = "default" if mode == "few-shot" else merged_source("default", adapter_dir)
        eng = Engine.from_pretrained(src, device="cpu", dtype="fp32")
        for name in tasks or list(TASKS):
            t = TASKS[name]
            xs = t.split("val")[:n]
            res = sel.setdefault(name, {})
            if res.get("n") != len(xs):
                res.clear()
            res.update(n=len(xs), metric=t.main_metric)
            run = t.runner(eng, "fp16", None, mode)
            t0 = time.perf_counter()
            recs = [run(x) for x in xs]
            res[mode] = t.score(recs, xs)[t.main_metric]
            res[f"{mode}_seconds"] = round(time.perf_counter() - t0, 1)
            res[f"{mode}_outputs"] = [r["output"] for r in recs[:3]]
            log(f"{name:10s} {mode:8s} {t.main_metric}={res[mode]:.4f} ({res[f'{mode}_seconds']} s)", flush=True)
            if "few-shot" in res and "lora" in res:
                res["chosen"] = "lora" if res["lora"] > res["few-shot"] else "few-shot"
            record["selection"] = sel
            if "lora" in modes:
                record["selection_adapter_sha256"] = adapter_sha(Path(adapter_dir))
            record["selection_command"] = f"python -m eval.finetune select --n {n}"
            rec_path.parent.mkdir(parents=True, exist_ok=True)
            rec_path.write_text(json.dumps(record, indent=1, ensure_ascii=False))
    return sel


def cli(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.finetune", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("train", "select"))
    ap.add_argument("--steps", type=int, default=RECIPE["steps"])
    ap.add_argument("--n", type=int, default=8, help="select: validation examples per task")
    ap.add_argument("--task", action="append", help="select: only these tasks")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--mode", action="append", choices=("few-shot", "lora"), help="select: only these modes")
    ap.add_argument("--record", default=None, help="select: JSON to keep the results in (default: recipe.json)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.what == "train":
        rec = train({**RECIPE, "steps": a.steps}, threads=a.threads)
        print(f"wrote {ADAPTER_DIR} in {rec['seconds']} s")
    else:
        select(a.n, a.task, tuple(a.mode or ("few-shot", "lora")), record_path=a.record)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
