nvidia-smi --query-gpu=name --format=csv,noheader
export EGT_CACHE=/tmp/egtcache
date -u
timeout 390 python -m pytest tests/test_megakernel_cuda.py -q 2>&1 | tail -4 | tee $OUT/cuda_tests.log
date -u
