# session 23 run 3 (H200): the whole MegaKernel CUDA test file on the final code (run 2's `new` plus `unr`)
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90 EGT_GEMV_ARCHS=90
timeout 275 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "batches or narrow or mix" 2>&1 | tail -n 6 | tee $OUT/run3_cuda_tests_batches.log
date -u
timeout 280 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "not batches and not narrow and not mix" 2>&1 | tail -n 6 | tee $OUT/run3_cuda_tests_megakernel.log
date -u
