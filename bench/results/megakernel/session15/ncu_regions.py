"""Group ncu stall samples by region of the MegaKernel source (line ranges), and by stall reason."""
import csv, gzip, re, sys, collections
d = (sys.argv[1] if len(sys.argv) > 1 else __import__('os').path.dirname(__file__) or '.')
rows = list(csv.reader(gzip.open(f"{d}/ncu_source_sass.csv.gz", "rt")))
hdr = rows[1]; data = rows[2:]
ia = hdr.index("Address"); isamp = hdr.index("Warp Stall Sampling (All Samples)"); iins = hdr.index("Instructions Executed")
stall_cols = [i for i, h in enumerate(hdr) if h.startswith("stall_") and "Not Issued" not in h]
base = int(data[0][ia], 16)
loc = {}; cur = None
for l in gzip.open(f"{d}/mk_sass_lines.txt.gz", "rt"):
    m = re.search(r'//## File "([^"]+)", line (\d+)', l)
    if m: cur = (m.group(1).split("/")[-1], int(m.group(2))); continue
    m = re.search(r"/\*([0-9a-f]{4,})\*/", l)
    if m and cur: loc.setdefault(int(m.group(1), 16), cur)
def region(f, l):
    if f == "mk_matvec.cuh" and 300 <= l <= 470: return "INT4 tensor-core loop (Q4TC)"
    if f == "mk_matvec.cuh" and 150 <= l <= 175: return "weight copy issue (cp.async loop)"
    if f == "mk_common.cuh" and 50 <= l <= 62: return "cp.async / wait instructions"
    if f == "mk_common.cuh" and 150 <= l <= 185: return "grid dependency wait (poll + sync)"
    if f == "mk_attention.cuh": return "attention"
    if f.startswith("cuda_") or f.startswith("sm_"): return "intrinsics (conversions, loads)"
    return f"{f} other"
def num(x):
    try: return float(x)
    except: return 0.0
S = collections.Counter(); I = collections.Counter(); R = collections.defaultdict(collections.Counter)
for r in data:
    off = int(r[ia], 16) - base
    f, l = loc.get(off, ("?", 0))
    g = region(f, l)
    S[g] += num(r[isamp]); I[g] += num(r[iins])
    for i in stall_cols: R[g][hdr[i][6:]] += num(r[i])
T = sum(S.values()); TI = sum(I.values())
print(f"samples {T:.0f}, warp instructions executed {TI:.3e}")
for g, s in S.most_common():
    top = ", ".join(f"{k} {v/s*100:.0f}%" for k, v in R[g].most_common(4)) if s else ""
    print(f"  {g:38s} samples {s/T*100:5.1f}%  instructions {I[g]/TI*100:5.1f}%  | {top}")
