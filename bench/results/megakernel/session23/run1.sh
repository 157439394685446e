# session 23 run 1 (H200): the stagers write the tensor-core INT4 sums of x per 32 columns as they stage (no
# separate pass and barrier), and the batch-1 RMSNorm staging sums its squares in registers (new = this checkout)
# against HEAD's csrc (base), same stored plans; plus plan variants of the new code on qwen2.5-1.5b w4a16: gate/up
# in 8-row tiles (better balance: 9 half-tiles a block at most instead of 5 tiles against 4.24 on average), bulk
# copies, attention's min_chunk 64, early gate/up prefill. A trace of `new` on qwen2.5-1.5b w4a16.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: built here with --build-only --profile h200
B=.device_carry/base/egt/megakernel/csrc
ab() {  # shape weights batch variants timeout [extra] [tail]
  mkdir -p $OUT/$1_$2_b$3
  timeout $5 python bench/megakernel_ab.py --shapes $1 --weights $2 --batch $3 --variants "$4" \
    --out $OUT/$1_$2_b$3 $6 2>&1 | grep -v Warning | tail -n ${7:-6}
  rm -f $OUT/$1_$2_b$3/megakernel_ab.md
  date -u
}
V="base:stored=1,csrc=$B;new:stored=1;base2:stored=1,csrc=$B;new2:stored=1"
ab qwen2.5-1.5b w4a16 1 "$V;gu8:stored=1,gateup=8/1536/8/1/8;bulk:stored=1,copy=bulk;mc64:from=new,min_chunk=64;early:stored=1,early=1" 170 "--trace new" 40
ab smollm2-135m bf16 1 "$V;mc64:from=new,min_chunk=64" 70
ab llama-3.2-1b bf16 1 "$V" 70
ab qwen2.5-1.5b w4a16-mix 1 "base:stored=1,csrc=$B;new:stored=1" 50
ab qwen2.5-1.5b w4a16 16 "base:csrc=$B;new:" 50 "" 3
