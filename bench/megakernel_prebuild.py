"""Build every MegaKernel binary a bench run needs, in parallel (nvcc is single-threaded per TU)."""
import sys, time
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, ".")
from egt.models import SHAPES
from egt.megakernel.search import plan_for
from egt.megakernel.codegen import build
from egt.megakernel.profiles import get_profile
W4 = {op: "int4" for op in ("qkv", "o", "gateup", "down", "lm_head")}
jobs = []
for spec in sys.argv[1:]:
    name, bs, ws, prof = spec.split(":")
    for b in bs.split(","):
        for w in ws.split(","):
            jobs.append((name, int(b), W4 if w == "w4a16" else {}, prof))
def one(j):
    name, b, w, prof = j
    t = time.time()
    p = plan_for(SHAPES[name], b, get_profile(prof), weights=w)
    lib = build(p)
    return f"{name} b{b} {p.compression} {prof} threads={p.threads} pred={p.predicted_ms} {time.time()-t:.1f}s {lib.name}"
with ThreadPoolExecutor(8) as ex:
    for r in ex.map(one, jobs):
        print(r, flush=True)
