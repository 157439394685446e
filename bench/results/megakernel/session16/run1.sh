# session 16 run 1: narrow tensor-core INT4 tiles (RPW 8 / 4). CUDA tests of the new path, then A/B per shape.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache
timeout 200 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -k "narrow or (w4a16-tc and step_matches)" 2>&1 | tail -15 | tee $OUT/cuda_narrow.log
date -u
V="base:stored=1;d4:stored=1,down=4/1792/8/1/8;d4w:stored=1,down=4/8960/3/1/8;d4o4:stored=1,down=4/1792/8/1/8,o=4/1536/4/1/8;d4o4g8:stored=1,down=4/1792/8/1/8,o=4/1536/4/1/8,gateup=8/1536/4/1/8;d4o4g4:stored=1,down=4/1792/8/1/8,o=4/1536/4/1/8,gateup=4/1536/4/1/8;base2:stored=1;d4o4b:stored=1,down=4/1792/8/1/8,o=4/1536/4/1/8"
timeout 200 python bench/megakernel_ab.py --shapes qwen2.5-1.5b --weights w4a16 --variants "$V" --profile h100 --out $OUT/ab1 2>&1 | grep -v "^  " | tail -30
date -u
V2="base:stored=1;d8:stored=1,down=8/2432/6/1/8;d4:stored=1,down=4/4864/3/1/8;d8g8:stored=1,down=8/2432/6/1/8,gateup=8/896/4/1/8;base2:stored=1"
timeout 110 python bench/megakernel_ab.py --shapes qwen2.5-0.5b --weights w4a16 --variants "$V2" --profile h100 --out $OUT/ab2 2>&1 | grep ms@
V3="base:stored=1;q8:stored=1,qkv=8/2048/3/1/16;base2:stored=1"
timeout 80 python bench/megakernel_ab.py --shapes llama-3.2-1b --weights w4a16 --variants "$V3" --profile h100 --out $OUT/ab3 2>&1 | grep ms@
date -u
