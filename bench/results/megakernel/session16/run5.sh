# session 16 run 5: qwen2.5-0.5b w4a16 gate/up tiles (the stored plan has 64-row tiles, 76 blocks) on the landing state
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache
V="base:stored=1;g16:stored=1,gateup=16/896/4/1/8;g16s6:stored=1,gateup=16/896/6/1/8;g32:stored=1,gateup=32/896/3/1/4;base2:stored=1;g16b:stored=1,gateup=16/896/4/1/8"
timeout 200 python bench/megakernel_ab.py --shapes qwen2.5-0.5b --weights w4a16 --variants "$V" --profile h100 --out $OUT/ab 2>&1 | grep ms@
date -u
