"""Local sm_90 compile check of A/B variants: python compile.py 'shape|weights|k=v,...' ..."""
import os, sys, subprocess, tempfile, time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, "/work/main")
from egt.models import SHAPES
from egt.megakernel import codegen
from egt.megakernel.profiles import get_profile
from bench.megakernel_ab import variant_plan
csrc = "/work/main/egt/megakernel/csrc"
def one(spec):
    shape, w, kvs = spec.split("|")
    kv = dict(p.split("=", 1) for p in filter(None, kvs.split(",")))
    p = variant_plan(SHAPES[shape], w, kv, get_profile("h100"))
    td = Path(tempfile.mkdtemp()); (td / "mk.cu").write_text(codegen.generate_source(p))
    t = time.time()
    r = subprocess.run(["nvcc", str(td / "mk.cu"), f"-I{csrc}", "-O3", "-std=c++17", "-cubin", "-o", str(td/"mk.cubin"),
                        "-Xptxas", "-v", "-gencode", "arch=compute_90,code=sm_90"], capture_output=True, text=True)
    lines = [l.strip() for l in r.stderr.splitlines() if "registers" in l or "error" in l or "spill" in l]
    return spec, r.returncode, round(time.time() - t), lines[-4:], {k: (s.tr, s.tk, s.wpr) for k, s in p.ops.items()}
with ThreadPoolExecutor(2) as ex:
    for r in ex.map(one, sys.argv[1:]): print(*r, sep="\n  ")
