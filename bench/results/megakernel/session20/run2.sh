# session 20 run 2 (H200): the MegaKernel CUDA tests touching batch > 1 on the padded activation rows (xspad).
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90 EGT_GEMV_ARCHS=90
timeout 540 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "batches or narrow or mix" 2>&1 | tail -n 8 | tee $OUT/run2_cuda_tests_megakernel.log
date -u
