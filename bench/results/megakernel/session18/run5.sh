# session 18 run 5 (H200): the final code. DenseTC was refactored after run 3 (it now inherits DenseW's L2
# look-ahead; the ldmatrix row address in two lines), so its CUDA tests run again; then the decode bench of
# qwen2.5-1.5b at batches 1-16 with the final plan rules (INT4/N:4 on tensor cores above batch 2, dense from 4).
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
timeout 150 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "dense_tensor_core" 2>&1 | tail -4 | tee $OUT/tests.log
date -u
timeout 100 python bench/megakernel_prebuild.py qwen2.5-1.5b:1,2,4,8,16:bf16,w4a16,w4a16-mix:h200 2>&1 | grep -v Warning | tail -16
date -u
timeout 300 python bench/decode_bench.py --shapes qwen2.5-1.5b --weights bf16,w4a16,w4a16-mix --batches qwen2.5-1.5b:2,4,8,16 \
  --skip hf-eager,hf-static-compile --out $OUT 2>&1 | grep -v Warning | tail -32
date -u
