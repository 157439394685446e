# session 19 run 8 (H200): run 7's trace put qwen2.5-1.5b w4a16's O op at 22 us of a 142 us layer at batch 16 (2.6 of
# 28 at batch 1). Its plan folds the attention split combine into O's staging (fold=1), whose cost the model takes
# as one L2 trip whatever the batch. One-option A/B: the same plan with fold=0 (last-arriver combine), batch 16 and 8.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: built here with --build-only --profile h200
mkdir -p $OUT/fold_b16 $OUT/fold_b8
timeout 120 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights w4a16 --batch 16 \
  --variants "tc:int4=tensor-core;nf:from=tc,fold=0;tc2:int4=tensor-core;nf2:from=tc,fold=0" --out $OUT/fold_b16 2>&1 | grep -v Warning | tail -n 5
date -u
timeout 70 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights w4a16 --batch 8 \
  --variants "tc:int4=tensor-core;nf:from=tc,fold=0" --out $OUT/fold_b8 2>&1 | grep -v Warning | tail -n 3
date -u
