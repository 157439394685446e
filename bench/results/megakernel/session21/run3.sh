# session 21 run 3 (H200): the rest of the MegaKernel CUDA file on the final code, then the decode benchmark.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90 EGT_GEMV_ARCHS=90
timeout 290 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "not batches and not narrow and not mix" --durations=10 2>&1 | tail -n 22 | tee $OUT/run3_cuda_tests_megakernel.log
date -u
timeout 280 python bench/decode_bench.py --shapes qwen2.5-1.5b --weights bf16,w4a16,w4a16-mix --batches qwen2.5-1.5b:2,4,8,16 --skip hf-eager,hf-static-compile --out $OUT 2>&1 | grep -v Warning | tail -n 30
date -u
