# session 21 run 5 (H200): run 4 found gate/up at batch 16 1.18x faster as 16 x 1536 stages without K-split
# (gw16s2) than the search's 16 x 384 with K-split 2. Same idea at batch 8, on w4a16-mix and for down / bf16.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=.mkcache EGT_MK_ARCHS=90  # carried: built here with --build-only --profile h200
ab() {  # weights batch variants timeout [extra] [tail]
  mkdir -p $OUT/$1_b$2
  timeout $4 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights $1 --batch $2 --variants "$3" \
    --out $OUT/$1_b$2 $5 2>&1 | grep -v Warning | tail -n ${6:-10}
  rm -f $OUT/$1_b$2/megakernel_ab.md
  date -u
}
G=gateup=16/1536/2/1/8
ab w4a16 16 "fin:;g16:from=fin,$G;dw:from=fin,$G,down=16/2240/2/2/8;dw3:from=fin,$G,down=16/1280/4/7/8;q2:from=fin,$G,qkv=16/1536/2/1/8,o=16/1536/2/1/8" 130
ab w4a16-mix 16 "fin:;g16:from=fin,$G" 60
ab w4a16 8 "fin:;g16:from=fin,$G;gm:from=fin,gateup=16/768/4/1/8" 80
ab bf16 16 "fin:;d4:from=fin,down=16/1120/3/4/8" 60
