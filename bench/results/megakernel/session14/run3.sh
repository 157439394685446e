nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache
D=.device_carry
timeout 90 python bench/megakernel_ab.py --build-only --profile h100 --shapes qwen2.5-1.5b,smollm2-135m,llama-3.2-1b,qwen2.5-0.5b --weights bf16,w4a16,w4a16-mix --variants "base:stored=1,csrc=$D/base/csrc;new:stored=1" 2>&1 | tail -2
timeout 120 python $D/bitcheck.py $D/base/csrc "" 2>&1 | tail -8
date -u
timeout 300 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider 2>&1 | tail -5 | tee $OUT/cuda_tests.log
date -u
timeout 100 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights w4a16 --variants "base:stored=1,csrc=$D/base/csrc;new:stored=1;base2:stored=1,csrc=$D/base/csrc;new2:stored=1" --profile h100 --out $OUT/ab1 2>&1 | grep ms@ | sed 's/attn hpi.*fold=1 | //'
timeout 80 python bench/megakernel_ab.py --shapes smollm2-135m --weights bf16 --variants "base:stored=1,csrc=$D/base/csrc;new:stored=1;base2:stored=1,csrc=$D/base/csrc;new2:stored=1" --profile h100 --out $OUT/ab2 2>&1 | grep ms@ | sed 's/attn hpi.*fold=1 | //'
date -u
