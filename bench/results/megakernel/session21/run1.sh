# session 21 run 1 (H200): B fragments in one 16-byte load a half-quad. The "tc" INT4 chunks now take a quad's
# columns in operands.py `_quad_columns` order (16 and 4 rows a warp), so lane t's B fragments of two k-steps are
# 8 consecutive columns of x; batch rows past NB load the last row instead of a predicated zero; 4 rows a warp
# (batch-1 down) get their own loop (`frag_quads`, two chains, one per 32-column block). SASS of the batch-1 plan:
# one-matrix quad loop 92 -> 67 instructions, gate/up 141 -> 116, down 108-136 -> 72.
# base = HEAD's csrc with this checkout's packing: its logits are wrong by construction (columns permuted), its
# time is valid (no data-dependent control flow in the matvecs). perm2 = the same with the quad loops unrolled 2x.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: built here with --build-only --profile h200
B=.device_carry/base/egt/megakernel/csrc; P2=.device_carry/perm2
ab() {  # weights batch variants timeout [extra] [tail]
  mkdir -p $OUT/$1_b$2
  timeout $4 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights $1 --batch $2 --variants "$3" \
    --out $OUT/$1_b$2 $5 2>&1 | grep -v Warning | tail -n ${6:-8}
  rm -f $OUT/$1_b$2/megakernel_ab.md
  date -u
}
ab w4a16 1 "base:csrc=$B;perm:;perm2:csrc=$P2;base2:csrc=$B;perm_2:;perm2_2:csrc=$P2" 170 "--trace perm" 40
ab w4a16-mix 1 "base:csrc=$B;perm:;perm2:csrc=$P2" 90
ab w4a16 16 "base:csrc=$B;perm:;perm2:csrc=$P2" 110
ab w4a16 8 "base:csrc=$B;perm:;perm2:csrc=$P2" 90
ab bf16 1 "base:csrc=$B;perm:" 60
