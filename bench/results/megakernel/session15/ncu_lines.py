"""Map ncu's per-SASS stall samples to source lines (nvdisasm -g of the same cubin)."""
import csv, gzip, re, sys, collections
d = (sys.argv[1] if len(sys.argv) > 1 else __import__('os').path.dirname(__file__) or '.')
rows = list(csv.reader(gzip.open(f"{d}/ncu_source_sass.csv.gz", "rt")))
hdr = rows[1]; data = rows[2:]
ia = hdr.index("Address"); isamp = hdr.index("Warp Stall Sampling (All Samples)")
stall_cols = [i for i, h in enumerate(hdr) if h.startswith("stall_")]
base = int(data[0][ia], 16)
# offset -> (file, line)
loc = {}
cur = None
for l in gzip.open(f"{d}/mk_sass_lines.txt.gz", "rt"):
    m = re.search(r'//## File "([^"]+)", line (\d+)', l)
    if m:
        cur = (m.group(1).split("/")[-1], int(m.group(2))); continue
    m = re.search(r"/\*([0-9a-f]{4,})\*/", l)
    if m and cur: loc.setdefault(int(m.group(1), 16), cur)
def num(x):
    try: return float(x)
    except: return 0.0
tot = collections.Counter(); by_line = collections.defaultdict(collections.Counter); samples = collections.Counter()
inst = collections.Counter()
for r in data:
    off = int(r[ia], 16) - base
    key = loc.get(off, ("?", 0))
    s = num(r[isamp]); samples[key] += s
    inst[key] += num(r[hdr.index("Instructions Executed")])
    for i in stall_cols:
        v = num(r[i]); tot[hdr[i]] += v; by_line[key][hdr[i]] += v
T = sum(samples.values())
print(f"total samples {T:.0f}")
for k, v in tot.most_common(12): print(f"  {k:28s} {v/T*100:5.1f}%")
print("top lines:")
for key, s in samples.most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 25):
    top = ", ".join(f"{k[6:]} {v/s*100:.0f}%" for k, v in by_line[key].most_common(3))
    print(f"  {key[0]}:{key[1]:<5d} {s/T*100:5.1f}%  inst {inst[key]:>10.0f}  {top}")
