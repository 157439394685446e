# session 17 run 2 (H200): with SM_STREAM_CAP 1.0 and INT4 path auto by default: bf16 search picks against the
# H100-stored plans, and the INT4 keys where auto beat the H100 plan in run 1, each pair twice.
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
V="h100:stored=h100;search:;h100b:stored=h100;searchb:"
timeout 240 python bench/megakernel_ab.py --shapes qwen2.5-0.5b,llama-3.2-1b,qwen2.5-1.5b --weights bf16 --variants "$V" --profile h200 --out $OUT/ab_bf16 2>&1 | grep "ms@\|built\|Error\|error" | sed "s/attn hpi.*| rel/| rel/"
date -u
timeout 200 python bench/megakernel_ab.py --shapes llama-3.2-1b,qwen2.5-1.5b,smollm2-135m --weights w4a16 --variants "$V" --profile h200 --out $OUT/ab_w4 2>&1 | grep "ms@\|built\|Error\|error" | sed "s/attn hpi.*| rel/| rel/"
date -u
