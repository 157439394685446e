set -x
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
export EGT_CACHE=/tmp/egtcache
D=.device_carry
ab() { timeout $1 python bench/megakernel_ab.py --shapes $2 --weights $3 --variants "$4" --profile h100 --trace "$5" --out $OUT/ab_$2 > $OUT/$2.log 2>&1; grep -v "^  " $OUT/$2.log | grep -v "^== trace" ; }
V="base:stored=1,csrc=$D/base/csrc;qk:stored=1;u2:stored=1,csrc=$D/u2/csrc;base2:stored=1,csrc=$D/base/csrc;qk2:stored=1"
ab 200 qwen2.5-1.5b bf16,w4a16,w4a16-mix "$V" "base,qk"
ab 150 smollm2-135m bf16,w4a16 "$V" "base,qk"
ab 140 llama-3.2-1b bf16,w4a16 "$V" ""
ab 140 qwen2.5-0.5b bf16,w4a16 "$V" ""
