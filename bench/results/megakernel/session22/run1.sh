# session 22 run 1 (H200): attention's P.V on tensor cores (mma.m16n8k16, each probability in two bf16 parts, V by
# ldmatrix.trans; a warp owns 16-dimension pairs, so the cross-warp reduction pass is gone) and q.k in two MMA
# chains (`att`); the same plus the INT4 tensor-core loops' per-32-column activation sums as a lane-parallel tree
# (`xs`, the working tree). base = HEAD's csrc. Then the CUDA tests of attention and of the sparse tiles.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: built here with --build-only --profile h200
B=.device_carry/base/egt/megakernel/csrc; A=.device_carry/att/egt/megakernel/csrc
ab() {  # shape weights batch variants timeout [extra] [tail]
  mkdir -p $OUT/$1_$2_b$3
  timeout $5 python bench/megakernel_ab.py --shapes $1 --weights $2 --batch $3 --variants "$4" \
    --out $OUT/$1_$2_b$3 $6 2>&1 | grep -v Warning | tail -n ${7:-6}
  rm -f $OUT/$1_$2_b$3/megakernel_ab.md
  date -u
}
ab qwen2.5-1.5b w4a16 1 "base:stored=1,csrc=$B;att:stored=1,csrc=$A;xs:stored=1;base2:stored=1,csrc=$B;att2:stored=1,csrc=$A;xs2:stored=1" 150 "--trace xs" 40
ab qwen2.5-1.5b w4a16-mix 1 "base:stored=1,csrc=$B;xs:stored=1" 60
ab qwen2.5-1.5b w4a16 16 "base:csrc=$B;xs:" 60
ab smollm2-135m bf16 1 "base:stored=1,csrc=$B;att:stored=1,csrc=$A" 50
ab llama-3.2-1b bf16 1 "base:stored=1,csrc=$B;att:stored=1,csrc=$A" 60
export EGT_CACHE=/tmp/egtcache EGT_GEMV_ARCHS=90
timeout 200 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -x -k "step_matches or attention_options or folded or narrow_sparse or (greedy_agrees and mix)" 2>&1 | tail -n 6 | tee $OUT/run1_cuda_tests.log
date -u
