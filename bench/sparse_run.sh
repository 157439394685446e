#!/usr/bin/env bash
# One device call for issues 3/4 (W4A16 kernels): CUDA tests, then every kernel timed in one run.
#   bash bench/sparse_run.sh   (on the GPU machine; writes under $OUT, default bench/results)
# A prebuilt kernel library can travel in $EGT_CACHE (the build is keyed by the source's sha256 and EGT_GEMV_ARCHS).
# $W4_BASELINE_SO (optional): the previous kernel library, for same-run "before" figures, described by
# $W4_BASELINE_DESC.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
python -c "import time; t = time.time(); from egt.kernels import build; print('kernel library', build(), f'{time.time() - t:.1f} s')"
python -m pytest tests/test_w4_gemv.py tests/test_quant_cuda.py tests/test_sparsify_kernels.py -q -rs --tb=short \
  -p no:cacheprovider > "$OUT/kernel_cuda_tests.txt" 2>&1
tail -25 "$OUT/kernel_cuda_tests.txt"
BASE=()
if [ -n "${W4_BASELINE_SO:-}" ]; then BASE=(--baseline-so "$W4_BASELINE_SO" --baseline-desc "${W4_BASELINE_DESC:-}"); fi
python bench/quant_kernels.py --out-dir "$OUT" "${BASE[@]}" > "$OUT/quant_kernels.log" 2>&1
grep -v '^{' "$OUT/quant_kernels.log" | head -80
# W4_NCU=1: Nsight Compute profile of one launch per kernel (and of the baseline's with W4_NCU_BASELINE=1).
if [ -n "${W4_NCU:-}" ] && command -v ncu > /dev/null; then
  BP=()
  if [ -n "${W4_NCU_BASELINE:-}" ] && [ -n "${W4_BASELINE_SO:-}" ]; then BP=(--baseline-so "$W4_BASELINE_SO"); fi
  timeout 150 ncu -k regex:w4_kernel --section SpeedOfLight --section Occupancy --section LaunchStats \
    --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
    python bench/sparse_gemv.py --profile "${BP[@]}" > "$OUT/ncu.txt" 2>&1
  grep -E "w4_kernel|Duration|DRAM Throughput|Registers Per|Achieved Occupancy|Issued Warp|No Eligible|Eligible Warps|Active Warps Per|Warp Cycles Per Issued|Block Limit" "$OUT/ncu.txt" | head -150
fi
