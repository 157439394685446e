"""Command-line entry for the MegaKernel planner (CPU only): `python -m egt.megakernel plan|dag ...`.

Contract: `main(argv)` returns an exit code and prints either a short human summary or, with --json, the plan
dict. It never touches a GPU; searching and timing on a GPU is `bench/megakernel_search.py`.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from ..models import SHAPES
from .dag import build_dag, check_phases
from .profiles import PROFILES
from .schedule import INT3, INT4, INT4_NM, MATVEC_OPS
from .search import PlanStore, plan_for


def compressed_kinds(directory: str):
    """(shape, MegaKernel weight kind per op) of an egt compressed-model directory, loaded on the CPU in bf16 (the
    dtype the MegaKernel runs); MegaKernelError names a format it does not read."""
    import torch

    from ..format import load_compressed
    from .runtime import weight_kinds
    model, _, _ = load_compressed(directory, dtype=torch.bfloat16)
    return model.shape, weight_kinds(model, torch.bfloat16)


def main(argv: list[str] | None = None) -> int:
    from ..cli import OneLineErrors
    ap = OneLineErrors(prog="egt megakernel", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="the stored (GPU-timed) or cost-model plan for a shape, batch and profile")
    p.add_argument("--model", default="smollm2-135m", choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--profile", default="h100", choices=sorted(PROFILES))
    p.add_argument("--weights", default="bf16", choices=("bf16", "w4a16", "w4a16-nm", "w3a16"),
                   help="w4a16: egt INT4 in every projection and the LM head; w4a16-nm: N:4 sparse INT4 layers "
                        "(2:4 / 1:4 / dense INT4 per layer) and an INT4 LM head; w3a16: INT3 (or INT4 per layer) in "
                        "every projection and the LM head (issue 9)")
    p.add_argument("--from", dest="model_dir", metavar="DIR", default=None,
                   help="an egt compressed-model directory (egt compress --out DIR): the plan for its shape and its "
                        "per-op weight kinds, instead of --model and --weights (loads it on the CPU)")
    p.add_argument("--json", action="store_true")
    d = sub.add_parser("dag", help="task DAG summary of one decode step")
    d.add_argument("--model", default="smollm2-135m", choices=sorted(SHAPES))
    d.add_argument("--batch", type=int, default=1)
    d.add_argument("--splits", type=int, default=1)
    a = ap.parse_args(argv)
    shape = SHAPES[a.model]
    if a.cmd == "plan":
        if a.model_dir:
            try:
                shape, weights = compressed_kinds(a.model_dir)
            except Exception as e:  # a directory egt cannot load, or a format the MegaKernel does not read
                ap.error(f"--from {a.model_dir}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        elif a.weights in ("bf16", "w3a16"):
            weights = {op: INT3 for op in MATVEC_OPS} if a.weights == "w3a16" else {}
        else:
            weights = {op: INT4 if a.weights == "w4a16" or op == "lm_head" else INT4_NM for op in MATVEC_OPS}
        plan = plan_for(shape, a.batch, a.profile, store=PlanStore(), weights=weights)
        rep = plan.smem_report()
        if a.json:
            print(json.dumps(plan.to_dict(), indent=1, sort_keys=True))
            return 0
        src = f"measured {plan.measured_ms:.3f} ms" if plan.measured_ms else "not yet timed on a GPU"
        print(f"{plan.key()}  hash {plan.plan_hash()}  ({src})")
        print(f"grid {plan.blocks} blocks x {plan.threads} threads; predicted {plan.predicted_ms or float('nan'):.3f} ms")
        print(f"shared memory peak {rep['peak'] / 1024:.1f} KB (without K-split {rep['peak_without_ksplit'] / 1024:.1f} KB)"
              f" of {PROFILES[a.profile].smem_per_block / 1024:.0f} KB")
        print(f"weights streamed with {'bulk copies (sm_90)' if plan.bulk_copy else 'cp.async'}, "
              f"{plan.prefetch_kb} KB prefilled before a wait"
              + (f", {plan.l2_ahead_kb} KB of the op after asked into L2 (sm_90)" if plan.l2_ahead_kb else "")
              + (", gate/up's first stages prefilled during attention" if plan.early_gateup else ""))
        kinds = plan.matvec_op_table()
        for name, s in plan.ops.items():
            print(f"  {name:8s} {kinds[name].weight_kind:10s} TR={s.tr:<3d} TK={s.tk:<5d} stages={s.stages} "
                  f"K-split={s.ksplit} warps/row={s.wpr}")
        print(f"  attention splits<={plan.attn.splits} (>= {plan.attn.min_chunk} rows each) sub-block {plan.attn.sub}, "
              f"{plan.attn.heads_per_item(shape)} query heads per item")
        return 0
    dag = build_dag(shape, batch=a.batch, attn_splits=a.splits)
    ops = Counter(t.op for t in dag.tasks.values())
    bad = check_phases(dag)
    print(f"{a.model} batch {a.batch}: {len(dag.tasks)} tasks, {sum(len(t.deps) for t in dag.tasks.values())} edges, "
          f"{dag.total_weight_bytes() / 1e6:.0f} MB of weights, {len(dag.phases())} phases "
          f"({'phase order respects every edge' if not bad else f'{len(bad)} violations'})")
    for op, n in sorted(ops.items()):
        print(f"  {op:12s} {n}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
