set -x
nvidia-smi --query-gpu=name --format=csv,noheader
export EGT_CACHE=/tmp/egtcache
timeout 100 python -m pytest tests/test_megakernel_cuda.py -q -k "generate" 2>&1 | tail -3 | tee $OUT/cuda_generate.log
timeout 100 python - <<'PY' 2>&1 | tee $OUT/generate_timing.log
import sys, time, torch
sys.path.insert(0, "bench"); sys.path.insert(0, ".")
from egt.models import random_model
from egt.megakernel.runtime import MegaKernelDecoder
from common import time_decode_steps
from megakernel_check import compress
print(torch.cuda.get_device_name(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
for name, w in [("smollm2-135m", "bf16"), ("qwen2.5-1.5b", "w4a16")]:
    m = compress(random_model(name, device="cuda"), w)
    dec = MegaKernelDecoder(m, batch=1)
    cache = m.setup_cache(1, 400)
    ms, _ = time_decode_steps(dec, cache, 1, 140)
    ts = []
    for r in range(6):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dec.generate([1], [140], [0], 140, cache, 100)
        ts.append((time.perf_counter() - t0) * 1e3 / 100)
    ts = sorted(ts[1:])
    print(f"{name} {w}: launches only (CUDA events) {ms:.4f} ms/step; generate(100 steps) host wall incl. sync "
          f"{ts[2]:.4f} ms/step (min {ts[0]:.4f})", flush=True)
PY
