# session 17 run 3 (H200): every CUDA test on the session's code (profile h200, INT4 path auto by default, the
# CUDA fixtures pinning their kernel paths).
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
timeout 400 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider 2>&1 | tail -8 | tee $OUT/cuda_tests_megakernel.log
date -u
timeout 170 python -m pytest -m cuda tests/test_engine_cuda.py tests/test_quant_cuda.py tests/test_sparsify.py tests/test_sparsify_kernels.py tests/test_verify_cuda.py tests/test_w4_gemv.py -q -p no:cacheprovider 2>&1 | tail -8 | tee $OUT/cuda_tests_other.log
date -u
