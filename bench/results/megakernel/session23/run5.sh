# session 23 run 5 (H200): the sparse tensor-core loop (S4TC) with a warp's quads all in flight where their count is
# fixed and <= 3, as Q4TC got in run 2 (s4u = this checkout), against HEAD's csrc (cur); w4a16-mix at batch 1 (twice),
# 2 and 4, stored or searched plans. Then the MegaKernel CUDA tests of the mixed and sparse models on s4u.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: built here with --build-only --profile h200
C=.device_carry/cur/egt/megakernel/csrc
ab() {  # shape weights batch variants timeout [extra] [tail]
  mkdir -p $OUT/$1_$2_b$3
  timeout $5 python bench/megakernel_ab.py --shapes $1 --weights $2 --batch $3 --variants "$4" \
    --out $OUT/$1_$2_b$3 $6 2>&1 | grep -v Warning | tail -n ${7:-6}
  rm -f $OUT/$1_$2_b$3/megakernel_ab.md
  date -u
}
ab qwen2.5-1.5b w4a16-mix 1 "cur:stored=1,csrc=$C;s4u:stored=1;cur2:stored=1,csrc=$C;s4u2:stored=1" 70
ab qwen2.5-1.5b w4a16-mix 2 "cur:csrc=$C;s4u:" 45
ab qwen2.5-1.5b w4a16-mix 4 "cur:csrc=$C;s4u:" 45
export EGT_CACHE=/tmp/egtcache EGT_GEMV_ARCHS=90
timeout 250 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "mix or narrow_sparse" 2>&1 | tail -n 6 | tee $OUT/run5_cuda_tests_sparse.log
date -u
