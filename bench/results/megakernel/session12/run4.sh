set -x
nvidia-smi --query-gpu=name --format=csv,noheader
export EGT_CACHE=/tmp/egtcache
B=.device_carry/base/csrc
timeout 90 python -m pytest tests/test_megakernel_cuda.py -x -q -k "several" 2>&1 | tail -3 | tee $OUT/cuda_several.log
ab() { timeout $1 python bench/megakernel_ab.py --shapes $2 --weights $3 --variants "$4" --profile h100 --out $OUT/ab_$2_$3 2>&1 | grep "ms@\|skip\|Error\|rror:"; }
V="base:stored=1,csrc=$B;one:stored=1;x10:stored=1,steps=10;x50:stored=1,steps=50"
ab 50 smollm2-135m bf16 "$V"
ab 50 smollm2-135m w4a16 "$V"
ab 50 qwen2.5-0.5b w4a16 "$V"
ab 50 llama-3.2-1b bf16 "$V"
ab 50 qwen2.5-1.5b w4a16 "$V"
timeout 290 python -m pytest tests/test_megakernel_cuda.py -q -rs 2>&1 | tail -15 > $OUT/cuda_tests_session12_h100.log; tail -4 $OUT/cuda_tests_session12_h100.log
