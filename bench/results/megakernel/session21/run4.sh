# session 21 run 4 (H200): batch-16 gate/up schedules on the final code (session 20's list, with the variants that
# fit in shared memory and the op overrides applied through from=fin: without stored=1 the old harness ignored them),
# and a trace of the stored batch-1 plan (the decode benchmark's).
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: built here with --build-only --profile h200
ab() {  # weights batch variants timeout [extra] [tail]
  mkdir -p $OUT/$1_b$2
  timeout $4 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights $1 --batch $2 --variants "$3" \
    --out $OUT/$1_b$2 $5 2>&1 | grep -v Warning | tail -n ${6:-10}
  rm -f $OUT/$1_b$2/megakernel_ab.md
  date -u
}
ab w4a16 16 "fin:;h3:from=fin,hpi=3;gm16:from=fin,gateup=16/768/4/1/8;gm16b:from=fin,gateup=16/768/3/2/8;gs4:from=fin,gateup=16/384/4/2/8;gw16s2:from=fin,gateup=16/1536/2/1/8;fin2:" 200
ab w4a16 1 "s:stored=1" 60 "--trace s" 32
