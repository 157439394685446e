set -x
nvidia-smi --query-gpu=name --format=csv,noheader
export EGT_CACHE=/tmp/egtcache
B=.device_carry/base/csrc
LT=.device_carry/late/csrc
ab() { timeout $1 python bench/megakernel_ab.py --shapes $2 --weights $3 --variants "$4" --profile h100 --trace "$5" --out $OUT/ab_$2 > $OUT/$2.log 2>&1; grep -v "^  " $OUT/$2.log | grep -v "^== trace" | sed 's/attn hpi.*| rel/rel/'; }
ab 230 qwen2.5-1.5b w4a16,w4a16-mix "base:stored=1,csrc=$B;early:stored=1;late:stored=1,csrc=$LT;bbase:stored=1,copy=bulk,csrc=$B;bearly:stored=1,copy=bulk;blate:stored=1,copy=bulk,csrc=$LT" "late,bbase,bearly,blate"
ab 120 llama-3.2-1b bf16,w4a16 "base:stored=1,csrc=$B;early:stored=1;late:stored=1,csrc=$LT;bearly:stored=1,copy=bulk;blate:stored=1,copy=bulk,csrc=$LT" ""
ab 80 qwen2.5-0.5b bf16,w4a16 "base:stored=1,csrc=$B;early:stored=1;late:stored=1,csrc=$LT;blate:stored=1,copy=bulk,csrc=$LT" ""
ab 80 smollm2-135m bf16,w4a16 "base:stored=1,csrc=$B;early:stored=1;late:stored=1,csrc=$LT;blate:stored=1,copy=bulk,csrc=$LT" ""
