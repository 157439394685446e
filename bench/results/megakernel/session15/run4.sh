# Session 15, call 5: P.V on tensor cores (branch pvtc, on b739c9c+docs) where q.k is on tensor cores (4-8 heads a
# KV head). .device_carry/main/csrc = main's headers (60c1d78). New-shape CUDA test, A/B, then the full CUDA file.
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache
D=.device_carry
timeout 130 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k other_head 2>&1 | tail -4 | tee $OUT/cuda_tests_other_head.log
date -u
V="main:stored=1,csrc=$D/main/csrc;pv:stored=1;main2:stored=1,csrc=$D/main/csrc;pv2:stored=1"
timeout 160 python bench/megakernel_ab.py --shapes qwen2.5-1.5b,llama-3.2-1b,qwen2.5-0.5b --weights bf16,w4a16 --variants "$V" --profile h100 --out $OUT/ab 2>&1 | grep ms@ | sed 's/attn hpi.*fold=1 | //'
date -u
timeout 290 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider 2>&1 | tail -4 | tee $OUT/cuda_tests.log
date -u
