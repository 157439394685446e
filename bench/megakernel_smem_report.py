"""Peak shared memory per block of the best plan per (shape, weights, batch, profile), with and without K-split
(CPU only). weights: bf16, w4a16 (every matvec op in the MegaKernel's INT4 chunk layout, issue 9), w4a16-nm
(N:4 sparse INT4 layers, kind int4-nm, with an INT4 LM head; its stage is sized for the densest layer) and w3a16
(kind int3 everywhere; its stage has the INT4 stride, so an INT4 layer fits the same ring).

    python bench/megakernel_smem_report.py > bench/results/megakernel/smem_report.md
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from egt.megakernel.profiles import PROFILES  # noqa: E402
from egt.megakernel.schedule import MatvecSchedule, MegaPlan  # noqa: E402
from egt.megakernel.search import search  # noqa: E402
from egt.models import SHAPES  # noqa: E402

W4 = {op: "int4" for op in ("qkv", "o", "gateup", "down", "lm_head")}
NM = {**{op: "int4-nm" for op in ("qkv", "o", "gateup", "down")}, "lm_head": "int4"}
W3 = {op: "int3" for op in W4}
print("| model | weights | batch | profile | limit KB | peak KB (K-split) | peak KB (no K-split) | fits without K-split | "
      "K-split ops | predicted ms |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for name, shape in SHAPES.items():
    for wname, weights in (("bf16", {}), ("w4a16", W4), ("w4a16-nm", NM), ("w3a16", W3)):
        for batch in (1, 16):
            for prof in PROFILES.values():
                plans = search(shape, batch, prof, max_plans=1, weights=weights)
                if not plans:
                    print(f"| {name} | {wname} | {batch} | {prof.name} | {prof.smem_per_block // 1024} | no plan fits | | | | |")
                    continue
                p = plans[0]
                flat = MegaPlan(**{**p.__dict__, "ops": {k: MatvecSchedule(v.tr, v.tk, v.stages, 1, v.wpr, v.rot)
                                                          for k, v in p.ops.items()}})
                fits = not flat.check(prof.smem_per_block)
                ks = ", ".join(f"{k}:{v.ksplit}" for k, v in p.ops.items() if v.ksplit > 1) or "-"
                print(f"| {name} | {wname} | {batch} | {prof.name} | {prof.smem_per_block / 1024:.0f} | {p.smem['peak'] / 1024:.1f} | "
                      f"{p.smem['peak_without_ksplit'] / 1024:.1f} | {'yes' if fits else 'no'} | {ks} | {p.predicted_ms:.3f} |")
