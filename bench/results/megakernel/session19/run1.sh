# session 19 run 1 (H200): the CUDA tests touching this session's changes. The standalone W4A16 GEMV's sparse
# modes at 9-16 rows (two mma n-tiles, as dense had), then the MegaKernel's N:4 sparse tensor-core loop at batch
# 9-16 (a second group of 8 B columns), dense bf16/fp16 on tensor cores (DenseTC now DenseW<T, 1>), INT4 batches.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90 EGT_GEMV_ARCHS=90
timeout 150 python -m pytest -m cuda tests/test_engine_cuda.py tests/test_quant_cuda.py tests/test_sparsify.py tests/test_sparsify_kernels.py tests/test_verify_cuda.py tests/test_w4_gemv.py -q -p no:cacheprovider 2>&1 | tail -n 6 | tee $OUT/run1_cuda_tests_other.log
date -u
timeout 380 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "batches or narrow or mix" 2>&1 | tail -n 8 | tee $OUT/run1_cuda_tests_megakernel.log
date -u
