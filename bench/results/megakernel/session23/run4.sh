# session 23 run 4 (H200): the decode benchmark's MegaKernel rows on the final code (decode.md run 23): batch 1 for
# every shape, batch 2-16 for qwen2.5-1.5b, bf16 / w4a16 / w4a16-mix, stored or searched h200 plans.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: bench/megakernel_prebuild.py for these keys on h200
timeout 480 python bench/decode_bench.py --shapes smollm2-135m,qwen2.5-0.5b,llama-3.2-1b,qwen2.5-1.5b \
  --weights bf16,w4a16,w4a16-mix --batches qwen2.5-1.5b:2,4,8,16 --skip torch-graph,hf-eager,hf-static-compile \
  --out $OUT 2>&1 | grep -v Warning | tail -n 40
date -u
