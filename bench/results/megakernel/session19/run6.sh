# session 19 run 6 (H200): the H100's stored bf16 plans of qwen2.5-1.5b at batch 4, 8, 16 (searched before dense
# tensor cores existed: every op on CUDA cores) timed on this card against the search's all-tensor-core plan, same
# run. They override the dense rule on an H100; this card has the same SM (Hopper) and no H100 was lent.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
for b in 4 8 16; do
  mkdir -p $OUT/bf16_b$b
  timeout 150 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights bf16 --batch $b \
    --variants "st:stored=h100;tc:dense=tensor-core;st2:stored=h100;tc2:dense=tensor-core" --out $OUT/bf16_b$b 2>&1 | grep -v Warning | tail -n 5
  date -u
done
