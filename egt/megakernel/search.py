"""Offline schedule search: enumerate, rank by a cost model, and keep plans on disk.

Contract:
- `enumerate_matvec(op, ...)` yields every valid `MatvecSchedule` of one op under the shared-memory limit;
  `cost_matvec` / `cost_attention` / `predict_ms` are the cost model: bytes over bandwidth (with the per-SM rate
  limited by the bytes in flight, Little's law), arithmetic at batch > 1, load imbalance across blocks, pipeline
  steps, activation staging from L2, and one synchronisation latency per grid-wide dependency on the critical path.
- `search(shape, batch, profile)` returns candidate `MegaPlan`s ranked by predicted time (best first). Ops only
  interact through the peak shared memory, so each op keeps its best few schedules and the plans are the
  cheapest combinations that fit.
- `PlanStore` keeps the winner per key (model shape, compression plan, dtype, profile, batch) as JSON in
  bench/results/plans/ (or EGT_MK_PLANS) and returns None for a key never searched.
- `spearman(xs, ys)` is the rank correlation reported between predicted and measured times.
"""
from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

from ..models import ModelShape
from .profiles import GpuProfile, get_profile
from .schedule import (DENSE_TC, INT3, INT4, INT4_NM, INT4_NM_TC, INT4_TC, MAX_RING, TC_KINDS, TC_MAX_BATCH,
                       TC_ROWS_PER_WARP, AttnSchedule, MatvecOp, MatvecSchedule, MegaPlan, attn_check, attn_page_bytes,
                       ceil_div, compression_label, is_dense, matvec_check, matvec_ops, matvec_page_bytes,
                       matvec_ring_bytes, stage_bytes, static_smem_bytes, tc_quad_columns,
                       weight_bytes_per_elem)

NOMINAL_CONTEXT = 256  # context the attention term is costed at (short ad prompts + a few dozen generated tokens)
FMA_PER_SM_PER_US = 128 * 1.6e3  # fp32 lanes x clock (MHz): FMA issue rate of one SM per microsecond


def _tk_options(kp: int, step: int = 8) -> list[int]:
    opts = [t for t in range(64, min(kp, 2048) + 1, step) if kp % t == 0]
    if kp <= 2048 and kp % step == 0:
        opts.append(kp)
    # keep a handful spread over the range: the powers of two and the whole part
    keep = sorted({t for t in opts if (t & (t - 1)) == 0 or t == kp or t in (192, 384, 576, 768)
                   or (step == 32 and t >= 512)})  # INT4: wide stages give every lane a 32-code vector
    return keep or sorted(set(opts))[-3:]


def enumerate_matvec(op: MatvecOp, batch: int, threads: int, blocks: int, smem_limit: int):
    nw = threads // 32
    for wpr in (1, 2, 4, 8, 16):
        if wpr > nw or nw % wpr:
            continue
        for rpw in TC_ROWS_PER_WARP.get(op.weight_kind, (1, 2, 4)):
            tr = (nw // wpr) * rpw
            # accumulators live in registers: a lane's (row, batch) partial sums, or its C fragments (tensor cores)
            regs = ceil_div(batch, 8) * op.nmat * 4 if op.weight_kind in TC_ROWS_PER_WARP else rpw * op.nmat * batch
            if tr > 64 or regs > 64:
                continue
            narrow = op.weight_kind in TC_ROWS_PER_WARP and rpw < 16
            if narrow and wpr != nw:
                continue  # narrow tensor-core rows exist to spread an op's rows over more blocks: one slot a tile
            for ks in (1, 2, 4, 8):
                if op.k % ks:
                    continue
                tks = _tk_options(op.k // ks, 8 if is_dense(op.weight_kind) else 32)
                if (narrow or tr <= 4) and op.k // ks not in tks:
                    # whole-part stages: a narrow tile's quads (128-256 columns) need width, and a tile of a few
                    # rows needs long stages for bytes in flight (qwen2.5-1.5b bf16's down: 4 rows x 4480 columns)
                    tks.append(op.k // ks)
                for tk in tks:
                    for st in (2, 3, 4, 6, 8):
                        s = MatvecSchedule(tr, tk, st, ks, wpr, 0)
                        if matvec_check(op, s, threads, batch):
                            continue
                        need = (matvec_ring_bytes(op, s) + matvec_page_bytes(op, s, batch, threads, blocks)
                                + static_smem_bytes(batch, threads))
                        if need > smem_limit:
                            continue
                        yield s


def cost_matvec(op: MatvecOp, s: MatvecSchedule, batch: int, threads: int, prof: GpuProfile, blocks: int,
                hidden_us: float = 0.0) -> float:
    """Predicted microseconds from the op's dependency release to its last output (one layer)."""
    nt = ceil_div(op.n, s.tr)
    tiles = ceil_div(nt, blocks)
    per_elem = weight_bytes_per_elem(op.weight_kind)
    stage = stage_bytes(op, s.tr, s.tk) if is_dense(op.weight_kind) else op.nmat * s.tr * s.tk * per_elem
    block_bytes = tiles * s.tr * op.k * op.nmat * per_elem
    # A block streams at most its 1/sms share of the bandwidth (traced on an H100: 19-22 GB/s whatever the format,
    # bench/NOTES.md session 8), so an op on fewer blocks than the grid loses bandwidth, and at most what one SM
    # can stream (profile.sm_stream_gbs, which binds on the H200's larger share); less with too few bytes in flight.
    # A cap of 1.6 shares ranked three faster plans below the model's own picks on an H200, and the share alone
    # deeper rings above the stored ones (bench/results/megakernel/ab_h200.md runs 58-63).
    share = prof.bandwidth_gbs * 1e3 / prof.sms  # bytes/us
    pipe = (s.stages - 1) * stage / prof.mem_latency_us
    bw_sm = min(pipe, share, prof.sm_stream_gbs * 1e3)
    t_stream = block_bytes / bw_sm
    # the prefill of the first stages ran during the dependency wait
    prefetched = min((s.stages - 1) * stage, block_bytes)
    t_stream = max(t_stream - min(hidden_us, prefetched / bw_sm), 0.0)
    elems = tiles * s.tr * op.k * op.nmat
    if op.weight_kind in DENSE_TC.values():
        # per 16 x 16 weights: one ldmatrix, an MMA per group of 8 batch rows, the B fragments shared by the
        # matrices (about 4-5 warp instructions, 0.5 lane-ops a weight; not measured). Warps past the k-steps idle.
        ksteps = s.tk // 16
        util = ksteps / (ceil_div(ksteps, s.wpr) * s.wpr)
        ops_per_elem = (0.3 + 0.2 * ceil_div(batch, 8)) / util
    elif is_dense(op.weight_kind):
        ops_per_elem = 2 * batch + 1  # unpack + one FMA per batch row
    elif op.weight_kind == INT4_TC:
        # per weight pair: shift + LOP3 into raw bf16 codes; the MMA does the products on the tensor cores; the
        # scale is folded per run of a scale block (per 64 columns at worst). Warps past the stage's quads idle.
        # Each group of 8 batch rows adds an MMA a k-step on the same registers (not measured: costed as 0.3).
        quads = s.tk // tc_quad_columns(s.rows_per_warp(threads))
        util = quads / (ceil_div(quads, s.wpr) * s.wpr)
        ops_per_elem = (1.1 + 0.3 * (ceil_div(batch, 8) - 1)) / util
    elif op.weight_kind == INT4_NM_TC:
        # as int4-tc per column, not per byte: a 64-column quad costs about as many instructions at 2:4 and 1:4 as
        # dense (activation fragments, scale pairs, fold and a second mma.sp for the kept x; H100 ceiling and ncu,
        # bench/results/megakernel/megakernel_ceiling.md)
        quads = s.tk // 64
        util = quads / (ceil_div(quads, s.wpr) * s.wpr)
        ops_per_elem = 1.0 / util
    elif op.weight_kind == INT4_NM:
        # costed at 2:4: per kept value a code, an index extract and a shared-memory gather + two adds per batch row
        # (the gathered x differs per row, so nothing is shared between rows); half the weights are kept
        ops_per_elem = (4.0 + 3.0 * batch) / 2
    else:
        # INT4: byte-permute + subtract per code, one FMA per batch row, and the activation unpack + group sum
        # (2 per batch row) shared by the rows and matrices a warp holds; lanes past the stage's vectors idle.
        # INT3 takes ~0.15 more logic ops a code to isolate its bytes.
        rpw = s.rows_per_warp(threads)
        vpr, tpr = s.tk // 32, 32 * s.wpr
        util = vpr / (ceil_div(vpr, tpr) * tpr)
        code_ops = 2.55 if op.weight_kind == INT3 else 2.4
        ops_per_elem = (code_ops + batch + 2 * batch / (rpw * op.nmat)) / util
    t_compute = elems * ops_per_elem / FMA_PER_SM_PER_US / (threads / 512) ** 0.25
    steps = tiles * s.ksplit * ((op.k // s.ksplit) // s.tk)
    # Fixed costs a stage and a (tile, K part): above batch 1 a stage's prologue and barriers grow with the batch
    # and every K part of a tile ends in its own cross-warp reduction. Fitted to eleven batch-16 plans of
    # qwen2.5-1.5b w4a16 on an H200 (about 0.5 us a stage and 1 us a tile part, session 21; the old per-tile form
    # ranked gate/up's 16 x 384 stages in two K parts first, 1.18x slower than 16 x 1536 in one).
    t_steps = (steps * (0.04 + 0.03 * (batch - 1))
               + tiles * s.ksplit * (0.25 if s.wpr > 1 else 0.08) * max(1, batch // 4))
    x_bytes = batch * op.k * 2
    t_stage = s.ksplit * 0.5 + x_bytes / (prof.l2_bw_per_sm_gbs * 1e3)
    return max(t_stream, t_compute) + t_steps + t_stage


def cost_attention(shape: ModelShape, a: AttnSchedule, batch: int, prof: GpuProfile, blocks: int,
                   context: int = NOMINAL_CONTEXT, threads: int = 256) -> float:
    se = max(1, min(a.splits, ceil_div(context, a.min_chunk)))  # splits in use at this context
    items = a.pairs(shape, batch) * se
    per_block = ceil_div(items, blocks)
    share = ceil_div(context, se)
    kv_bytes = share * shape.head_dim * 2 * 2  # every head slice of a kv head reads its K/V rows
    bw_sm = min(prof.bandwidth_gbs * 1e3 / min(items, blocks), 1.6 * prof.bandwidth_gbs * 1e3 / prof.sms)
    passes = ceil_div(share, a.sub)
    hpi = a.heads_per_item(shape)
    # scores, softmax and P.V grow with the item's rows x heads x head dim, ~5e-5 us each (traced on an H100,
    # bench/results/megakernel/ab_h100.md run 4: 70 vs 140 rows of 6 x 128, 47 vs 140 of 3 x 64); more lanes a
    # row in q.k (qk_lanes) measured no faster, so they do not enter. Fixed part (traced): q/k/v from L2 with RoPE,
    # softmax barriers, output write, arrival.
    t_item = 4.0 + kv_bytes / bw_sm + passes * 0.8 + 5e-5 * share * hpi * shape.head_dim
    if se == 1:
        return per_block * t_item
    if a.fold:
        # every O block combines the partials while staging: one L2 round trip (~1 us) when the se splits fit in
        # registers at once (4 at <= 256 threads, 2 above), else a pass for the maxima and one per 4 splits; and
        # that for every batch row (qwen2.5-1.5b w4a16, H200: the fold's step 1.11x slower than the last-arriver
        # combine at batch 16 and equal at 8, context 140; 1.23x and 1.17x slower at 1000;
        # bench/results/megakernel/ab_h200_batches.md, session 19 run 8)
        rj = 4 if threads <= 256 else 2
        trips = 1 if se <= rj else ceil_div(se, 8) + ceil_div(se, 4)
        return per_block * t_item + 1.0 * trips * batch
    # last-arriver combine: an atomic, two dependent L2 round trips and a wake-up on the critical path
    return per_block * t_item + 2.5


def predict_ms(plan: MegaPlan, prof: GpuProfile, context: int = NOMINAL_CONTEXT) -> float:
    ops = plan.matvec_op_table()
    b, th, nb = plan.batch, plan.threads, plan.blocks
    sync = prof.sync_us
    # qkv->attn (a spin on flagged words, still a dependency latency), attn->o, o->gateup, gateup->down, down->qkv
    per_layer = sync * 5
    for name in ("qkv", "o", "gateup", "down"):
        per_layer += cost_matvec(ops[name], plan.ops[name], b, th, prof, nb, hidden_us=sync)
    per_layer += cost_attention(plan.model, plan.attn, b, prof, nb, context, threads=th)
    total = plan.model.layers * per_layer + cost_matvec(ops["lm_head"], plan.ops["lm_head"], b, th, prof, nb,
                                                        hidden_us=sync) + 2 * sync + 3.0
    return total / 1e3


def _attn_options(shape: ModelShape, batch: int, threads: int, blocks: int, smem_limit: int, slices: bool = False):
    """slices: also offer head slices (hpi < the GQA group). Measured slower on an H100 at every shape at contexts
    140 and 1000 (bench/results/megakernel/ab_h100.md): a work item's time is its K/V loads and fixed latency, not
    its heads, so slices add items without shortening any; the default keeps whole groups.
    fold (0, 1) is offered to the cost model (fold measured faster on every shape, runs 4 and 5 of
    bench/results/megakernel/ab_h100.md). qk_lanes > 1 (several lanes per cache row in q.k) is not offered:
    measured equal or slower on every shape (run 4); it stays a plan option."""
    group = shape.heads // shape.kv_heads
    hpis = [h for h in range(1, group + 1) if group % h == 0] if slices else [group]
    for hpi, splits, fold, ql in itertools.product(hpis, (1, 2, 4, 8, 16, 32), (0, 1), (1,)):
        pairs = AttnSchedule(hpi=hpi).pairs(shape, batch)
        if pairs * splits > 4 * blocks or (splits > 1 and pairs * splits // 2 >= blocks):
            continue
        # one split never helps when the grid has room for more: a larger S with min_chunk above the context
        # runs the same single item at short contexts and still splits long ones
        if splits == 1 and pairs * 2 <= blocks:
            continue
        if fold and splits == 1:
            continue
        # min_chunk below 128 measured slower at contexts 140-1500, with the last-arriver combine (run 3) and with
        # the folded one (run 5: more partials than fit in registers at once), so it is not offered
        for sub, minc in itertools.product((64, 128, 256), (128, 256, 512)):
            a = AttnSchedule(splits, sub, 0, minc, hpi, ql, fold)
            if attn_check(shape, a, threads):
                continue
            if attn_page_bytes(shape, a, threads) + static_smem_bytes(batch, threads) > smem_limit:
                continue
            yield a


CORE_PATHS = ("cuda-core", "tensor-core", "auto")  # where a format with a tensor-core kind runs
DENSE_TC_FROM = 4  # `auto` runs dense ops on tensor cores from this batch on (see dense_path)
INT4_RANKED_UPTO = 2  # `auto` ranks INT4's two kinds up to this batch, tensor cores above it (int4_variants)


def deepen_int4_rings(plan: MegaPlan, smem_limit: int) -> MegaPlan:
    """Give every INT4 op a ring deep enough to hold the block's whole share of the op (up to MAX_RING), and
    prefetch all of it before the dependency wait, as far as shared memory allows.

    Why: an INT4 block share is only 9-125 KB, 4-5 stages of ~25 KB; with the cost model's 3-4 stages, too few
    bytes are in flight to cover the DRAM latency (traced on an H200: gate/up at ~1.1 TB/s). With the whole share
    in flight during the grid-wide wake-up, the op starts on weights already in shared memory. $EGT_MK_INT4_RING
    = shallow keeps the cost model's rings (the A/B in bench/results/megakernel/).
    """
    if os.environ.get("EGT_MK_INT4_RING", "deep") == "shallow" or not any(
            not is_dense(k) for k in plan.weights.values()):
        return plan
    ops = plan.matvec_op_table()
    deep = dict(plan.ops)
    prefetch = plan.prefetch_kb * 1024
    for name, op in ops.items():
        if is_dense(op.weight_kind):
            continue
        s = deep[name]
        share = ceil_div(ceil_div(op.n, s.tr), plan.blocks) * s.ksplit * (op.k // s.ksplit // s.tk)
        for st in range(min(MAX_RING, share + 1), s.stages, -1):
            trial = MegaPlan(**{**plan.__dict__, "ops": {**deep, name: MatvecSchedule(s.tr, s.tk, st, s.ksplit,
                                                                                      s.wpr, s.rot)}})
            if not trial.check(smem_limit):
                deep[name] = trial.ops[name]
                break
        prefetch = max(prefetch, (deep[name].stages - 1) * stage_bytes(op, s.tr, s.tk))
    return MegaPlan(**{**plan.__dict__, "ops": deep, "prefetch_kb": ceil_div(prefetch, 1024)})


def int4_variants(weights: dict[str, str], batch: int, dtype: str, int4_path: str | None = None) -> dict[str, str]:
    """Kernel variant of each INT4 or N:4 sparse INT4 op: `cuda-core` (any batch), `tensor-core` (where it can run:
    bf16, batch <= 16), or `auto`: up to batch INT4_RANKED_UPTO marked "auto:<kind>" (the
    search ranks both per op), above that the tensor-core kind. Default: $EGT_MK_INT4 or auto. At batch 1 auto's plan
    took 1-14% less time a step than the CUDA-core one at every INT4 key of the four shapes on an H200
    (bench/results/megakernel/ab_h200.md run 58), and the stored H100 plans, chosen by measurement, run most ops on
    tensor cores. Above batch 2 every op on tensor cores was 1.7-2.6x faster than every op on CUDA cores
    (qwen2.5-1.5b w4a16 and w4a16-mix, batch 4-16, H200: ab_h200_batches.md), and the cost model's per-op choice at
    batch 8 of w4a16-mix (some N:4 ops on CUDA cores) took 1.48x the time of the all-tensor-core plan."""
    path = int4_path or os.environ.get("EGT_MK_INT4", "auto")
    if path not in CORE_PATHS:
        raise ValueError(f"INT4 path must be one of {CORE_PATHS}, got {path!r}")
    out = dict(weights)
    for k, v in weights.items():
        if v in TC_KINDS and dtype == "bf16" and batch <= TC_MAX_BATCH[TC_KINDS[v]] and path != "cuda-core":
            out[k] = f"auto:{v}" if path == "auto" and batch <= INT4_RANKED_UPTO else TC_KINDS[v]
    return out


def dense_path(batch: int, path: str | None = None) -> str:
    """Where dense (bf16/fp16) ops run: `cuda-core`, `tensor-core` (csrc DenseTC, batch <= 16), or `auto`: tensor
    cores from batch DENSE_TC_FROM on. Measured on qwen2.5-1.5b (H200, bench/results/megakernel/ab_h200_batches.md):
    every op on tensor cores made the step 1.15x faster at batch 4 and 1.44x at 16, and 1.10x slower at batch 2. Not
    ranked by the cost model, which put gate/up, down and the LM head on CUDA cores at batch 4. At batch 1 the
    CUDA-core loop keeps up with 5x an SM's share of the copy bandwidth (megakernel_ceiling.md). Default:
    $EGT_MK_DENSE or auto."""
    path = path or os.environ.get("EGT_MK_DENSE", "auto")
    if path not in CORE_PATHS:
        raise ValueError(f"dense path must be one of {CORE_PATHS}, got {path!r}")
    if batch > TC_MAX_BATCH[DENSE_TC["dense-bf16"]] or (path == "auto" and batch < DENSE_TC_FROM):
        return "cuda-core"
    return "tensor-core" if path == "auto" else path


def search(shape: ModelShape, batch: int = 1, profile: str | GpuProfile = "h100", dtype: str = "bf16",
           keep_per_op: int = 3, max_plans: int = 8, thread_options=None,
           weights: dict[str, str] | None = None, int4_path: str | None = None, attn_filter=None,
           attn_slices: bool = False, bulk_copy: bool = False, dense: str | None = None) -> list[MegaPlan]:
    """Candidate plans, best predicted first; each carries predicted_ms and its smem report.
    weights: op -> weight kind where not dense (e.g. {"qkv": "int4", ...}, see schedule.matvec_ops).
    int4_path: how INT4 ops run (see `int4_variants`); dense: how dense ops run (see `dense_path`). Where either is
    `auto` and no plan with its tensor-core kinds fits, the search falls back to CUDA cores for that format (at
    batch 16 in ada-l20's 99 KB: dense bf16); INT4 also where the all-CUDA-core plan is predicted faster (ada-l20,
    qwen2.5-1.5b at batch 8-16). A/B options: attn_filter keeps only the
    attention schedules it accepts; attn_slices offers head slices (`_attn_options`); bulk_copy sets the plan's copy
    path."""
    args = dict(locals())  # the parameters, passed on to _search with `dense` and `int4_path` resolved
    core = dense_path(batch, args.pop("dense"))
    int4 = args.pop("int4_path") or os.environ.get("EGT_MK_INT4", "auto")
    auto_dense = core == "tensor-core" and (dense or os.environ.get("EGT_MK_DENSE", "auto")) == "auto"
    tries = [(int4, core)] + ([(int4, "cuda-core")] if auto_dense else [])
    if int4 == "auto":
        tries.append(("cuda-core", "cuda-core" if auto_dense else core))
    for int4_try, dense_try in tries:
        plans = _search(**args, int4_path=int4_try, dense=dense_try)
        if plans:
            break
    else:
        return []
    if int4_try == "auto" and batch > INT4_RANKED_UPTO and weights:
        # above INT4_RANKED_UPTO `auto` means tensor cores for every INT4 op; where shared memory forces that plan
        # into deep K-splits (ada-l20's 99 KB at batch 8-16), the all-CUDA-core plan is predicted faster and is taken
        # (on the H100 and H200 profiles the tensor-core plan is predicted faster for w4a16 and w4a16-mix of every
        # shape at batch 4-16, as measured on the H200)
        cores = _search(**args, int4_path="cuda-core", dense=dense_try)
        if cores and cores[0].predicted_ms < plans[0].predicted_ms:
            return cores
    return plans


def _search(shape, batch, profile, dtype, keep_per_op, max_plans, thread_options, weights, int4_path, attn_filter,
            attn_slices, bulk_copy, dense) -> list[MegaPlan]:
    prof = get_profile(profile)
    blocks = prof.sms
    wanted = int4_variants(dict(weights or {}), batch, dtype, int4_path)
    weights = {k: v.removeprefix("auto:") for k, v in wanted.items()}
    if thread_options is None:
        # 512 threads cap registers at 128 and the INT4 loops spill a little (ptxas, sm_90), which the cost model
        # does not see: 256 unless asked. bench/megakernel_search.py times both; 512 won for the sparse INT4 plans
        # of the three larger shapes on an H100 (bench/results/plans/)
        thread_options = (256,) if weights else (256, 512)
    plans: list[MegaPlan] = []
    for threads in thread_options:
        ops = matvec_ops(shape, f"dense-{dtype}", weights)
        best: dict[str, list[tuple[float, MatvecSchedule]]] = {}
        kind_of: dict[tuple[str, MatvecSchedule], str] = {}
        for name, op in ops.items():
            variants = [op]
            if wanted.get(name, "").startswith("auto:"):
                variants = [op, MatvecOp(op.name, op.n, op.k, op.nmat, TC_KINDS[op.weight_kind])]
            elif is_dense(op.weight_kind) and dense == "tensor-core":
                variants = [MatvecOp(op.name, op.n, op.k, op.nmat, DENSE_TC[op.weight_kind])]
            scored = []
            for var in variants:
                for s in enumerate_matvec(var, batch, threads, blocks, prof.smem_per_block):
                    scored.append((cost_matvec(var, s, batch, threads, prof, blocks, prof.sync_us), s))
                    kind_of[(name, s)] = var.weight_kind
            scored.sort(key=lambda x: (x[0], -x[1].stages, x[1].tk))
            # ops only share the peak (max ring + max page), so keep the best schedule of several smem tiers:
            # the cheapest combination that fits is then among the products
            picks: list[tuple[float, MatvecSchedule]] = []
            for tier in (0.35, 0.5, 0.7, 1.0):
                budget = tier * prof.smem_per_block
                for c, s in scored:
                    if matvec_ring_bytes(op, s) + matvec_page_bytes(op, s, batch, threads, blocks) <= budget:
                        if all(s != q for _, q in picks):
                            picks.append((c, s))
                        break
            best[name] = sorted(picks, key=lambda x: x[0])[:max(keep_per_op, 4)]
        ascored = sorted(((cost_attention(shape, a, batch, prof, blocks), a)
                          for a in _attn_options(shape, batch, threads, blocks, prof.smem_per_block, attn_slices)
                          if attn_filter is None or attn_filter(a)),
                         key=lambda x: (x[0], -x[1].splits))
        attn = ascored[:2]
        for tier in (0.25, 0.4, 0.6):  # the attention page aliases the matvec page: keep a small one too
            for c, a in ascored:
                if attn_page_bytes(shape, a, threads) <= tier * prof.smem_per_block:
                    if all(a != q for _, q in attn):
                        attn.append((c, a))
                    break
        if any(not v for v in best.values()) or not attn:
            continue
        names = list(ops)
        for combo in itertools.product(*(range(len(best[n])) for n in names), range(len(attn))):
            sched, kinds = {}, dict(weights)
            for i, n in enumerate(names):
                s = best[n][combo[i]][1]
                if kind_of[(n, s)] != f"dense-{dtype}":
                    kinds[n] = kind_of[(n, s)]
                # rotate each op's tile assignment so the blocks carrying an extra tile change from op to op
                sched[n] = MatvecSchedule(s.tr, s.tk, s.stages, s.ksplit, s.wpr, (i * blocks) // len(names))
            plan = MegaPlan(model=shape, batch=batch, profile=prof.name, dtype=dtype,
                            compression=compression_label({k: v for k, v in kinds.items() if not is_dense(v)}),
                            weights=kinds, threads=threads, blocks=blocks, ops=sched, attn=attn[combo[-1]][1],
                            bulk_copy=bulk_copy)
            if plan.check(prof.smem_per_block):
                continue
            plan = deepen_int4_rings(plan, prof.smem_per_block)
            plan.predicted_ms = predict_ms(plan, prof)
            plans.append(plan)
    plans.sort(key=lambda p: p.predicted_ms)
    # drop near-duplicates (same predicted time and grid) to keep the candidates diverse
    out, seen = [], set()
    for p in plans:
        sig = (p.threads, round(p.predicted_ms, 5))
        if sig in seen:
            continue
        seen.add(sig)
        p.smem_report()
        out.append(p)
        if len(out) >= max_plans:
            break
    return out


def search_spread(shape: ModelShape, batch: int = 1, profile: str | GpuProfile = "h100", dtype: str = "bf16",
                  quantiles=(0.0, 0.05, 0.15, 0.3, 0.5, 0.75), threads: int = 512) -> list[MegaPlan]:
    """Plans whose every op takes the schedule at the given quantile of its own cost ranking: a spread from the
    predicted best to clearly worse, used to measure how well the cost model ranks schedules."""
    prof = get_profile(profile)
    blocks = prof.sms
    ops = matvec_ops(shape, f"dense-{dtype}")
    ranked = {}
    for name, op in ops.items():
        sc = [(cost_matvec(op, s, batch, threads, prof, blocks, prof.sync_us), s)
              for s in enumerate_matvec(op, batch, threads, blocks, prof.smem_per_block // 2)]
        ranked[name] = [s for _, s in sorted(sc, key=lambda x: (x[0], -x[1].stages, x[1].tk))]
    attn = sorted(((cost_attention(shape, a, batch, prof, blocks), a)
                   for a in _attn_options(shape, batch, threads, blocks, prof.smem_per_block // 2)), key=lambda x: x[0])
    out = []
    for q in quantiles:
        sched = {}
        for i, (name, lst) in enumerate(ranked.items()):
            s = lst[min(len(lst) - 1, int(q * len(lst)))]
            sched[name] = MatvecSchedule(s.tr, s.tk, s.stages, s.ksplit, s.wpr, (i * blocks) // len(ops))
        a = attn[min(len(attn) - 1, int(q * len(attn)))][1]
        plan = MegaPlan(model=shape, batch=batch, profile=prof.name, dtype=dtype, threads=threads, blocks=blocks,
                        ops=sched, attn=a)
        if plan.check(prof.smem_per_block):
            continue
        plan.predicted_ms = predict_ms(plan, prof)
        plan.smem_report()
        plan.notes = {"quantile": q}
        out.append(plan)
    return out


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2.0
            i = j + 1
        return r
    if len(xs) < 2:
        return float("nan")
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    vy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (vx * vy) if vx and vy else float("nan")


class PlanStore:
    """Winner plans as JSON files, one per key."""

    def __init__(self, root: str | os.PathLike | None = None):
        default = Path(__file__).resolve().parents[2] / "bench" / "results" / "plans"
        self.root = Path(root or os.environ.get("EGT_MK_PLANS") or default)

    def _path(self, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in key)
        return self.root / f"{safe}.json"

    def get(self, key: str) -> MegaPlan | None:
        p = self._path(key)
        if not p.exists():
            return None
        return MegaPlan.from_dict(json.loads(p.read_text()))

    def put(self, plan: MegaPlan) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        p = self._path(plan.key())
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(plan.to_dict(), indent=1, sort_keys=True))
        os.replace(tmp, p)
        return p


def plan_for(shape: ModelShape, batch: int = 1, profile: str | GpuProfile = "h100", dtype: str = "bf16",
             store: PlanStore | None = None, weights: dict[str, str] | None = None,
             int4_path: str | None = None) -> MegaPlan:
    """The stored winner for this key, else the cost model's best (not yet timed on a GPU). An explicit or
    $EGT_MK_INT4 INT4 path, or $EGT_MK_DENSE, skips the store (it asks for a variant, not the winner)."""
    prof = get_profile(profile)
    store = store or PlanStore()
    weights = dict(weights or {})
    probe = MegaPlan(model=shape, batch=batch, profile=prof.name, dtype=dtype, blocks=prof.sms,
                     compression=compression_label(weights), weights=weights)
    asked = int4_path or os.environ.get("EGT_MK_INT4") or os.environ.get("EGT_MK_DENSE")
    found = None if asked else store.get(probe.key())
    if found is not None:
        return found
    cands = search(shape, batch, prof, dtype, max_plans=1, weights=weights, int4_path=int4_path)
    if not cands:
        raise ValueError(f"no schedule of {shape.name} at batch {batch} fits profile {prof.name}")
    return cands[0]
