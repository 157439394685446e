# session 16 run 2: narrow tensor-core tiles on the ops whose 16-row tiles leave SMs idle (A/B, stored plans + one op)
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache
V="base:stored=1;d8:stored=1,down=8/1536/8/1/8;d4:stored=1,down=4/1536/8/1/8;d4s:stored=1,down=4/1536/4/1/8;base2:stored=1;d8b:stored=1,down=8/1536/8/1/8;d4b:stored=1,down=4/1536/8/1/8"
timeout 150 python bench/megakernel_ab.py --shapes smollm2-135m --weights w4a16 --variants "$V" --profile h100 --out $OUT/ab1 2>&1 | grep ms@
date -u
V2="base:stored=1;d8:stored=1,down=8/2432/6/1/8;d8w:stored=1,down=8/4864/3/1/8;d8s:stored=1,down=8/2432/4/1/8;d4:stored=1,down=4/4864/3/1/8;base2:stored=1;d8b:stored=1,down=8/2432/6/1/8;d8wb:stored=1,down=8/4864/3/1/8"
timeout 170 python bench/megakernel_ab.py --shapes qwen2.5-0.5b --weights w4a16 --variants "$V2" --profile h100 --out $OUT/ab2 2>&1 | grep ms@
date -u
V3="base:stored=1;d4w:stored=1,down=4/8960/3/1/8;d4w4:stored=1,down=4/8960/4/1/8;base2:stored=1;d4wb:stored=1,down=4/8960/3/1/8"
timeout 150 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights w4a16 --variants "$V3" --profile h100 --out $OUT/ab3 2>&1 | grep ms@
date -u
