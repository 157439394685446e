# session 19 run 5 (H200): the GEMV heuristic from run 4's sweep (from 8 rows: more warps in flight). Its CUDA
# tests, the GEMV table at batches 1-16 with the new picks, and the decode bench's w4a16 / w4a16-mix rows at
# batches 8, 12, 16 (torch-graph runs these GEMVs).
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90 EGT_GEMV_ARCHS=90
timeout 150 python -m pytest -m cuda tests/test_engine_cuda.py tests/test_quant_cuda.py tests/test_sparsify.py tests/test_sparsify_kernels.py tests/test_w4_gemv.py -q -p no:cacheprovider 2>&1 | tail -n 4 | tee $OUT/run5_cuda_tests_gemv.log
date -u
timeout 150 python bench/sparse_gemv.py --batches 1,4,8,12,16 2>&1 | grep -v Warning | tee $OUT/run5_gemv_batches.md
date -u
timeout 250 python bench/decode_bench.py --shapes qwen2.5-1.5b --weights w4a16,w4a16-mix --batches qwen2.5-1.5b:8,12,16 \
  --skip hf-eager,hf-static-compile --out $OUT 2>&1 | grep -v Warning | tail -n 16
date -u
