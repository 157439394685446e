# session 21 run 2 (H200): run 1 gave the batch-1 step 1.035x for two quads in flight a warp (perm2 against perm),
# no gain at batch 8 and 16. The code now unrolls up to batch 4 (Q4TC::QUAD_UNROLL); this checks batch 2 and 4
# (u1 = the same code with QUAD_UNROLL = 1, base = HEAD's csrc: wrong logits by construction, valid time), then
# runs the MegaKernel CUDA tests that touch batch > 1, narrow tiles and mixed models on this code.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: built here with --build-only --profile h200
B=.device_carry/base/egt/megakernel/csrc; U1=.device_carry/u1
ab() {  # weights batch variants timeout [extra] [tail]
  mkdir -p $OUT/$1_b$2
  timeout $4 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights $1 --batch $2 --variants "$3" \
    --out $OUT/$1_b$2 $5 2>&1 | grep -v Warning | tail -n ${6:-8}
  rm -f $OUT/$1_b$2/megakernel_ab.md
  date -u
}
ab w4a16 2 "base:csrc=$B;u1:csrc=$U1;cur:;cur2:" 80
ab w4a16 4 "base:csrc=$B;u1:csrc=$U1;cur:;cur2:" 80
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90 EGT_GEMV_ARCHS=90
timeout 330 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "batches or narrow or mix" --durations=15 2>&1 | tail -n 30 | tee $OUT/run2_cuda_tests_megakernel.log
date -u
