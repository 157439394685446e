# Session 15, call 3: the landing state (508aaba + tensor-core q.k for 4-8 heads a KV head + the fp16/GQA test):
# full CUDA test file, then prebuild every decode-bench kernel for the next call.
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
timeout 330 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -rs 2>&1 | grep -v "^SKIPPED.*same as w4a16\|^SKIPPED.*needs" | tail -25 | tee $OUT/cuda_tests.log
date -u
timeout 150 python bench/megakernel_prebuild.py smollm2-135m:1:bf16,w4a16,w4a16-mix:h100 qwen2.5-0.5b:1:bf16,w4a16,w4a16-mix:h100 llama-3.2-1b:1:bf16,w4a16,w4a16-mix:h100 qwen2.5-1.5b:1:bf16,w4a16,w4a16-mix:h100 2>&1 | tail -2
date -u
