nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache
D=.device_carry
timeout 90 python bench/megakernel_ab.py --build-only --profile h100 --shapes qwen2.5-1.5b,smollm2-135m,llama-3.2-1b,qwen2.5-0.5b --weights bf16,w4a16,w4a16-mix --variants "head:stored=1,csrc=$D/head/csrc;rope:stored=1" 2>&1 | tail -1
timeout 120 python $D/bitcheck.py $D/head/csrc "" 2>&1 | tail -6
date -u
V="head:stored=1,csrc=$D/head/csrc;rope:stored=1;head2:stored=1,csrc=$D/head/csrc;rope2:stored=1"
timeout 70 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights w4a16 --variants "$V" --profile h100 --out $OUT/ab1 2>&1 | grep ms@ | sed 's/attn hpi.*fold=1 | //'
timeout 60 python bench/megakernel_ab.py --shapes smollm2-135m --weights bf16 --variants "$V" --profile h100 --out $OUT/ab2 2>&1 | grep ms@ | sed 's/attn hpi.*fold=1 | //'
date -u
timeout 260 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider 2>&1 | tail -4 | tee $OUT/cuda_tests.log
date -u
