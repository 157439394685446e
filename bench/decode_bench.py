"""Decode-step benchmark on a GPU: HF eager, HF static cache + torch.compile, our torch step replayed from a CUDA
graph, and the egt MegaKernel, all in one run on one card, beside the bandwidth floor measured in the same run.

    python bench/decode_bench.py [--shapes a,b] [--batches qwen2.5-1.5b:2,4,8,16] [--skip hf-static-compile]

Writes bench/results/decode.json and decode.md (or under $OUT on the device machine). Rows:
{model, backend, weights, batch, ms_per_token, floor_ms, device, date}. Random bf16 weights of the real shapes;
prompt 128 tokens; decode steps at context ~128-200.

- hf-eager / hf-static-compile: `generate` of 64 new tokens minus `generate` of 1, over 63 steps (median of 3);
  static = `cache_implementation="static"`, which transformers compiles with torch.compile.
- torch-graph: our reference decode step (`Transformer.forward`: SDPA, cuBLAS, a static cache with a mask) captured
  once as a CUDA graph and replayed (median of 5 x 50 replays).
- egt-megakernel: one persistent-kernel launch per step with device-fed tokens (median of 5 x 100 launches,
  bench/common.time_decode_steps).
- floor: weight bytes read per step (all projections + LM head, bf16) / device-to-device copy bandwidth.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from egt.models import SHAPES, hf_config_for_shape, random_model  # noqa: E402
from common import copy_bandwidth, time_decode_steps  # noqa: E402
from megakernel_check import WEIGHT_LABELS, compress, weight_bytes  # noqa: E402

PROMPT = 128


def hf_generate_ms(name, batch, static):
    import transformers
    cfg = hf_config_for_shape(SHAPES[name])
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    ids = torch.randint(0, 1000, (batch, PROMPT), device="cuda")
    kw = {"cache_implementation": "static"} if static else {}

    def run(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, eos_token_id=None, pad_token_id=0, **kw)
        torch.cuda.synchronize()
        assert out.shape[1] == PROMPT + n
        return time.perf_counter() - t

    for _ in range(2):
        run(64)
        run(1)
    full = sorted(run(64) for _ in range(3))[1]
    one = sorted(run(1) for _ in range(3))[1]
    del m
    torch.cuda.empty_cache()
    return (full - one) / 63 * 1e3


@torch.inference_mode()
def torch_graph_ms(model, batch, max_len=512):
    """Our Transformer.forward decode step as one CUDA graph (static tensors updated in place between replays)."""
    V = model.shape.vocab
    cache = model.setup_cache(batch, max_len)
    slots = torch.arange(PROMPT, device="cuda")
    model(torch.randint(0, V, (batch, PROMPT), device="cuda"), slots.expand(batch, -1), slots, cache)
    tok = torch.randint(0, V, (batch, 1), device="cuda")
    pos = torch.full((batch, 1), PROMPT, device="cuda")
    slot = torch.tensor([PROMPT], device="cuda")
    rows = torch.arange(max_len, device="cuda")
    mask = (rows <= PROMPT).view(1, 1, 1, max_len).clone()

    def step():
        logits = model(tok, pos, slot, cache, mask=mask, kv_len=max_len)
        tok.copy_(logits[:, -1].argmax(-1, keepdim=True))  # on-device greedy, like the MegaKernel
        pos.add_(1)
        slot.add_(1)
        torch.logical_or(mask, (rows == slot).view(1, 1, 1, -1), out=mask)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    ts = []
    for _ in range(5):
        slot.fill_(PROMPT + 10); pos.fill_(PROMPT + 10)
        mask.copy_((rows <= PROMPT + 10).view(1, 1, 1, -1))
        g.replay()
        st, en = torch.cuda.Event(True), torch.cuda.Event(True)
        st.record()
        for _ in range(50):
            g.replay()
        en.record()
        torch.cuda.synchronize()
        ts.append(st.elapsed_time(en) / 50)
    ts.sort()
    del g, cache
    return ts[len(ts) // 2]


def megakernel_ms(model, batch):
    from egt.megakernel.runtime import MegaKernelDecoder
    dec = MegaKernelDecoder(model, batch=batch)
    cache = model.setup_cache(batch, 1024)
    slots = torch.arange(PROMPT, device="cuda")
    with torch.inference_mode():
        model(torch.randint(0, model.shape.vocab, (batch, PROMPT), device="cuda"), slots.expand(batch, -1), slots, cache)
    ms, _ = time_decode_steps(dec, cache, batch, PROMPT, warmup=100)
    info = {"plan_hash": dec.plan.plan_hash(), "measured_plan": dec.plan.measured_ms is not None,
            "smem_peak": dec.plan.smem_report()["peak"], "regs": dec.info["regs"]}
    del dec, cache
    return ms, info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--batches", default="qwen2.5-1.5b:2,4,8,16")
    ap.add_argument("--skip", default="", help="comma list of backends to skip")
    ap.add_argument("--weights", default="bf16", help=f"comma list of {', '.join(WEIGHT_LABELS)} "
                                                      "(bench/megakernel_check.py: compress)")
    ap.add_argument("--hf-batches", action="store_true", help="also run the HF backends at batch > 1")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    bw = copy_bandwidth() * 1e9  # bytes/s
    dev = torch.cuda.get_device_name()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{dev}: copy {bw / 1e9:.0f} GB/s, torch {torch.__version__}", flush=True)
    extra = {}
    for item in filter(None, a.batches.split(";")):
        name, bs = item.split(":")
        extra[name] = [int(b) for b in bs.split(",")]
    rows = []
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def add(name, backend, batch, ms, info=None, weights="bf16", nbytes=None):
        floor = (nbytes if nbytes is not None else SHAPES[name].weight_params() * 2) / bw * 1e3
        r = {"model": name, "backend": backend, "weights": weights, "batch": batch,
             "ms_per_token": None if ms is None else round(ms, 4), "floor_ms": round(floor, 4), "device": dev,
             "date": date}
        if info:
            r.update(info)
        rows.append(r)
        print(f"  {name:14s} {weights:6s} {backend:18s} b{batch:<3d} {('%.4f' % ms) if ms is not None else 'n/a':>9s} ms "
              f"(floor {floor:.4f})" + (f" {info}" if info else ""), flush=True)
        (out_dir / "decode.json").write_text(json.dumps({"device": dev, "copy_GBs": bw / 1e9, "date": date,
                                                         "torch": torch.__version__, "rows": rows}, indent=1))

    names = a.shapes.split(",")
    # fast backends first, then HF (its static-cache compile is the slow part), so a cut-off run keeps the most
    for name in names:
        batches = [1] + extra.get(name, [])
        for weights in a.weights.split(","):
            model = compress(random_model(name, device="cuda"), weights)
            nbytes = weight_bytes(model)
            for b in batches:
                for backend, fn in (("torch-graph", lambda: (torch_graph_ms(model, b), None)),
                                    ("egt-megakernel", lambda: megakernel_ms(model, b))):
                    if backend in skip:
                        continue
                    try:
                        ms, info = fn()
                        add(name, backend, b, ms, info, weights, nbytes)
                    except Exception as e:
                        add(name, backend, b, None, {"error": repr(e)[:300]}, weights, nbytes)
            del model
            torch.cuda.empty_cache()
            write_md(rows, out_dir / "decode.md", dev, bw, date)
    for backend, static in (("hf-eager", False), ("hf-static-compile", True)):
        if backend in skip:
            continue
        for name in names:
            for b in ([1] + extra.get(name, []) if a.hf_batches else [1]):
                try:
                    add(name, backend, b, hf_generate_ms(name, b, static))
                except Exception as e:
                    add(name, backend, b, None, {"error": repr(e)[:300]})
            write_md(rows, out_dir / "decode.md", dev, bw, date)
    write_md(rows, out_dir / "decode.md", dev, bw, date)


def write_md(rows, path, dev, bw, date):
    lines = [f"# Decode benchmark ({dev}, {date})", "",
             f"Copy bandwidth {bw / 1e9:.0f} GB/s; floor = the row's weight bytes as stored (bf16, or INT4 codes + "
             f"fp16 scales/offsets) / that bandwidth. Random weights, prompt "
             f"{PROMPT}. Command: `python bench/decode_bench.py {' '.join(sys.argv[1:])}`.", "",
             "| model | backend | weights | batch | ms/token | floor ms | % of floor | vs torch-graph |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    graph = {(r["model"], r["weights"], r["batch"]): r["ms_per_token"] for r in rows if r["backend"] == "torch-graph"}
    for r in rows:
        ms, w = r["ms_per_token"], r["weights"]
        if ms is None:
            lines.append(f"| {r['model']} | {r['backend']} | {w} | {r['batch']} | failed | {r['floor_ms']:.3f} | | |")
            continue
        g = graph.get((r["model"], w, r["batch"]))
        sp = f"{g / ms:.2f}x" if g else ""
        lines.append(f"| {r['model']} | {r['backend']} | {w} | {r['batch']} | {ms:.3f} | {r['floor_ms']:.3f} | "
                     f"{r['floor_ms'] / ms:.0%} | {sp} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
