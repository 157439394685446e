set -x
nvidia-smi --query-gpu=name --format=csv,noheader
export EGT_CACHE=/tmp/egtcache
date -u
timeout 330 python -m pytest tests/test_megakernel_cuda.py -q 2>&1 | tail -4 | tee $OUT/cuda_tests.log
date -u
ab() { timeout $1 python bench/megakernel_ab.py --shapes $2 --weights $3 --variants "$4" --profile h100 --out $OUT/ab_$2 > $OUT/$2.log 2>&1; grep -v "^  " $OUT/$2.log | grep -v "^== trace" | sed 's/attn hpi.*| rel/rel/'; }
V="stored:stored=1;early:stored=1,early=1;stored2:stored=1;early2:stored=1,early=1"
ab 110 qwen2.5-0.5b bf16,w4a16,w4a16-mix "$V"
ab 100 smollm2-135m bf16,w4a16,w4a16-mix "$V"
