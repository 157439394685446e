# session 16 run 4 (same warm machine as run3.sh): the old and new qwen2.5-0.5b w4a16 plans in one A/B, then the
# decode benchmark of the landing state (w4a16, w4a16-mix).
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
V="old:stored=1,down=16/1216/8/1/8;new:stored=1;old2:stored=1,down=16/1216/8/1/8;new2:stored=1"
timeout 100 python bench/megakernel_ab.py --shapes qwen2.5-0.5b --weights w4a16 --variants "$V" --profile h100 --out $OUT/ab 2>&1 | grep ms@
date -u
timeout 300 python bench/decode_bench.py --weights w4a16,w4a16-mix --batches '' --skip hf-eager,hf-static-compile --out $OUT 2>&1 | grep -v Warning | tail -20
date -u
