# session 16 run 6: 8-row tiles for the sparse tensor-core kind (int4-nm-tc). Whole CUDA test file (with the new
# sparse narrow test), then A/B of qwen2.5-0.5b w4a16-mix's down in 8-row tiles.
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache
timeout 380 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider -rs 2>&1 | grep -v "^SKIPPED.*same as w4a16\|^SKIPPED.*needs" | tail -25 | tee $OUT/cuda_tests.log
date -u
V="base:stored=1;d8w:stored=1,down=8/4864/3/1/8;d8:stored=1,down=8/2432/6/1/8;base2:stored=1;d8wb:stored=1,down=8/4864/3/1/8"
timeout 150 python bench/megakernel_ab.py --shapes qwen2.5-0.5b --weights w4a16-mix --variants "$V" --profile h100 --out $OUT/ab 2>&1 | grep ms@
date -u
