# session 17 run 8 (H200): the CUDA tests whose plans the final cost model changed on this card (two- and four-layer
# models of qwen2.5-0.5b, llama-3.2-1b and qwen2.5-1.5b searched for the h200 profile); smollm2's picks are unchanged.
date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
timeout 250 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "other_head_groups or narrow" 2>&1 | tail -6 | tee $OUT/cuda_tests_run8.log
date -u
