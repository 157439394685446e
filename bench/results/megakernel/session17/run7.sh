# session 17 run 7 (H200): the search's bf16 picks after the cost-model change (per-SM stream cap
# profile.sm_stream_gbs, whole-part stages for tiles of <= 4 rows) against the stored h200 plans.
date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
timeout 200 python bench/megakernel_ab.py --shapes qwen2.5-0.5b,llama-3.2-1b,qwen2.5-1.5b --weights bf16 --variants "st:stored=1;se:;st2:stored=1;se2:" --out $OUT/ab 2>&1 | grep "ms@\|rror" | sed "s/attn hpi.*| rel/| rel/"
date -u
