# session 18 run 3 (H200): bf16 at batch 2 on CUDA cores vs tensor cores (same run), then the CUDA tests on the
# session's final kernel code (csrc unchanged since run 2, where the "batches or narrow" tests passed but the one
# whose plan did not fit shared memory, fixed and run here).
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
mkdir -p $OUT/bf16_b2
timeout 100 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights bf16 --batch 2 \
  --variants "cc:dense=cuda-core;tc:dense=tensor-core;cc2:dense=cuda-core;tc2:dense=tensor-core" --out $OUT/bf16_b2 2>&1 | grep -v Warning | tail -4
date -u
timeout 440 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "not batches and not narrow or narrow_sparse_tensor_core_tiles_match_reference[8]" 2>&1 | tail -8 | tee $OUT/cuda_tests_megakernel.log
date -u
timeout 60 python -m pytest -m cuda tests/test_engine_cuda.py tests/test_quant_cuda.py tests/test_sparsify.py tests/test_sparsify_kernels.py tests/test_verify_cuda.py tests/test_w4_gemv.py -q -p no:cacheprovider 2>&1 | tail -4 | tee $OUT/cuda_tests_other.log
date -u
