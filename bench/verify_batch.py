"""Throughput of `Targeter.target_batch` (requests in lockstep in one cache row) vs one `target` call per ad.

Same model, catalog, ads and trigger; both orders alternate over `--rounds` rounds so load drifts hit both. Reports
ads per second of each and checks that the ranked lists are identical.

  python bench/verify_batch.py --catalog iab --ads 8 --threads 1 --out bench/results/verify_batch.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default="iab")
    ap.add_argument("--ads", type=int, default=8)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--inputs", help="a --dump-inputs file of eval/verify_targeting.py")
    ap.add_argument("--out", default="bench/results/verify_batch.json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from eval import verify_targeting as vt
    from egt.engine import Engine
    from egt.verify import Targeter

    if a.inputs:
        vt.PRELOADED.update(json.loads(Path(a.inputs).read_text()))
    engine = Engine.from_pretrained("default", device=a.device, dtype="fp32")
    cat = vt.load_catalog(a.catalog)
    ads = vt.ads(a.ads)
    t = Targeter(engine, cat)
    t.target_batch(ads[:2], k=a.k)  # warm-up
    seq_s, bat_s, same = [], [], True
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        one = [t.target(ad, k=a.k) for ad in ads]
        seq_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        many = t.target_batch(ads, k=a.k, max_batch=len(ads))
        bat_s.append(time.perf_counter() - t0)
        same &= all([h.id for h in x.entities] == [h.id for h in y.entities] for x, y in zip(one, many))
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": vt.device_name(engine.device),
           "catalog": a.catalog, "ads": len(ads), "k": a.k, "command": "python " + " ".join(sys.argv),
           "sequential_s": seq_s, "batched_s": bat_s,
           "sequential_ads_per_s": len(ads) / min(seq_s), "batched_ads_per_s": len(ads) / min(bat_s),
           "throughput_ratio": min(seq_s) / min(bat_s), "identical_results": bool(same)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
