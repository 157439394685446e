"""Compute ceiling of the MegaKernel's matvec weight policies, beside the per-SM share of the copy bandwidth.

    python bench/megakernel_ceiling.py [--csrc LABEL=DIR,...] [--threads 256] [--out DIR]

Builds bench/megakernel_ceiling.cu against the opcode headers of each LABEL=DIR (default: this checkout's
egt/megakernel/csrc; another code state's headers, e.g. from `git archive`, give a before/after in one run on one
card), runs it on a full grid, and writes megakernel_ceiling.json and .md to --out. Each case keeps one stage of
weights in shared memory and runs the policy's accumulate() over it: the GB/s per SM it reaches is the most that
policy can consume. Below the per-SM share of a 1 GiB device copy (copy bandwidth / SM count), an op of that
policy is compute-bound in the MegaKernel, and fewer weight bytes (sparsity, INT3) cannot make it faster.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import copy_bandwidth, device_info  # noqa: E402
from egt.megakernel.codegen import nvcc_path  # noqa: E402

HARNESS = ROOT / "bench" / "megakernel_ceiling.cu"


def build(csrc: Path, threads: int, blocks: int, out: Path) -> None:
    major, minor = torch.cuda.get_device_capability()
    cmd = [nvcc_path(), str(HARNESS), f"-I{csrc}", "-O3", "-std=c++17", f"-arch=sm_{major}{minor}",
           f"-DCEIL_BLOCKS={blocks}", f"-DCEIL_THREADS={threads}", "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"nvcc failed for {csrc}:\n{r.stderr[-4000:]}")


def run_cases(binary: Path) -> list[dict]:
    r = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    if r.returncode:
        raise SystemExit(f"{binary} failed: {r.stderr[-2000:]}")
    rows = []
    for line in r.stdout.splitlines():
        if line.startswith("CASE "):
            name, nbytes, us, dense = line[5:].split("|")
            rows.append({"case": name, "stage_bytes": int(nbytes), "us_per_stage": float(us),
                         "dense_weights_per_stage": int(dense)})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csrc", default=f"current={ROOT / 'egt' / 'megakernel' / 'csrc'}",
                    help="LABEL=DIR,...: opcode header sets to compare (first = baseline)")
    ap.add_argument("--threads", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "megakernel"))
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    variants = [tuple(v.split("=", 1)) for v in a.csrc.split(",")]
    bw = copy_bandwidth()
    share = bw / sms
    res = {"device": device_info(), "command": "python bench/megakernel_ceiling.py " + " ".join(sys.argv[1:]),
           "threads": a.threads, "blocks": sms, "copy_GBps": round(bw, 1), "copy_share_GBps_per_sm": round(share, 2),
           "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for label, d in variants:
            binary = Path(tmp) / f"ceiling_{label}"
            build(Path(d), a.threads, sms, binary)
            rows = run_cases(binary)
            for r in rows:
                r["GBps_per_sm"] = round(r["stage_bytes"] / r["us_per_stage"] / 1e3, 2)
                r["vs_copy_share"] = round(r["GBps_per_sm"] / share, 3)
            res["variants"][label] = rows
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "megakernel_ceiling.json").write_text(json.dumps(res, indent=1))
    labels = [v[0] for v in variants]
    base = {r["case"]: r for r in res["variants"][labels[0]]}
    lines = [f"# MegaKernel matvec compute ceilings ({res['device']['card']}, {res['device']['date']})", "",
             f"Command: `{res['command']}`. {a.threads} threads x {sms} blocks, one stage of weights resident in "
             f"shared memory, batch 1, qwen2.5-1.5b tiles. Copy bandwidth {bw:.0f} GB/s = **{share:.1f} GB/s per SM**: "
             "a policy below that share is compute-bound inside the MegaKernel.", "",
             "| case | stage bytes | " + " | ".join(f"{l} us/stage | {l} GB/s/SM | {l} vs copy share" for l in labels)
             + (f" | {labels[-1]} vs {labels[0]}" if len(labels) > 1 else "") + " |",
             "|---|---|" + "---|---|---|" * len(labels) + ("---|" if len(labels) > 1 else "")]
    for case, b in base.items():
        cells = []
        last = None
        for l in labels:
            r = next(x for x in res["variants"][l] if x["case"] == case)
            cells += [f"{r['us_per_stage']:.3f}", f"{r['GBps_per_sm']:.1f}", f"{r['vs_copy_share']:.2f}"]
            last = r
        speed = f" | {b['us_per_stage'] / last['us_per_stage']:.2f}x" if len(labels) > 1 else ""
        lines.append(f"| {case} | {b['stage_bytes']} | " + " | ".join(cells) + speed + " |")
    (out / "megakernel_ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
