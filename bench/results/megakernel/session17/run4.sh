# session 17 run 4 (H200): the options the cost model does not cost, on the stored bf16 plans (early gate/up
# prefill on qwen2.5-0.5b, L2 look-ahead on llama-3.2-1b), then the decode benchmark with the stored h200 plans.
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; date -u; git log --oneline | head -1
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
timeout 70 python bench/megakernel_ab.py --shapes qwen2.5-0.5b --weights bf16 --variants "st:stored=1;e0:stored=1,early=0;st2:stored=1;e02:stored=1,early=0" --out $OUT/ab_e 2>&1 | grep "ms@\|rror" | sed "s/attn hpi.*| rel/| rel/"
timeout 70 python bench/megakernel_ab.py --shapes llama-3.2-1b --weights bf16 --variants "st:stored=1;l0:stored=1,l2=0;st2:stored=1;l02:stored=1,l2=0" --out $OUT/ab_l 2>&1 | grep "ms@\|rror" | sed "s/attn hpi.*| rel/| rel/"
date -u
timeout 330 python bench/decode_bench.py --weights bf16,w4a16,w4a16-mix --batches '' --skip hf-eager,hf-static-compile --out $OUT 2>&1 | grep -v Warning | tail -32
date -u
