# session 20 run 1 (H200): A/B of xspad (session 19's patch, applied on this branch): staged activation rows padded by
# 16 bytes above batch 1, against main's csrc (carried in .device_carry/base), same plans, same run.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: built here with --build-only --profile h200
B=.device_carry/base/egt/megakernel/csrc
ab() {  # weights batch variants timeout
  mkdir -p $OUT/$1_b$2
  timeout $4 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights $1 --batch $2 --variants "$3" \
    --out $OUT/$1_b$2 $5 2>&1 | grep -v Warning | tail -n 14
  date -u
}
ab w4a16 16 "base:csrc=$B;pad:;base2:csrc=$B;pad2:" 200 "--trace pad"
ab w4a16 8 "base:csrc=$B;pad:;base2:csrc=$B;pad2:" 100
ab w4a16-mix 16 "base:csrc=$B;pad:" 90
ab bf16 16 "base:csrc=$B;pad:" 90
