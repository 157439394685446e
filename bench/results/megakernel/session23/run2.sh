# session 23 run 2 (H200): run 1's change with the batch >= 2 sums of x back in their own pass (new = this
# checkout), against HEAD's csrc (base) and against new with a warp's quads of a stage all in flight when their
# count is fixed and <= 3 (unr: .device_carry/unr, at batch <= 4), same stored or searched plans; early gate/up
# prefill on both. Then the MegaKernel CUDA tests "batches or narrow or mix".
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: built here with --build-only --profile h200
B=.device_carry/base/egt/megakernel/csrc
U=.device_carry/unr/csrc
ab() {  # shape weights batch variants timeout [extra] [tail]
  mkdir -p $OUT/$1_$2_b$3
  timeout $5 python bench/megakernel_ab.py --shapes $1 --weights $2 --batch $3 --variants "$4" \
    --out $OUT/$1_$2_b$3 $6 2>&1 | grep -v Warning | tail -n ${7:-6}
  rm -f $OUT/$1_$2_b$3/megakernel_ab.md
  date -u
}
V="base:stored=1,csrc=$B;new:stored=1;unr:stored=1,csrc=$U"
ab qwen2.5-1.5b w4a16 1 "$V;base2:stored=1,csrc=$B;new2:stored=1;unr2:stored=1,csrc=$U;early:stored=1,early=1;earlyu:stored=1,early=1,csrc=$U" 130 "--trace unr" 40
ab qwen2.5-1.5b w4a16-mix 1 "$V" 60
W="base:csrc=$B;new:;unr:csrc=$U"
ab qwen2.5-1.5b w4a16 2 "$W" 50
ab qwen2.5-1.5b w4a16 4 "$W" 50
ab qwen2.5-1.5b w4a16 16 "base:csrc=$B;new:" 45 "" 3
export EGT_CACHE=/tmp/egtcache EGT_GEMV_ARCHS=90
timeout 250 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "batches or narrow or mix" 2>&1 | tail -n 6 | tee $OUT/run2_cuda_tests_batches.log
date -u
