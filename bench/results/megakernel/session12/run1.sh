set -x
nvidia-smi --query-gpu=name --format=csv,noheader
export EGT_CACHE=/tmp/egtcache
B=.device_carry/base/csrc
timeout 150 python -m pytest tests/test_megakernel_cuda.py -x -q -k "part" 2>&1 | tail -3 | tee $OUT/cuda_part.log
ab() { timeout $1 python bench/megakernel_ab.py --shapes $2 --weights $3 --variants "$4" --profile h100 --out $OUT/ab_$2_$3 2>&1 | grep "ms@\|skip\|Error\|rror:"; }
ab 130 qwen2.5-1.5b w4a16 "stored:stored=1;q2:stored=1,down=16/896/8/2/8;q5:stored=1,down=16/896/8/5/8;q5base:stored=1,down=16/896/8/5/8,csrc=$B;q7:stored=1,down=16/1280/8/7/8;q10:stored=1,down=16/896/8/10/8"
ab 100 llama-3.2-1b w4a16 "stored:stored=1;ks2:stored=1,down=16/2048/5/2/16;ks4:stored=1,down=16/2048/5/4/16;ks4base:stored=1,down=16/2048/5/4/16,csrc=$B;ks8:stored=1,down=16/1024/5/8/16"
ab 80 qwen2.5-1.5b bf16 "stored:stored=1;qb2:stored=1,down=4/4480/3/2/8;qb5:stored=1,down=4/1792/3/5/8;qb5base:stored=1,down=4/1792/3/5/8,csrc=$B"
ab 60 qwen2.5-1.5b w4a16-mix "stored:stored=1;q5:stored=1,down=16/896/8/5/8;q7:stored=1,down=16/1280/8/7/8"
ab 60 qwen2.5-0.5b bf16 "stored:stored=1;storedbase:stored=1,csrc=$B"
ab 60 qwen2.5-0.5b w4a16 "stored:stored=1;ks2:stored=1,down=16/1216/8/2/8;ks4:stored=1,down=16/1216/8/4/8"
