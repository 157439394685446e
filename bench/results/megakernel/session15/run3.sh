# Session 15, call 4 (same warm machine as run2.sh): decode benchmark of the landing state.
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
ls /tmp/egtcache 2>/dev/null | head -3
timeout 330 python bench/decode_bench.py --weights bf16,w4a16,w4a16-mix --batches '' --skip hf-eager,hf-static-compile --out $OUT 2>&1 | grep -v Warning | tail -30
date -u
