# session 21 run 7 (H200): the sparse tensor-core loop (S4TC) with run 1's address work: batch rows past NB load the
# last row instead of a predicated zero, per-lane x pointers computed once. Batch-1 SASS of w4a16-mix: one-matrix
# sparse quad loops 87-109 -> 60-74 instructions, gate/up 122-148 -> 94-121. base = HEAD's csrc (same layout).
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: built here with --build-only --profile h200
B=.device_carry/base/egt/megakernel/csrc
for b in 1 16; do
  V="base:csrc=$B;s4:"; [ $b = 1 ] && V="base:stored=1,csrc=$B;s4:stored=1;base2:stored=1,csrc=$B;s42:stored=1"
  mkdir -p $OUT/mix_b$b
  timeout 70 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights w4a16-mix --batch $b --variants "$V" \
    --out $OUT/mix_b$b 2>&1 | grep -v Warning | tail -n 4
  rm -f $OUT/mix_b$b/megakernel_ab.md; date -u
done
export EGT_CACHE=/tmp/egtcache EGT_GEMV_ARCHS=90
timeout 100 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "narrow_sparse_tensor_core or (greedy_agrees and mix)" 2>&1 | tail -n 4 | tee $OUT/run7_cuda_tests_sparse.log
date -u
