# Next session, first device call. From a checkout of branch `next` (= ofold + tcqk, a8cab82), with .device_carry/
# holding main/csrc (git -C /work/main archive main egt/megakernel/csrc), ofold/csrc (same from branch ofold) and
# this script; carry .device_carry. Full CUDA file first (both branches' tests), then one A/B per shape.
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache
D=.device_carry
timeout 270 python -m pytest tests/test_megakernel_cuda.py -q -p no:cacheprovider 2>&1 | tail -15 | tee $OUT/cuda_tests.log
date -u
V="main:stored=1,csrc=$D/main/csrc;tc:stored=1;fold:stored=1,ofold=1;foldcc:stored=1,ofold=1,csrc=$D/ofold/csrc;main2:stored=1,csrc=$D/main/csrc;tc2:stored=1;fold2:stored=1,ofold=1"
timeout 110 python bench/megakernel_ab.py --shapes smollm2-135m --weights bf16 --variants "$V" --profile h100 --trace fold,main --out $OUT/ab1 2>&1 | grep -v "^  " | sed 's/attn hpi.*fold=1 | //'
timeout 90 python bench/megakernel_ab.py --shapes qwen2.5-0.5b --weights bf16 --variants "$V" --profile h100 --out $OUT/ab2 2>&1 | grep ms@ | sed 's/attn hpi.*fold=1 | //'
V2="main:stored=1,csrc=$D/main/csrc;tc:stored=1;main2:stored=1,csrc=$D/main/csrc;tc2:stored=1"
timeout 100 python bench/megakernel_ab.py --shapes qwen2.5-1.5b,llama-3.2-1b --weights bf16,w4a16 --variants "$V2" --profile h100 --out $OUT/ab3 2>&1 | grep ms@ | sed 's/attn hpi.*fold=1 | //'
date -u
