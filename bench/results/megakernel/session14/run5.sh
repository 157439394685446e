nvidia-smi --query-gpu=name --format=csv,noheader
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
date -u
timeout 45 python bench/megakernel_prebuild.py smollm2-135m:1:bf16,w4a16:h100 qwen2.5-0.5b:1:bf16,w4a16:h100 llama-3.2-1b:1:bf16,w4a16:h100 qwen2.5-1.5b:1:bf16,w4a16:h100 2>&1 | tail -1
date -u
timeout 140 python bench/decode_bench.py --weights bf16,w4a16 --batches '' --skip hf-eager,hf-static-compile --out $OUT 2>&1 | grep -v Warning | tail -22
date -u
