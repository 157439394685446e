# session 22 run 4 (H200): flagged words for attention's input: QKV's epilogue also writes its output as flagged
# words and the attention items (4 blocks at batch 1) spin on their q/k/v rows instead of the grid-wide wait on
# QKV (att, the working tree: only this dependency); llgq = runs 2-3's gate/up + QKV consumers; all = the three.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: built here with --build-only --profile h200
C=.device_carry
V="base:stored=1;att:stored=1,ll=1;llgq:stored=1,ll=1,csrc=$C/llgq/egt/megakernel/csrc;all:stored=1,ll=1,csrc=$C/llall/egt/megakernel/csrc;base2:stored=1;att2:stored=1,ll=1"
ab() {  # shape weights batch variants timeout [extra] [tail]
  mkdir -p $OUT/$1_$2_b$3
  timeout $5 python bench/megakernel_ab.py --shapes $1 --weights $2 --batch $3 --variants "$4" \
    --out $OUT/$1_$2_b$3 $6 2>&1 | grep -v Warning | tail -n ${7:-6}
  rm -f $OUT/$1_$2_b$3/megakernel_ab.md
  date -u
}
ab qwen2.5-1.5b w4a16 1 "$V" 120 "--trace att" 40
ab llama-3.2-1b bf16 1 "$V" 100 "" 6
ab smollm2-135m bf16 1 "$V" 80 "" 6
ab qwen2.5-1.5b w4a16-mix 1 "base:stored=1;att:stored=1,ll=1" 50 "" 2
