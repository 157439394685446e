# Session 15, call 6: Nsight Compute of one qwen2.5-1.5b w4a16 decode step (main, stored plan): where the stalls sit.
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader; date -u
export EGT_CACHE=/tmp/egtcache EGT_MK_ARCHS=90
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | tail -1); echo "ncu: $NCU"; $NCU --version | tail -1
timeout 150 python bench/megakernel_ncu.py --steps 2 2>&1 | tail -2   # builds the kernel outside the profiler
date -u
timeout 200 $NCU --clock-control none -k egt_megakernel --launch-skip 5 --launch-count 1 --section SpeedOfLight \
  --section WarpStateStats --section SchedulerStats --section SourceCounters --section Occupancy \
  --section LaunchStats -o /tmp/mk python bench/megakernel_ncu.py 2>&1 | tail -4
date -u
$NCU -i /tmp/mk.ncu-rep > $OUT/ncu_details.txt 2>&1; head -c 300 $OUT/ncu_details.txt
$NCU -i /tmp/mk.ncu-rep --page source --csv --print-source sass 2>&1 | gzip > $OUT/ncu_source_sass.csv.gz
zcat $OUT/ncu_source_sass.csv.gz | head -3 | cut -c1-400
SO=$(ls -t /tmp/egtcache/megakernel/*.so 2>/dev/null | head -1); echo "so: $SO"
mkdir -p /tmp/cub && cd /tmp/cub && cuobjdump -xelf all "$SO" > /dev/null 2>&1; ls /tmp/cub | head
CUB=$(ls /tmp/cub/*.cubin | head -1); nvdisasm -g -c "$CUB" 2>/dev/null | gzip > $OUT/mk_sass_lines.txt.gz
cd - > /dev/null; ls -la $OUT; date -u
