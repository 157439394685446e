# session 17 run 1 (H200): the H100-stored plan of each key against the search's picks for the h200 profile
# (default INT4 path = cuda-core, and int4=auto), two shapes per invocation, each pair repeated.
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader; date -u; git log --oneline | head -1
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
V="h100:stored=h100;search:;auto:int4=auto;h100b:stored=h100"
for S in "$@"; do
  timeout 285 python bench/megakernel_ab.py --shapes $S --weights bf16,w4a16,w4a16-mix --variants "$V" --profile h200 --out $OUT/ab_$S 2>&1 | grep "ms@\|built\|Error\|error" | sed "s/attn hpi.*| rel/| rel/"
  date -u
done
