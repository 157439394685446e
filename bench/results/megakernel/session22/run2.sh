# session 22 run 2 (H200): flagged words (plan option ll_deps): O writes x_mid and down writes x also as 32-bit
# words {value, 16-bit step flag}; gate/up and the next layer's QKV stage them by spinning on the words, with no
# grid-wide wait on O or on down (two of the five waits a layer). Same plans with ll=0 / ll=1, one binary each.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: built here with --build-only --profile h200
ab() {  # shape weights batch variants timeout [extra] [tail]
  mkdir -p $OUT/$1_$2_b$3
  timeout $5 python bench/megakernel_ab.py --shapes $1 --weights $2 --batch $3 --variants "$4" \
    --out $OUT/$1_$2_b$3 $6 2>&1 | grep -v Warning | tail -n ${7:-6}
  rm -f $OUT/$1_$2_b$3/megakernel_ab.md
  date -u
}
ab qwen2.5-1.5b w4a16 1 "base:stored=1;ll:stored=1,ll=1;base2:stored=1;ll2:stored=1,ll=1" 120 "--trace ll" 40
ab qwen2.5-1.5b w4a16-mix 1 "base:stored=1;ll:stored=1,ll=1" 50
ab qwen2.5-1.5b bf16 1 "base:stored=1;ll:stored=1,ll=1" 50
ab smollm2-135m bf16 1 "base:stored=1;ll:stored=1,ll=1" 40
ab llama-3.2-1b bf16 1 "base:stored=1;ll:stored=1,ll=1" 50
ab qwen2.5-1.5b w4a16 4 "base:;ll:ll=1" 50
export EGT_CACHE=/tmp/egtcache EGT_GEMV_ARCHS=90
timeout 240 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "flagged or never_arrives or narrow_sparse_tensor_core_tiles_match_reference" 2>&1 | tail -n 8 | tee $OUT/run2_cuda_tests.log
date -u
