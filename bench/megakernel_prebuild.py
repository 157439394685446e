"""Build every MegaKernel binary a bench run needs, in parallel (nvcc is single-threaded per TU).

    python bench/megakernel_prebuild.py NAME:BATCHES:WEIGHTS:PROFILE ...   e.g. qwen2.5-1.5b:1,2:bf16,w4a16-mix:h100

WEIGHTS: comma list of bench/megakernel_check.py's WEIGHT_LABELS."""
import sys, time
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, ".")
sys.path.insert(0, "bench")
from egt.models import SHAPES
from egt.megakernel.search import plan_for
from egt.megakernel.codegen import build
from egt.megakernel.profiles import get_profile
from megakernel_check import plan_weights
jobs = []
for spec in sys.argv[1:]:
    head, prof = spec.rsplit(":", 1)  # from both ends: a weights label may hold ':' (w4a16-2:4)
    name, bs, ws = head.split(":", 2)
    for b in bs.split(","):
        for w in ws.split(","):
            jobs.append((name, int(b), plan_weights(w), prof))
def one(j):
    name, b, w, prof = j
    t = time.time()
    p = plan_for(SHAPES[name], b, get_profile(prof), weights=w)
    lib = build(p)
    return f"{name} b{b} {p.compression} {prof} threads={p.threads} pred={p.predicted_ms} {time.time()-t:.1f}s {lib.name}"
with ThreadPoolExecutor(8) as ex:
    for r in ex.map(one, jobs):
        print(r, flush=True)
