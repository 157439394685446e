# session 20 run 4 (H200): decode bench of qwen2.5-1.5b at batch 1-16 on the padded activation rows (xspad).
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90 EGT_GEMV_ARCHS=90
timeout 560 python bench/decode_bench.py --shapes qwen2.5-1.5b --weights bf16,w4a16,w4a16-mix --batches qwen2.5-1.5b:2,4,8,16 \
  --skip hf-eager,hf-static-compile --out $OUT 2>&1 | grep -v Warning | tail -n 34
date -u
