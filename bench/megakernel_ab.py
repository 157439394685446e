"""A/B of MegaKernel variants in one run on one card: each variant is the search's best plan under a constraint
(INT4 kernel path, attention fields), checked against the torch reference and timed.

    python bench/megakernel_ab.py [--shapes a,b] [--weights bf16,w4a16] [--batch N] [--variants SPEC] [--build-only]

SPEC: `name:key=value,...;name2:...`. Keys: `int4` and `dense` (cuda-core | tensor-core | auto: where INT4 and
dense bf16 ops run), `copy=bulk` (sm_90 bulk copies),
`threads` (block size, e.g. 512 for INT4 kinds, whose default is 256), `code=unrolled` (MegaPlan.compact_code off),
`slices=1` (offer attention head slices), `stored=1` (the PlanStore's plan for this key, skipped if none;
`stored=PROFILE` takes the plan stored for that profile, e.g. an H100 plan timed on an H200, which needs the same
SM count and fitting shared memory; with
`copy=bulk|cp.async`, `pf=KB`, `l2=KB` and `early=0|1` it gets that copy path, weight prefetch depth, L2
look-ahead and early gate/up prefill (MegaPlan.early_gateup), and with
`OP=tr/tk/stages/ksplit/wpr` (OP one of qkv, o, gateup, down, lm_head) that op's matvec schedule), and
AttnSchedule fields `hpi` (0 = the whole GQA group), `splits`, `sub`, `min_chunk`, `qk_lanes`, `fold` (an exact
value, or `>=N` / `<=N`). A variant's plan is the cost model's best among the schedules that satisfy its constraints;
with `from=NAME` it is instead the plan of the earlier variant NAME (same shape and weights) with the given
AttnSchedule fields set to exact values and `OP=tr/tk/stages/ksplit/wpr` op schedules, everything else unchanged
(a one-option A/B). `csrc=DIR` builds the
variant's kernel from the opcode headers in DIR (another code state's egt/megakernel/csrc, e.g. exported with
`git archive`), so a kernel change is A/B-tested in one run on one card: `base:csrc=DIR;new:` (same plan).
`--trace NAMES` also runs a traced build of those variants (layer 2, context 140) and prints where the layer's
time goes, as bench/megakernel_trace.py does.
Every plan, check and timing is at batch N (default 1).
Correctness per variant: logits at contexts 1 and 1000 against the torch engine (bf16 weights: the bf16 torch
path; INT4: the same QuantLinear modules in float32), relative error < megakernel_check.REL_TOL.
Timing: ms per decode step at contexts ~140 and ~1000 (one launch per step, device-fed tokens, median of 5 x 100).
Writes $OUT/megakernel_ab.json and .md. `--build-only` compiles the variants' kernels into the build cache and
exits (run it where nvcc is, then carry the cache).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from egt.models import SHAPES  # noqa: E402
from egt.megakernel.codegen import build  # noqa: E402
from egt.megakernel.profiles import get_profile  # noqa: E402
from bench.megakernel_check import plan_weights  # noqa: E402
from egt.megakernel.schedule import MatvecSchedule, MegaPlan, compression_label  # noqa: E402
from egt.megakernel.search import PlanStore, predict_ms, search  # noqa: E402

DEFAULT_VARIANTS = ("default;minc128:min_chunk=>=128;stored:stored=1;bulk:copy=bulk;"
                    "tc:int4=tensor-core;tc-bulk:int4=tensor-core,copy=bulk")


def parse_variants(spec: str) -> list[tuple[str, dict]]:
    out = []
    for item in filter(None, spec.split(";")):
        name, _, rest = item.partition(":")
        kv = dict(p.split("=", 1) for p in filter(None, rest.split(",")))
        out.append((name, kv))
    return out


def _ok(value: int, cond: str) -> bool:
    if cond.startswith(">="):
        return value >= int(cond[2:])
    if cond.startswith("<="):
        return value <= int(cond[2:])
    return value == int(cond)


ATTN_FIELDS = ("hpi", "splits", "sub", "min_chunk", "qk_lanes", "fold")
OP_NAMES = ("qkv", "o", "gateup", "down", "lm_head")


def variant_plan(shape, weights_label: str, kv: dict, prof, batch: int = 1, earlier: dict | None = None):
    """The best plan under the variant's constraints, or None when the variant does not apply (INT4 path on bf16).
    earlier: variant name -> plan of this shape and weights, for `from=NAME`."""
    weights = plan_weights(weights_label)
    if "int4" in kv and "int4" not in weights.values():
        return None
    if "from" in kv:
        src = (earlier or {}).get(kv["from"])
        if src is None:
            return None
        attn = dataclasses.replace(src.attn, **{k: int(kv[k]) for k in ATTN_FIELDS if k in kv})
        ops = {name: MatvecSchedule(*map(int, kv[name].split("/")), s.rot) if name in kv else s
               for name, s in src.ops.items()}
        plan = MegaPlan(**{**src.__dict__, "attn": attn, "ops": ops, "smem": {}, "predicted_ms": None,
                           "measured_ms": None})
        errs = plan.check(prof.smem_per_block)
        if errs:
            raise ValueError(f"{kv}: {errs}")
        plan.predicted_ms = predict_ms(plan, prof)
        plan.smem_report()
        return plan
    group = shape.heads // shape.kv_heads
    want = {k: (str(group) if k == "hpi" and kv[k] == "0" else kv[k])
            for k in ATTN_FIELDS if k in kv}

    def accept(a) -> bool:
        return all(_ok(a.heads_per_item(shape) if k == "hpi" else getattr(a, k), c) for k, c in want.items())

    if kv.get("stored"):
        source = prof.name if kv["stored"] == "1" else get_profile(kv["stored"]).name
        probe = MegaPlan(model=shape, batch=batch, profile=source, blocks=prof.sms,
                         compression=compression_label(weights), weights=weights)
        plan = PlanStore().get(probe.key())
        if plan is not None and source != prof.name:
            if plan.blocks != prof.sms or plan.check(prof.smem_per_block):
                raise ValueError(f"stored={source}: its plan does not fit profile {prof.name}")
            # the same schedule, keyed by (and costed for) the card it runs on
            plan = MegaPlan(**{**plan.__dict__, "profile": prof.name, "smem": {}, "predicted_ms": None,
                               "measured_ms": None})
            plan.predicted_ms = predict_ms(plan, prof)
            plan.smem_report()
        if plan is not None and {"copy", "pf", "l2", "early", *OP_NAMES} & kv.keys():  # the stored plan with changes
            ops = {name: MatvecSchedule(*map(int, kv[name].split("/")), plan.ops[name].rot) if name in kv else s
                   for name, s in plan.ops.items()}
            plan = MegaPlan(**{**plan.__dict__, "bulk_copy": kv.get("copy", "bulk" if plan.bulk_copy else "") == "bulk",
                               "prefetch_kb": int(kv.get("pf", plan.prefetch_kb)),
                               "l2_ahead_kb": int(kv.get("l2", plan.l2_ahead_kb)),
                               "early_gateup": bool(int(kv.get("early", plan.early_gateup))), "ops": ops, "smem": {},
                               "predicted_ms": None, "measured_ms": None})
            errs = plan.check(prof.smem_per_block)
            if errs:
                raise ValueError(f"{kv}: " + "; ".join(errs))
            plan.smem_report()
        return plan
    plans = search(shape, batch, prof, "bf16", max_plans=1, weights=weights, int4_path=kv.get("int4"),
                   dense=kv.get("dense"),
                   attn_filter=accept, attn_slices=bool(kv.get("slices")) or kv.get("hpi", "0") != "0",
                   bulk_copy=kv.get("copy") == "bulk",
                   thread_options=(int(kv["threads"]),) if "threads" in kv else None)
    if not plans:
        raise ValueError(f"no plan satisfies {kv}")
    if kv.get("code") == "unrolled":
        plans[0].compact_code = False
    return plans[0]


TRACE_LAYER = 2


@contextlib.contextmanager
def code_state(csrc: str):
    """Build and load kernels from the opcode headers in `csrc` ("" = this checkout's) inside the block."""
    old = os.environ.pop("EGT_MK_CSRC", None)
    if csrc:
        if not (Path(csrc) / "mk_kernel.cuh").exists():
            raise FileNotFoundError(f"csrc={csrc}: no mk_kernel.cuh there")
        os.environ["EGT_MK_CSRC"] = str(Path(csrc).resolve())
    try:
        yield
    finally:
        os.environ.pop("EGT_MK_CSRC", None)
        if old is not None:
            os.environ["EGT_MK_CSRC"] = old


def trace_points(model, plan, ctx: int = 140, batch: int = 1) -> list[str]:
    """Earliest / median / latest block at each stamped point of layer TRACE_LAYER (bench/megakernel_trace.py)."""
    from bench.megakernel_trace import POINTS  # stamp index -> name
    from egt.megakernel.runtime import MegaKernelDecoder
    dec = MegaKernelDecoder(model, batch=batch, plan=plan, trace_layer=TRACE_LAYER)
    cache = model.setup_cache(batch, ctx + 64)
    dec.set_inputs([1] * batch, [ctx] * batch, [0] * batch, ctx)
    for _ in range(10):
        dec.launch(cache, logits=False, advance=True)
    dec.check()
    t = dec.trace.cpu().double()
    rel = (t - t[:, 0].min()) / 1e3
    out = []
    for i, pt in POINTS.items():
        col = rel[t[:, i] > 0, i].sort().values
        if len(col):
            out.append(f"  {pt:18s} min {col[0]:7.2f}  med {col[len(col) // 2]:7.2f}  max {col[-1]:7.2f}  "
                       f"({len(col)} blocks)")
    del dec, cache
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--weights", default="bf16,w4a16")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--profile", default=None, help="plan profile (default: this GPU; h100 with --build-only)")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--trace", default="", help="variant names to also trace (layer 2, context 140)")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    a = ap.parse_args()
    prof = get_profile(a.profile or ("h100" if a.build_only else None))
    variants = parse_variants(a.variants)
    jobs = []
    for name in a.shapes.split(","):
        for w in a.weights.split(","):
            earlier = {}
            for vname, kv in variants:
                p = variant_plan(SHAPES[name], w, kv, prof, batch=a.batch, earlier=earlier)
                if p is not None:
                    jobs.append((name, w, vname, kv, p))
                    earlier[vname] = p
    t0 = time.time()
    traced = set(filter(None, a.trace.split(",")))
    # one parallel build pass per code state: $EGT_MK_CSRC selects the headers (read by the build itself)
    for csrc in sorted({j[3].get("csrc", "") for j in jobs}):
        builds = [(j[4], None) for j in jobs if j[3].get("csrc", "") == csrc]
        builds += [(j[4], TRACE_LAYER) for j in jobs if j[2] in traced and j[3].get("csrc", "") == csrc]
        with code_state(csrc), ThreadPoolExecutor(max(1, min(16, os.cpu_count() or 2))) as ex:
            list(ex.map(lambda b: build(b[0], trace_layer=b[1]), builds))
    print(f"built {len(jobs)} plans in {time.time() - t0:.0f} s", flush=True)
    if a.build_only:
        return

    import torch

    from bench.megakernel_check import REL_TOL, clone, compress, prefill, ref_step, rel, weight_bytes
    from bench.megakernel_search import time_decoder
    from egt.megakernel.runtime import MegaKernelDecoder
    from egt.models import random_model

    gen = torch.Generator(device="cuda").manual_seed(0)
    B = a.batch
    out = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "command": "python bench/megakernel_ab.py " + " ".join(sys.argv[1:]), "rel_tol": REL_TOL, "rows": []}
    current = None
    for name, w, vname, kv, plan in jobs:
        if current != (name, w):
            model = compress(random_model(name, device="cuda"), w)
            ref_model = copy.deepcopy(model).float() if w != "bf16" else model
            nbytes = weight_bytes(model)
            current = (name, w)
        row = {"model": name, "weights": w, "batch": B, "variant": vname, "constraints": kv, "plan_hash": plan.plan_hash(),
               "attn": vars(plan.attn), "ops": {k: vars(v) for k, v in plan.ops.items()}, "weight_bytes": nbytes,
               "smem_peak": plan.smem.get("peak"), "plan": plan.to_dict()}
        try:
            with code_state(kv.get("csrc", "")):
                dec = MegaKernelDecoder(model, batch=B, plan=plan)
            errs = []
            for ctx in (1, 1000):
                cache = model.setup_cache(B, ctx + 8)
                rcache = cache if ref_model is model else ref_model.setup_cache(B, ctx + 8)
                if ctx > 1:
                    toks = torch.randint(0, model.shape.vocab, (B, ctx - 1), device="cuda", generator=gen)
                    prefill(model, cache, toks)
                    if rcache is not cache:
                        prefill(ref_model, rcache, toks)
                tok = torch.randint(0, model.shape.vocab, (B,), device="cuda", generator=gen)
                mk_cache = clone(cache)
                ref = ref_step(ref_model, rcache, tok, ctx - 1)
                _, lg = dec.step(tok, [ctx - 1] * B, [0] * B, ctx - 1, mk_cache)
                errs.append(rel(lg, ref))
                del cache, rcache, mk_cache
            row["rel_err"] = errs
            row["pass"] = all(e < REL_TOL for e in errs)
            row["ms_ctx140"], _ = time_decoder(dec, model, B, ctx=140)
            row["ms_ctx1000"], _ = time_decoder(dec, model, B, ctx=1000)
            del dec
            if vname in traced:
                try:  # a failing trace does not fail the variant's checks and timings
                    with code_state(kv.get("csrc", "")):
                        row["trace"] = trace_points(model, plan, batch=B)
                    print(f"== trace {name} {w} {vname} layer {TRACE_LAYER} ctx 140 (us from earliest qkv-wait start)")
                    print("\n".join(row["trace"]), flush=True)
                except Exception as e:
                    row["trace_error"] = repr(e)[:300]
        except Exception as e:  # one failing variant must not hide the others' figures
            row["error"] = repr(e)[:500]
            row["pass"] = False
        print(f"{name:14s} {w:6s} {vname:16s} attn hpi={plan.attn.hpi} S={plan.attn.splits} minc={plan.attn.min_chunk} "
              f"sub={plan.attn.sub} ql={plan.attn.qk_lanes} fold={plan.attn.fold} | rel {row.get('rel_err')} | ms@140 {row.get('ms_ctx140')} "
              f"ms@1000 {row.get('ms_ctx1000')} {row.get('error', '')}", flush=True)
        out["rows"].append(row)
        torch.cuda.empty_cache()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "megakernel_ab.json").write_text(json.dumps(out, indent=1))
    lines = [f"# MegaKernel A/B ({out['device']}, {out['date']}, batch {a.batch})", "", f"Command: `{out['command']}`", "",
             "| model | weights | variant | attention (hpi/S/min_chunk/sub/qk_lanes/fold) | rel err ctx 1, 1000 | pass | "
             "ms ctx 140 | ms ctx 1000 |", "|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        at = r["attn"]
        errs = ", ".join(f"{e:.2e}" for e in r.get("rel_err", []))
        lines.append(f"| {r['model']} | {r['weights']} | {r['variant']} | {at['hpi']}/{at['splits']}/{at['min_chunk']}/"
                     f"{at['sub']}/{at.get('qk_lanes', 1)}/{at.get('fold', 0)} | {errs} | {r['pass']} | {r.get('ms_ctx140', r.get('error', ''))} | "
                     f"{r.get('ms_ctx1000', '')} |")
    (Path(a.out) / "megakernel_ab.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
