# session 16 run 3: the landing state (narrow tensor-core INT4 tiles, qwen2.5-0.5b w4a16 plan with 8-row down):
# full CUDA test file, then prebuild the decode-bench kernels (w4a16, w4a16-mix) for run 4.
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; date -u; git log --oneline | head -1
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
timeout 380 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -rs 2>&1 | grep -v "^SKIPPED.*same as w4a16\|^SKIPPED.*needs" | tail -25 | tee $OUT/cuda_tests.log
date -u
timeout 150 python bench/megakernel_prebuild.py smollm2-135m:1:w4a16,w4a16-mix:h100 qwen2.5-0.5b:1:w4a16,w4a16-mix:h100 llama-3.2-1b:1:w4a16,w4a16-mix:h100 qwen2.5-1.5b:1:w4a16,w4a16-mix:h100 2>&1 | tail -2
date -u
