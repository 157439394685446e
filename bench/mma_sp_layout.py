"""The mma.sp.m16n8k32 (bf16) operand layout on this GPU: which lane and nibble of the metadata register drive which
(row, 4-column group) of A, for sparsity selectors 0 and 1, and whether unordered index pairs are honoured.

    python bench/mma_sp_layout.py [--from DIR]

Builds and runs bench/mma_sp_layout.cu (or reads the binaries it wrote to DIR) and prints the mapping. The A/B
fragment convention assumed here (and by egt/megakernel/operands.py `_sp_fragments`) is checked first: lane (g, t),
register r of A holds the two kept values of row g + 8 (r & 1), group t + 4 (r >> 1); register r of B holds rows
k = 2t + 8r, 2t + 8r + 1 of column g; D is the m16n8 float32 fragment. Result on an H100 (2026-11-28):
bench/results/megakernel/mma_sp_layout_h100.txt.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def bf16(u: np.ndarray) -> np.ndarray:
    return (u.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def load(d: Path):
    a = np.fromfile(d / "a.bin", dtype=np.uint32)
    b = np.fromfile(d / "b.bin", dtype=np.uint32)
    trials = np.fromfile(d / "trials.bin", dtype=np.uint32).reshape(-1, 34)  # e[32], sel, ordered
    out = np.fromfile(d / "d.bin", dtype=np.float32).reshape(-1, 32, 4)
    aval = np.zeros((16, 8, 2))  # [row, group of the k-step, (first, second) kept value]
    bmat = np.zeros((32, 8))
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for r in range(4):
            aval[g + 8 * (r & 1), t + 4 * (r >> 1)] = bf16(a[lane * 4 + r] & 0xFFFF), bf16(a[lane * 4 + r] >> 16)
            bmat[2 * t + 8 * r, g], bmat[2 * t + 8 * r + 1, g] = bf16(b[lane * 4 + r] & 0xFFFF), bf16(b[lane * 4 + r] >> 16)
    return aval, bmat, trials, out


def expected(aval, bmat, pairs) -> np.ndarray:
    """D [16, 8] when (row, group) uses index pair pairs[row][group]."""
    d = np.zeros((16, 8))
    for row in range(16):
        for j in range(8):
            i0, i1 = pairs[row][j]
            d[row] += aval[row, j, 0] * bmat[4 * j + i0] + aval[row, j, 1] * bmat[4 * j + i1]
    return d


def fragment(dd: np.ndarray) -> np.ndarray:
    d = np.zeros((16, 8))
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        d[g, 2 * t], d[g, 2 * t + 1], d[g + 8, 2 * t], d[g + 8, 2 * t + 1] = dd[lane]
    return d


def analyse(d: Path) -> bool:
    aval, bmat, trials, out = load(d)
    base = [[(0, 1)] * 8 for _ in range(16)]
    want = expected(aval, bmat, base)
    close = lambda x, y: np.allclose(x, y, rtol=1e-5, atol=1e-4)  # noqa: E731
    ok, n = True, 0
    for ordered in (0, 1):
        for sel in (0, 1):
            print(f"== {'mma.sp::ordered_metadata' if ordered else 'mma.sp'}, sparsity selector {sel}")
            good = close(fragment(out[n]), want)
            ok &= good
            print(f"  fragment convention and baseline metadata: {'match' if good else 'MISMATCH'}")
            n += 1
            drives = {}
            for lane in range(32):
                for p in range(8):
                    got = fragment(out[n])
                    n += 1
                    if close(got, want):
                        continue
                    hits = []
                    for row in range(16):
                        for j in range(8):
                            pairs = [list(r) for r in base]
                            pairs[row][j] = (2, 3)
                            if close(got, expected(aval, bmat, pairs)):
                                hits.append((row, j))
                    drives[(lane, p)] = hits
            lanes = sorted({lane for lane, _ in drives})
            print(f"  lanes whose metadata is read: {lanes}")
            for lane in lanes:
                print(f"    lane {lane:2d}: " + ", ".join(f"nibble {p} -> row {h[0][0]} group {h[0][1]}" if len(h) == 1
                                                       else f"nibble {p} -> {h}" for (lx, p), h in sorted(drives.items())
                                                       if lx == lane))
            for pat, pair in ((0x1, (1, 0)), (0xB, (3, 2)), (0x3, (3, 0)), (0x8, (0, 2))):
                good = close(fragment(out[n]), expected(aval, bmat, [[pair] * 8 for _ in range(16)]))
                n += 1
                print(f"  every nibble {pat:#x} read as indices {pair}: {'yes' if good else 'NO'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="src", help="a directory the probe already wrote")
    a = ap.parse_args()
    if a.src:
        sys.exit(0 if analyse(Path(a.src)) else 1)
    from egt.megakernel.codegen import nvcc_path
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "mma_sp_layout"
        subprocess.run([nvcc_path(), "-O2", "-arch=sm_90", "-o", str(exe), str(ROOT / "bench" / "mma_sp_layout.cu")],
                       check=True, capture_output=True)
        subprocess.run([str(exe), tmp], check=True)
        sys.exit(0 if analyse(Path(tmp)) else 1)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
