set -x
nvidia-smi --query-gpu=name --format=csv,noheader
export EGT_CACHE=/tmp/egtcache
B=.device_carry/base/csrc
nvcc -O3 -arch=sm_90 -o /tmp/syncmb bench/megakernel_sync_microbench.cu && /tmp/syncmb | tee $OUT/sync_microbench.log
timeout 200 python -m pytest tests/test_megakernel_cuda.py -x -q -k "spread" 2>&1 | tail -3 | tee $OUT/cuda_spread.log
ab() { timeout $1 python bench/megakernel_ab.py --shapes $2 --weights $3 --variants "$4" --profile h100 --out $OUT/ab_$2_$3 2>&1 | grep "ms@\|skip\|Error\|rror:"; }
V="stored:stored=1;s4:stored=1,spread=4;s8:stored=1,spread=8;s16:stored=1,spread=16;s32:stored=1,spread=32"
ab 80 smollm2-135m bf16 "$V;base:stored=1,csrc=$B"
ab 70 smollm2-135m w4a16 "$V"
ab 70 qwen2.5-1.5b w4a16 "$V"
ab 70 llama-3.2-1b bf16 "$V"
