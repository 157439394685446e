set -x
nvidia-smi --query-gpu=name --format=csv,noheader
export EGT_CACHE=/tmp/egtcache
B=.device_carry/base/csrc
ab() { timeout $1 python bench/megakernel_ab.py --shapes $2 --weights $3 --variants "$4" --profile h100 --trace "$5" --out $OUT/ab_$2 > $OUT/$2.log 2>&1; grep -v "^  " $OUT/$2.log | grep -v "^== trace" ; }
V="base:stored=1,csrc=$B;early:stored=1;base2:stored=1,csrc=$B;early2:stored=1"
ab 170 qwen2.5-1.5b bf16,w4a16,w4a16-mix "$V" "base,early"
ab 120 llama-3.2-1b bf16,w4a16,w4a16-mix "$V" ""
ab 100 qwen2.5-0.5b bf16,w4a16,w4a16-mix "$V" ""
ab 100 smollm2-135m bf16,w4a16,w4a16-mix "$V" ""
