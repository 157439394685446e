# session 22 run 6 (H200): the batch, narrow-tile and mixed-weight MegaKernel CUDA tests on the final code.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90 EGT_GEMV_ARCHS=90
timeout 300 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "batches or narrow or mix" 2>&1 | tail -n 6 | tee $OUT/run6_cuda_tests_batches.log
date -u
