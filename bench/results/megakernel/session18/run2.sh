# session 18 run 2 (H200): dense bf16/fp16 on tensor cores (DenseTC) and sparse INT4 tensor cores up to batch 8.
# The new and changed CUDA tests, then same-run A/Bs of the CUDA-core and tensor-core kinds at batches 2-16.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
timeout 260 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "batches or narrow" 2>&1 | tail -15 | tee $OUT/tests.log
date -u
for b in 4 16; do
  mkdir -p $OUT/bf16_b$b
  timeout 120 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights bf16 --batch $b \
    --variants "cc:dense=cuda-core;tc:dense=tensor-core;auto:;cc2:dense=cuda-core;tc2:dense=tensor-core" --out $OUT/bf16_b$b 2>&1 | grep -v Warning | tail -6
  date -u
done
for b in 4 8; do
  mkdir -p $OUT/mix_b$b
  timeout 120 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights w4a16-mix --batch $b \
    --variants "cc:int4=cuda-core;tc:int4=tensor-core;cc2:int4=cuda-core;tc2:int4=tensor-core" --out $OUT/mix_b$b 2>&1 | grep -v Warning | tail -5
  date -u
done
