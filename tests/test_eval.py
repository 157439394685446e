"""eval: configurations, tasks, report, and a small-slice end-to-end run (single process and accelerate)."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eval import configs, report, run, tasks

REPO = Path(__file__).resolve().parent.parent


def _shared_or_skip():
    from egt.data import data_dir

    try:
        data_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))


# ---------------------------------------------------------------------------------------------- configurations

def test_config_names():
    assert configs.split_name("mix+int4+ptpv") == ("mix+int4", True)
    assert configs.split_name("2:4") == ("2:4", False)
    assert configs.split_name("mix+int4+rec+ptpv") == ("mix+int4+rec", True)
    assert len(configs.all_names("targeting")) == 22 and len(configs.all_names("slogans")) == 11
    rec = configs.compress_settings("mix+int4+rec", "default")
    assert rec["recover_steps"] > 0
    from eval.tasks import TASKS

    lines = set(Path(rec["recover_data"]).read_text().splitlines())
    t = TASKS["targeting"]
    held = {" ".join(e.source.split()) for e in t.examples(None, None) + t.split("val")}
    assert len(lines) > 500 and held and not held & lines  # no test or validation ad is distilled on
    from egt.compress import CompressConfig

    CompressConfig(**{k: v for k, v in rec.items() if k != "source"}).validate()
    assert configs.slug("2:4+int4") == "2of4_int4"
    with pytest.raises(ValueError, match="unknown configuration"):
        configs.split_name("int2")
    assert configs.availability("fp16") == (True, "")


def test_gpu_recovery_config_without_cuda_is_not_available(monkeypatch, tmp_path):
    """The long recovery trains on a GPU: without one and without a cached model, the cell says so."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    long = configs.compress_settings("mix+int4+rec-tasks-long", "default")
    assert long["recover_device"] == "cuda" and long["recover_steps"] > configs.CONFIGS["mix+int4+rec-tasks"]["recover_steps"]
    with pytest.raises(configs.NotAvailable, match="GPU"):
        configs.ensure_compressed("mix+int4+rec-tasks-long", "default", cache_root=tmp_path, progress=False)
    assert not list(tmp_path.glob("mix_int4_rec-tasks-long-*"))  # nothing half-made


def test_missing_stage_is_not_available(monkeypatch):
    import egt.quant

    monkeypatch.delattr(egt.quant, "quantize_model", raising=False)
    ok, why = configs.availability("int4")
    assert not ok and "quantize_model" in why
    # a cell of an unavailable configuration reports it without numbers (and without loading a model)
    cell = run.run_cell("slogans", "int4", limit=1, progress=False) if _has_data() else None
    if cell is not None:
        assert cell["status"] == "not available" and "metrics" not in cell


def _has_data():
    from egt.data import data_dir

    try:
        data_dir()
        return True
    except FileNotFoundError:
        return False


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown task"):
        run.run_cell("nope", "fp16")
    with pytest.raises(ValueError, match="targeting task only"):
        run.run_cell("slogans", "fp16+ptpv")
    with pytest.raises(ValueError, match="limit"):
        run.run_cell("slogans", "fp16", limit=0)


# ------------------------------------------------------------------------------------------------------ tasks

def test_task_slices_are_deterministic_and_disjoint_from_shots():
    _shared_or_skip()
    for name, t in tasks.TASKS.items():
        a = t.examples(None, 5)
        assert [e.id for e in a] == [e.id for e in t.examples(None, 5)] and len(a) == 5
        shot_src = {s.source for s in t.shots}
        assert shot_src and not shot_src & {e.source for e in t.examples(None, None)}, name


def test_targeting_prompt_template():
    _shared_or_skip()
    t = tasks.TASKS["targeting"]
    tpl = t.prompt_template()
    text = tpl.format(ad="Buy {now}")  # literal braces of the demonstrations survive str.format
    assert text.endswith("Ad: Buy {now}\nAudience interest:")
    assert all(s.reference[0] in text for s in t.shots)
    assert len(t.popular(10)) == 10


def test_generation_prompt_has_shots_as_chat_turns():
    _shared_or_skip()
    t = tasks.TASKS["slogans"]
    ex = t.examples(None, 1)[0]
    msgs = t.messages(ex)
    assert [m["role"] for m in msgs] == ["user", "assistant"] * t.n_shots + ["user"]
    assert msgs[1]["content"] == t.shots[0].reference
    kg = tasks.TASKS["csl-kg"]
    assert kg.normalize("机器学习_深度学习、模型") == "机器学习 深度学习 模型"


# ----------------------------------------------------------------------------------------------------- report

def _cell(task, config, main, ms, card="cardA", status="ok"):
    c = {"task": task, "config": config, "status": status, "n": 4, "card": card, "processes": 1, "limit": 4,
         "data": None}
    if status != "ok":
        return {**c, "reason": "egt.quant.quantize_model is not in this checkout yet"}
    m = {"meteor": main, "bleu": main / 2, "avg_len": 5.0} if task != "targeting" else \
        {"recall@1": main / 3, "recall@5": main / 2, "recall@10": main, "precision@10": main / 5, "triggered": 1}
    lat = {"ms_per_token": ms, "prefill_ms": 3 * ms, "total_ms": 10 * ms, "decode_steps": 8}
    recs = [{"id": i, "output": ["x"] if i or config.startswith("fp16") else ["y"]} for i in range(4)]
    return {**c, "metrics": m, "latency": lat, "records": recs}


def test_report_tables_goals_and_plots(tmp_path):
    cells = [_cell("slogans", "fp16", 0.30, 10.0), _cell("slogans", "mix+int4", 0.297, 5.0),
             _cell("slogans", "int4", 0.0, 0.0, status="not available"), _cell("slogans", "2:4", 0.28, 4.0, card="B"),
             _cell("targeting", "fp16", 0.4, 8.0), _cell("targeting", "fp16+ptpv", 0.4, 6.0),
             _cell("targeting", "mix+int4", 0.3, 4.0)]
    for c in cells:
        run.write_cell(c, tmp_path)
    paths = report.write_report(tmp_path)
    names = {p.name for p in paths}
    assert {"table1.json", "report.md", "pareto_slogans.png", "pareto_targeting.png"} <= names
    md = (tmp_path / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| mix+int4 |") and "0.2970" in line)
    assert "2.00x" in row and "-1.0%" in row and "| 3/4 |" in row  # 10 / 5 ms; (0.297 - 0.3) / 0.3
    row = next(line for line in md.splitlines() if line.startswith("| 2:4 |"))
    assert "x |" not in row.replace("| 2:4 |", "")  # another card: no speed-up is computed
    assert "not available: egt.quant.quantize_model" in md
    assert "slogans: Mix+INT4 meteor = 0.2970 vs FP16 0.3000 on the same 4 examples (-1.0% relative): **met**" in md
    assert "targeting: Mix+INT4 recall@10 = 0.3000 vs FP16 0.4000 on the same 4 examples (-25.0% relative): " \
           "**MISSED**" in md
    assert "csl-kg: Mix+INT4 vs FP16 on meteor: **not measured**" in md
    assert "targeting fp16: recall@10 without verification 0.4000, with 0.4000: **equal**" in md
    # where verification changes a list, the report says which search found the better-scored top 10
    a, b = _cell("targeting", "mix+int4", 0.3, 4.0), _cell("targeting", "mix+int4+ptpv", 0.3, 3.0)
    for r in a["records"]:
        r["scores"] = [-1.0, -2.0]
    for i, r in enumerate(b["records"]):
        r["output"], r["scores"] = (["z"], [-1.0, -1.5]) if i < 2 else (r["output"], [-1.0, -2.0])
    run.write_cell(a, tmp_path)
    run.write_cell(b, tmp_path)
    report.write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "identical top-10 lists on 2/4 ads; where they differ, verification's top 10 scores higher on 2, " \
           "lower on 0 of 2 ads" in md
    # a shorter slice is compared with FP16 on the common examples, rescored from the stored records
    base = _cell("slogans", "fp16", 0.0, 10.0)
    base["records"] = [{"id": i, "output": o, "reference": "big red shoes"}
                       for i, o in enumerate(["big red shoes", "nothing", "big shoes", "red"])]
    short = {**_cell("slogans", "1:4", 0.0, 5.0), "n": 2,
             "records": [{"id": 0, "output": "big red shoes", "reference": "big red shoes"},
                         {"id": 1, "output": "big red shoes", "reference": "big red shoes"}]}
    v, b, n = report.paired_metrics("slogans", short, base)
    from eval import metrics as M
    assert n == 2 and v == pytest.approx(M.meteor("big red shoes", "big red shoes"))
    assert b == pytest.approx(M.meteor("big red shoes", "big red shoes") / 2)
    tab = json.loads((tmp_path / "table1.json").read_text())
    assert tab["slogans"]["fp16"]["metrics"]["meteor"] == 0.30 and "records" not in tab["slogans"]["fp16"]


# --------------------------------------------------------------------------------------------- end to end (CPU)

def _env(**kw):
    env = dict(os.environ, EGT_EVAL_MAX_NEW_TOKENS="4", EGT_EVAL_THREADS="1", **kw)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_cli_small_slice_end_to_end(tmp_path, monkeypatch):
    """`egt eval --task slogans --config fp16 --limit 2` on the embedded default, a few tokens."""
    _shared_or_skip()
    from egt.cli import main

    monkeypatch.setenv("EGT_EVAL_MAX_NEW_TOKENS", "4")
    assert main(["eval", "--task", "slogans", "--config", "fp16", "--limit", "2", "--out", str(tmp_path)]) == 0
    cell = json.loads((tmp_path / "cells" / "slogans__fp16.json").read_text())
    assert cell["status"] == "ok" and cell["n"] == 2 and cell["settings"]["max_new_tokens"] == 4
    assert cell["prompting"] == tasks.prompting("slogans") == cell["settings"]["prompting"]
    if cell["prompting"] == "lora":  # the merged model was evaluated, and the cell says which adapter
        from eval import finetune

        assert cell["adapter"]["sha256"] == finetune.adapter_sha() and "merged-" in cell["adapter"]["merged_into"]
    assert 0.0 <= cell["metrics"]["meteor"] <= 1.0 and 0.0 <= cell["metrics"]["bleu"] <= 1.0
    assert cell["latency"]["ms_per_token"] > 0 and all(r["output"] for r in cell["records"])
    assert main(["eval", "--out", str(tmp_path)]) == 2  # no --task: one clear line, exit 2


@pytest.mark.slow
def test_accelerate_matches_single_process(tmp_path):
    """Two CPU processes under `accelerate launch` score exactly what one process scores."""
    _shared_or_skip()
    if shutil.which("accelerate") is None:
        pytest.skip("accelerate CLI not installed")
    args = ["cell", "--task", "slogans", "--config", "fp16", "--limit", "3", "--no-progress"]
    one = subprocess.run([sys.executable, "-m", "eval.run", *args, "--out", str(tmp_path / "one")], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    # accelerate's --cpu flag launches a single process; --multi_gpu on a machine without GPUs starts torch's
    # launcher with 2 processes, which PartialState(cpu=True) joins over gloo
    two = subprocess.run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "eval.run", *args,
                          "--out", str(tmp_path / "two")], cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    a = json.loads((tmp_path / "one" / "cells" / "slogans__fp16.json").read_text())
    b = json.loads((tmp_path / "two" / "cells" / "slogans__fp16.json").read_text())
    assert a["processes"] == 1 and b["processes"] == 2
    assert [r["output"] for r in a["records"]] == [r["output"] for r in b["records"]]
    assert a["metrics"] == b["metrics"] and not any(math.isnan(v) for v in a["metrics"].values())


# ------------------------------------------------------------------------------------- prompting modes, LoRA

def test_prompting_modes_and_splits():
    _shared_or_skip()
    for name, t in tasks.TASKS.items():
        test_src = {e.source for e in t.examples(None, None)}
        train, val = t.split("train"), t.split("val")
        assert train and val, name
        tr, va = {e.source for e in train}, {e.source for e in val}
        assert not tr & va and not (tr | va) & test_src, name  # fine-tuning never sees the test slice
        assert not va & {s.source for s in t.shots}, name  # selection never scores a demonstration
        assert [e.id for e in t.split("val")[:5]] == [e.id for e in val[:5]]
        with pytest.raises(ValueError, match="split"):
            t.split("test")
    t = tasks.TASKS["slogans"]
    ex = t.examples(None, 1)[0]
    assert [m["role"] for m in t.messages(ex, "lora")] == ["user"]
    assert t.messages(ex, "lora")[0]["content"] == t.train_pairs(ex)[0][0]  # trained on the prompt it is tested on
    with pytest.raises(ValueError, match="prompting mode"):
        t.messages(ex, "zero")
    tg = tasks.TASKS["targeting"]
    assert "Audience interest: " + tg.shots[0].reference[0] not in tg.prompt_template("lora")
    pairs = tg.train_pairs(tg.split("train")[0])
    assert [a for _, a in pairs] == tg.split("train")[0].reference and len({u for u, _ in pairs}) == 1


def test_prompting_env_override(monkeypatch):
    monkeypatch.setenv("EGT_EVAL_PROMPTING", "lora")
    assert tasks.prompting("slogans") == "lora"
    monkeypatch.setenv("EGT_EVAL_PROMPTING", "bogus")
    with pytest.raises(ValueError, match="prompting mode"):
        tasks.prompting("slogans")
    monkeypatch.delenv("EGT_EVAL_PROMPTING")
    assert tasks.prompting("slogans") == tasks.PROMPTING["slogans"]


def test_training_pairs_tokenize_as_eval_prompts():
    """A fine-tuning pair is the exact token sequence `egt eval` scores: the Targeter's prompt, then the trie's
    tokens of the interest and the end-of-turn token; labels only on the answer."""
    _shared_or_skip()
    from egt.engine import Engine
    from egt.verify.targeter import Targeter, answer_context
    from eval import finetune

    eng = Engine.from_pretrained("default", device="cpu", dtype="fp32")
    tok = eng.tokenizer
    _, end = answer_context(tok)
    tg = tasks.TASKS["targeting"]
    ex = tg.split("train")[0]
    user, answer = tg.train_pairs(ex)[0]
    ids, lab = finetune.encode_pair(tok, user, answer, end, 4096)
    targeter = Targeter.__new__(Targeter)  # only its prompt code: no trie needed
    targeter.engine, targeter.chat, targeter.prompt_template = eng, True, tg.prompt_template("lora")
    prompt = targeter.prompt_ids(tasks._cut(ex.source, tasks.MAX_AD_CHARS))
    entry = tok([answer], add_special_tokens=False)["input_ids"][0] + [end]
    assert ids == prompt + entry and lab == [-100] * len(prompt) + entry
    sl = tasks.TASKS["slogans"]
    e2 = sl.split("train")[0]
    ids, lab = finetune.encode_pair(tok, *sl.train_pairs(e2)[0], end, 4096)
    p2 = sl.prompt_ids(tok, e2, "lora")
    assert ids[: len(p2)] == p2 and all(x == -100 for x in lab[: len(p2)]) and lab[-1] == end
    ids, lab = finetune.encode_pair(tok, *sl.train_pairs(e2)[0], end, 20)  # too long: the prompt loses its start
    assert len(ids) == 20 and ids[-1] == end


def _tiny_hf(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg).eval()
    m.save_pretrained(tmp_path / "base", safe_serialization=True)
    return cfg, m


def test_adapter_save_load_merge_matches_peft(tmp_path):
    """Our merge of the stored (fp16) adapter equals peft's merge_and_unload of the same files, and the merged
    checkpoint directory holds exactly those weights."""
    pytest.importorskip("peft")
    import torch
    from peft import PeftModel, get_peft_model
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    from eval import finetune

    cfg, base = _tiny_hf(tmp_path)
    recipe = {**finetune.RECIPE, "layers": [1, 2]}
    pm = get_peft_model(LlamaForCausalLM.from_pretrained(tmp_path / "base"), finetune.lora_config(recipe))
    with torch.no_grad():  # peft starts B at zero: make the delta non-trivial
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.2)
    finetune.save_adapter(pm, tmp_path / "ad", {"recipe": recipe})
    assert (tmp_path / "ad" / "adapter_model.safetensors").stat().st_size < 5 << 20
    conf, adapter = finetune.load_adapter(tmp_path / "ad")
    assert conf["r"] == recipe["r"] and len(adapter) == 2 * 7  # 2 layers x 7 projections
    assert all(".layers.0." not in k for k in adapter)
    ours = finetune.merge_state(load_file(str(tmp_path / "base" / "model.safetensors")), adapter)
    ref = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "ad")
    ref = ref.merge_and_unload().state_dict()
    changed = 0
    for k, v in ours.items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=1e-6)
        changed += not torch.equal(v, base.state_dict()[k])
    assert changed == 14
    d = finetune.merged_source(str(tmp_path / "base"), tmp_path / "ad", cache_root=tmp_path / "cache")
    assert finetune.merged_source(str(tmp_path / "base"), tmp_path / "ad", cache_root=tmp_path / "cache") == d
    on_disk = load_file(str(Path(d) / "model.safetensors"))
    assert all(torch.equal(on_disk[k], ours[k]) for k in ours) and (Path(d) / "config.json").is_file()
    # bad adapters: a clear error
    bad = {"model.layers.9.mlp.up_proj.weight": next(iter(adapter.values()))}
    with pytest.raises(ValueError, match="does not have"):
        finetune.merge_state(load_file(str(tmp_path / "base" / "model.safetensors")), bad)
    with pytest.raises(FileNotFoundError, match="no LoRA adapter"):
        finetune.load_adapter(tmp_path / "nothing")


def test_shipped_adapter_is_small_and_selection_matches_prompting():
    from eval import finetune

    d = finetune.ADAPTER_DIR
    if not (d / finetune.ADAPTER_FILE).is_file():
        pytest.skip("no adapter in data/eval_lora")
    assert (d / finetune.ADAPTER_FILE).stat().st_size < 5 << 20
    rec = json.loads((d / "recipe.json").read_text())
    sel = rec.get("selection", {})
    assert rec.get("selection_adapter_sha256") == finetune.adapter_sha()  # selected with this very adapter
    for name in tasks.TASKS:
        s = sel[name]
        assert s["chosen"] == ("lora" if s["lora"] > s["few-shot"] else "few-shot")
        assert tasks.PROMPTING[name] == s["chosen"], name


def test_cached_model_reuse_respects_the_source(tmp_path):
    """A model compressed from the base is never reused for the LoRA-merged source (or the other way round)."""
    from egt.format import MANIFEST

    want = configs.compress_settings("int4", "x")
    want.pop("source")
    d = tmp_path / "int4-aaaa"
    d.mkdir()
    (d / MANIFEST).write_text(json.dumps({"plan": {"meta": {"config": want}}}))
    assert configs._made_with(d, "int4", "default")  # no note: made from the embedded default
    assert not configs._made_with(d, "int4", "/cache/merged-1")
    configs._source_note(d).write_text("/cache/merged-1")
    assert configs._made_with(d, "int4", "/cache/merged-1") and not configs._made_with(d, "int4", "default")
    assert not configs._made_with(d, "2:4", "/cache/merged-1")
