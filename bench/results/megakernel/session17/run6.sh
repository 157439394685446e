# session 17 run 6 (H200): run 61's faster LM head schedule of qwen2.5-1.5b bf16 again, with a deeper variant, and
# a deeper LM head ring for qwen2.5-0.5b bf16.
date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
timeout 120 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights bf16 --variants "st:stored=1;lm:stored=1,lm_head=32/512/3/1/1;lm4:stored=1,lm_head=32/512/4/1/1;st2:stored=1;lm2:stored=1,lm_head=32/512/3/1/1" --out $OUT/ab_q15 2>&1 | grep "ms@\|rror" | sed "s/attn hpi.*| rel/| rel/"
timeout 100 python bench/megakernel_ab.py --shapes qwen2.5-0.5b --weights bf16 --variants "st:stored=1;lm3:stored=1,lm_head=32/896/3/1/1;st2:stored=1;lm32:stored=1,lm_head=32/896/3/1/1" --out $OUT/ab_q05 2>&1 | grep "ms@\|rror" | sed "s/attn hpi.*| rel/| rel/"
date -u
