# session 18 run 1 (H200): INT4 on tensor cores above batch 2 (16 rows a warp: batch rows in groups of 8 B columns).
# The new CUDA tests, then a same-run A/B of CUDA-core vs tensor-core INT4 plans of qwen2.5-1.5b at batches 4, 8, 16.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
timeout 200 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "batches or narrow" 2>&1 | tail -8 | tee $OUT/tests.log
date -u
for b in 4 8 16; do
  mkdir -p $OUT/b$b
  timeout 150 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights w4a16 --batch $b \
    --variants "cc:int4=cuda-core;tc:int4=tensor-core;cc2:int4=cuda-core;tc2:int4=tensor-core" --out $OUT/b$b 2>&1 | grep -v Warning | tail -6
  date -u
done
