# session 19 run 4 (H200): the standalone W4A16 GEMV (egt/kernels) at batches 1-16, sparse now included above 8:
# dense / 2:4 / 1:4 INT4 and fp16 cuBLAS on the 1.5B shapes, then every (splits, warps) config at batches 8 and 16
# against the heuristic's pick.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_GEMV_ARCHS=90
timeout 200 python bench/sparse_gemv.py --batches 1,4,8,12,16 2>&1 | grep -v Warning | tee $OUT/run4_gemv_batches.md
date -u
timeout 330 python bench/sparse_gemv.py --batches 8,16 --sweep 2>&1 | grep -v Warning > $OUT/run4_gemv_sweep.log
grep -v SWEEP $OUT/run4_gemv_sweep.log | tail -n 30
date -u
