# session 20 run 5 (H200): run 1's trace (padded rows, batch 16) had gate/up's and down's activation staging at ~6 us
# each. Staging changed: NormStage's rms (KS > 1) with a lane's loads all in flight, its parts staged like the
# plain ones (loads in flight, then normalised in place, a thread a column vector), and stage_vecs with up to 12
# vectors a thread in flight (stg; stg6: up to 6, as before). A/B against HEAD's csrc (pad), same plans, then the
# MegaKernel CUDA tests touching batch > 1.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: built here with --build-only --profile h200
P=.device_carry/pad/egt/megakernel/csrc; S6=.device_carry/stg6/csrc
ab() {  # weights batch variants timeout [extra]
  mkdir -p $OUT/$1_b$2
  timeout $4 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights $1 --batch $2 --variants "$3" \
    --out $OUT/$1_b$2 $5 2>&1 | grep -v Warning | tail -n ${6:-8}
  date -u
}
ab w4a16 16 "pad:csrc=$P;stg:;stg6:csrc=$S6;pad2:csrc=$P;stg2:;nc:from=stg,min_chunk=256" 150 "--trace stg" 36
ab w4a16 8 "pad:csrc=$P;stg:;stg6:csrc=$S6" 70
ab w4a16-mix 16 "pad:csrc=$P;stg:" 60
ab bf16 16 "pad:csrc=$P;stg:" 60
ab w4a16 1 "pad:csrc=$P;stg:" 60
export EGT_CACHE=/tmp/egtcache
timeout 300 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "batches or narrow or mix" 2>&1 | tail -n 8 | tee $OUT/run5_cuda_tests_megakernel.log
date -u
