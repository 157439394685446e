# session 20 run 3 (H200): the rest of the MegaKernel CUDA file on the padded activation rows (run 2 ran
# "batches or narrow or mix").
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90 EGT_GEMV_ARCHS=90
timeout 560 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "not batches and not narrow and not mix" 2>&1 | tail -n 8 | tee $OUT/run3_cuda_tests_megakernel.log
date -u
