set -x
nvidia-smi --query-gpu=name --format=csv,noheader
export EGT_CACHE=/tmp/egtcache
nvcc -O3 -arch=sm_90 -o /tmp/syncmb bench/megakernel_sync_microbench.cu && /tmp/syncmb | grep "H  1536\|only" | tee $OUT/sync_microbench.log
ab() { timeout $1 python bench/megakernel_ab.py --shapes $2 --weights $3 --variants "$4" --profile h100 --out $OUT/ab_$2_$3 2>&1 | grep "ms@\|skip\|Error\|rror:"; }
V="stored:stored=1;p2:stored=1,csrc=.device_carry/p2/csrc;p4:stored=1,csrc=.device_carry/p4/csrc;p8:stored=1,csrc=.device_carry/p8/csrc"
ab 70 smollm2-135m bf16 "$V"
ab 70 smollm2-135m w4a16 "$V"
ab 70 qwen2.5-1.5b w4a16 "$V"
ab 70 llama-3.2-1b bf16 "$V"
EGT_MK_CSRC=$PWD/.device_carry/p4/csrc timeout 200 python -m pytest tests/test_megakernel_cuda.py -x -q -k "step_matches or greedy or never_arrives" 2>&1 | tail -3 | tee $OUT/cuda_p4.log
