# session 22 run 3 (H200): run 2's flagged words (ll) against variants: a 64 ns sleep between polls (sleep), only
# gate/up reading flagged x_mid (guonly), only QKV reading flagged x (qkvonly); then the CUDA tests of ll_deps.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: built here with --build-only --profile h200
C=.device_carry
V="base:stored=1;ll:stored=1,ll=1;sleep:stored=1,ll=1,csrc=$C/sleep/egt/megakernel/csrc;guonly:stored=1,ll=1,csrc=$C/guonly/egt/megakernel/csrc;qkvonly:stored=1,ll=1,csrc=$C/qkvonly/egt/megakernel/csrc"
ab() {  # shape weights batch variants timeout [extra] [tail]
  mkdir -p $OUT/$1_$2_b$3
  timeout $5 python bench/megakernel_ab.py --shapes $1 --weights $2 --batch $3 --variants "$4" \
    --out $OUT/$1_$2_b$3 $6 2>&1 | grep -v Warning | tail -n ${7:-6}
  rm -f $OUT/$1_$2_b$3/megakernel_ab.md
  date -u
}
ab qwen2.5-1.5b w4a16 1 "$V;base2:stored=1;ll2:stored=1,ll=1" 120 "" 8
ab llama-3.2-1b bf16 1 "$V;base2:stored=1;ll2:stored=1,ll=1" 120 "" 8
export EGT_CACHE=/tmp/egtcache EGT_GEMV_ARCHS=90
timeout 200 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "flagged" 2>&1 | tail -n 4 | tee $OUT/run3_cuda_tests.log
date -u
