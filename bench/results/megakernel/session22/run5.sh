# session 22 run 5 (H200): the final form of run 4's `att`: QKV writes its output only as flagged words, the
# attention items spin on their q/k/v words, no QKV counter (new = this checkout). base = HEAD's csrc, its QKV
# counters moved into the free half of the QKV scratch (the new layout has none). Then the MegaKernel CUDA tests
# that are not batch/narrow/mix ones (run 6 runs those).
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: built here with --build-only --profile h200
B=.device_carry/base/egt/megakernel/csrc
ab() {  # shape weights batch variants timeout [extra] [tail]
  mkdir -p $OUT/$1_$2_b$3
  timeout $5 python bench/megakernel_ab.py --shapes $1 --weights $2 --batch $3 --variants "$4" \
    --out $OUT/$1_$2_b$3 $6 2>&1 | grep -v Warning | tail -n ${7:-6}
  rm -f $OUT/$1_$2_b$3/megakernel_ab.md
  date -u
}
V="base:stored=1,csrc=$B;new:stored=1;base2:stored=1,csrc=$B;new2:stored=1"
ab smollm2-135m bf16 1 "$V" 60 "--trace new" 40
ab qwen2.5-1.5b w4a16 1 "$V" 70
ab qwen2.5-1.5b w4a16-mix 1 "$V" 70
ab llama-3.2-1b bf16 1 "$V" 70
ab qwen2.5-1.5b w4a16 16 "base:csrc=$B;new:" 50 "" 2
export EGT_CACHE=/tmp/egtcache EGT_GEMV_ARCHS=90
timeout 280 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "not batches and not narrow and not mix" 2>&1 | tail -n 6 | tee $OUT/run5_cuda_tests_megakernel.log
date -u
