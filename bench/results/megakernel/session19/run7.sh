# session 19 run 7 (H200): where a layer's time goes at batch 16 against batch 1 (traced layer 2, context 140):
# qwen2.5-1.5b w4a16 at batch 1 and 16, bf16 at batch 16, every op on tensor cores.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
for spec in "w4a16 1 int4" "w4a16 16 int4" "bf16 16 dense"; do
  set -- $spec
  mkdir -p $OUT/trace_$1_b$2
  timeout 110 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights $1 --batch $2 \
    --variants "tc:$3=tensor-core" --trace tc --out $OUT/trace_$1_b$2 2>&1 | grep -v Warning | tail -n 40
  date -u
done
