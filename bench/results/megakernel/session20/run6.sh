# session 20 run 6 (H200): final staging change (run 5's KS > 1 NormStage; the fused path and stage_vecs' 6 loads in
# flight as before): the rest of the MegaKernel CUDA file (run 5 ran "batches or narrow or mix" on the stg state),
# then a short A/B against the padded rows of HEAD~ (pad) at batch 16 and 8.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90 EGT_GEMV_ARCHS=90
timeout 230 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "not batches and not narrow and not mix" 2>&1 | tail -n 8 | tee $OUT/run6_cuda_tests_megakernel.log
date -u
export EGT_CACHE=.mkcache
P=.device_carry/pad/egt/megakernel/csrc
for b in 16 8; do
  mkdir -p $OUT/w4a16_b$b
  timeout 55 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights w4a16 --batch $b --variants "pad:csrc=$P;fin:" \
    --out $OUT/w4a16_b$b 2>&1 | grep -v Warning | tail -n 2
  date -u
done
