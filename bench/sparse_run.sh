#!/usr/bin/env bash
# One device call for issues 3/4 (W4A16 kernels): CUDA tests, then every kernel timed in one run.
#   bash bench/sparse_run.sh   (on the GPU machine; writes under $OUT, default bench/results)
# A prebuilt kernel library can travel in $EGT_CACHE (the build is keyed by the source's sha256).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
python -c "import time; t = time.time(); from egt.kernels import build; print('kernel library', build(), f'{time.time() - t:.1f} s')"
python -m pytest tests/test_quant_cuda.py tests/test_sparsify_kernels.py -q -rs --tb=short -p no:cacheprovider > "$OUT/kernel_cuda_tests.txt" 2>&1
tail -40 "$OUT/kernel_cuda_tests.txt"
python bench/quant_kernels.py --out-dir "$OUT" > "$OUT/quant_kernels.log" 2>&1
tail -60 "$OUT/quant_kernels.log"
python bench/sparse_gemv.py 2>&1 | tee "$OUT/sparse_gemv.log"
