# session 18 run 4 (H200): decode bench of qwen2.5-1.5b at batches 1-16 (bf16, w4a16, w4a16-mix), MegaKernel
# plans of the final code (auto: INT4 and N:4 on tensor cores up to batch 16 / 8, dense on tensor cores from batch 4).
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
timeout 120 python bench/megakernel_prebuild.py qwen2.5-1.5b:1,2,4,8,16:bf16,w4a16,w4a16-mix:h200 2>&1 | grep -v Warning | tail -16
date -u
timeout 420 python bench/decode_bench.py --shapes qwen2.5-1.5b --weights bf16,w4a16,w4a16-mix --batches qwen2.5-1.5b:2,4,8,16 \
  --skip hf-eager,hf-static-compile --out $OUT 2>&1 | grep -v Warning | tail -40
date -u
