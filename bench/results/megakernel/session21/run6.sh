# session 21 run 6 (H200): the cost model's fixed costs a stage and a (tile, K part) above batch 1 (search.py,
# fitted to runs 4-5). Batch-1 plans are unchanged; plans at batch 4-16 change. The batch tests (plans from the
# search on this card) and the decode benchmark's MegaKernel rows at batch 2-16 on the new plans.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90 EGT_GEMV_ARCHS=90
timeout 150 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "tensor_core_int4_batches or dense_tensor_core_batches" 2>&1 | tail -n 4 | tee $OUT/run6_cuda_tests_batches.log
date -u
export EGT_CACHE=.mkcache  # carried: bench/megakernel_prebuild.py qwen2.5-1.5b:2,4,8,16:bf16,w4a16,w4a16-mix:h200
timeout 170 python bench/decode_bench.py --shapes qwen2.5-1.5b --weights bf16,w4a16,w4a16-mix --batches qwen2.5-1.5b:2,4,8,16 --skip torch-graph,hf-eager,hf-static-compile --out $OUT 2>&1 | grep -v Warning | grep "egt-megakernel" | grep -v " b1 "
date -u
