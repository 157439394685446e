# session 17 run 5 (H200): which op's schedule makes the search's bf16 picks slower than the stored plans: the
# stored plan with one op set to the search's choice (run 59's picks, SM_STREAM_CAP 1.0).
date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
timeout 100 python bench/megakernel_ab.py --shapes qwen2.5-0.5b --weights bf16 --variants "st:stored=1;dn:stored=1,down=8/1216/8/4/1;gu:stored=1,gateup=8/896/4/1/1;lm:stored=1,lm_head=32/448/4/2/1;st2:stored=1" --out $OUT/ab_q05 2>&1 | grep "ms@\|rror" | sed "s/attn hpi.*| rel/| rel/"
timeout 120 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights bf16 --variants "st:stored=1;dn:stored=1,down=16/256/8/1/1;gu:stored=1,gateup=8/768/4/1/1;lm:stored=1,lm_head=32/512/3/1/1;st2:stored=1" --out $OUT/ab_q15 2>&1 | grep "ms@\|rror" | sed "s/attn hpi.*| rel/| rel/"
date -u
