#!/usr/bin/env bash
# One device call for issue 4: CUDA tests of the sparse kernels, then the GEMV benchmark.
#   bash bench/sparse_run.sh   (on the GPU machine; writes under $OUT, default bench/results)
set -u
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv > "$OUT/sparse_gpu.txt" 2>&1
python -m pytest tests/test_sparsify_kernels.py -q -rs 2>&1 | tail -25 > "$OUT/sparse_cuda_tests.txt"
cat "$OUT/sparse_cuda_tests.txt"
python bench/sparse_gemv.py --out "$OUT/sparse_kernels.json" 2>&1 | tee "$OUT/sparse_kernels.log"
