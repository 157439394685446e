# session 19 run 2 (H200): w4a16-mix at batch 16 with N:4 on sparse tensor cores against CUDA cores (same run),
# then the decode bench rows of qwen2.5-1.5b w4a16 and w4a16-mix at batches 12 and 16 (torch-graph now runs the
# standalone sparse GEMV at 9-16 rows instead of expanding the weights).
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90 EGT_GEMV_ARCHS=90
timeout 100 python bench/megakernel_prebuild.py qwen2.5-1.5b:1,12,16:w4a16,w4a16-mix:h200 2>&1 | grep -v Warning | tail -n 6
date -u
mkdir -p $OUT/mix_b16
timeout 170 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights w4a16-mix --batch 16 \
  --variants "cc:int4=cuda-core;tc:int4=tensor-core;cc2:int4=cuda-core;tc2:int4=tensor-core" --out $OUT/mix_b16 2>&1 | grep -v Warning | tail -n 6
date -u
timeout 250 python bench/decode_bench.py --shapes qwen2.5-1.5b --weights w4a16,w4a16-mix --batches qwen2.5-1.5b:12,16 \
  --skip hf-eager,hf-static-compile --out $OUT 2>&1 | grep -v Warning | tail -n 16
date -u
