# session 16 run 8: decode benchmark of qwen2.5-0.5b (w4a16, w4a16-mix) with both stored plans in 8-row down tiles
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
timeout 60 python bench/megakernel_prebuild.py qwen2.5-0.5b:1:w4a16,w4a16-mix:h100 2>&1 | tail -2
timeout 150 python bench/decode_bench.py --shapes qwen2.5-0.5b --weights w4a16,w4a16-mix --batches '' --skip hf-eager,hf-static-compile --out $OUT 2>&1 | grep -v Warning | tail -8
date -u
