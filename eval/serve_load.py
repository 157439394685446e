"""Load test of `egt serve` on CPU with the default model: p50/p99 latency, requests/s, errors, 5xx, and the
throughput gain of micro-batching at 16 concurrent clients. Writes eval/results/serve.json.

    python eval/serve_load.py                      # 32 clients x 20 s, demo catalog, + 16-client batching A/B
    python eval/serve_load.py --catalog FILE --clients 8 --seconds 5 --out /tmp/serve.json

Each configuration runs in its own real server process on 127.0.0.1 (`python -m egt.serve`), closed-loop clients
(one request in flight per client), ads from the project's demo ads. Requests issued in the window are all awaited;
req/s = completed requests / wall time including that drain. The machine is a shared 2-core CPU: the load average
is recorded beside the figures, and only ratios from the same run are meaningful.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from egt.data import load_demo_ads  # noqa: E402
from egt.serve.loadgen import ServerProcess, run_load  # noqa: E402


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _server_args(a, batching: bool) -> list[str]:
    args = ["--request-timeout-s", str(a.request_timeout), "--max-queue", "512", "--trigger", a.trigger]
    if a.catalog:
        args += ["--catalog", a.catalog]
    if batching:
        args += ["--max-batch", str(a.max_batch), "--batch-wait-ms", str(a.batch_wait_ms)]
    else:
        args += ["--max-batch", "1", "--batch-wait-ms", "0"]
    return args


def _run(url, a, texts, clients, seconds, label):
    load = os.getloadavg()[0]
    b0 = _batch_stats(url)
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {clients} clients x {seconds} s ...", flush=True)
    res = run_load(url, clients=clients, seconds=seconds, texts=texts, k=a.k, timeout=a.request_timeout + 30,
                   drain_s=a.request_timeout + 60)
    res["loadavg_1m_before"] = round(load, 2)
    res["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    b1 = _batch_stats(url)
    n = b1[1] - b0[1]
    res["model_batches"] = int(n)
    res["mean_ads_per_batch"] = round((b1[0] - b0[0]) / n, 2) if n else None
    print(f"    {json.dumps(res)}", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", default=None, help="catalog file (default: the packaged demo catalog)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--compare-clients", type=int, default=16, help="clients for the batching on/off comparison")
    ap.add_argument("--compare-seconds", type=float, default=20)
    ap.add_argument("--rounds", type=int, default=2, help="alternating on/off rounds of the batching A/B")
    ap.add_argument("--no-compare", action="store_true")
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--trigger", default="auto", choices=("auto", "always", "never"))
    ap.add_argument("--request-timeout", type=float, default=1800)
    ap.add_argument("--out", default=str(ROOT / "eval" / "results" / "serve.json"))
    a = ap.parse_args(argv)

    texts = [ad["text"] for ad in load_demo_ads()]
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": _git_commit(),
           "command": "python eval/serve_load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                       "note": "shared 2-core dev machine; other jobs were running (see loadavg per run)"},
           "model": "default (SmolLM2-135M-Instruct, fp32, CPU, torch backend)",
           "catalog": a.catalog or "demo (data/demo_catalog.tsv)", "k": a.k, "trigger": a.trigger,
           "ads": f"{len(texts)} demo ads (data/demo_ads.jsonl), rotated",
           "client_model": "closed loop: each client keeps one request in flight; new requests stop after the "
                           "issue window; all issued requests are awaited; req/s counts the drain"}
    # Both servers stay loaded; only one is driven at a time. The A/B alternates on/off rounds so that a change in
    # the machine's background load hits both arms alike.
    with ServerProcess(_server_args(a, batching=True), start_timeout=1800) as on_srv, \
            ServerProcess(_server_args(a, batching=False), start_timeout=1800) as off_srv:
        # The headline run uses the server's CPU default (max_batch 1, see ServeConfig.max_batch).
        out["load"] = _run(off_srv.url, a, texts, a.clients, a.seconds, "default server (max_batch 1 on CPU)")
        out["load"]["server"] = {"max_batch": 1, "batch_wait_ms": 0}
        rounds = []
        for r in range(0 if a.no_compare else a.rounds):
            on = _run(on_srv.url, a, texts, a.compare_clients, a.compare_seconds, f"A/B round {r + 1}: batching on")
            off = _run(off_srv.url, a, texts, a.compare_clients, a.compare_seconds, f"A/B round {r + 1}: batching off")
            rounds.append({"on": on, "off": off, "gain": _ratio(on["req_per_s"], off["req_per_s"])})
    if rounds:
        on_rate = sum(x["on"]["ok"] for x in rounds) / sum(x["on"]["wall_s"] for x in rounds)
        off_rate = sum(x["off"]["ok"] for x in rounds) / sum(x["off"]["wall_s"] for x in rounds)
        out["batching_ab"] = {
            "clients": a.compare_clients, "seconds_per_round": a.compare_seconds, "rounds": rounds,
            "req_per_s_on": round(on_rate, 3), "req_per_s_off": round(off_rate, 3),
            "throughput_gain": _ratio(on_rate, off_rate),
            "p50_ms_on": _median(x["on"]["p50_ms"] for x in rounds),
            "p50_ms_off": _median(x["off"]["p50_ms"] for x in rounds),
            "note": f"gain = completed req/s with micro-batching (max_batch {a.max_batch}, wait {a.batch_wait_ms} ms) "
                    "/ with max_batch=1, pooled over alternating rounds on the same machine"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")
    ok = out["load"]["errors"] == 0 and out["load"]["http_5xx"] == 0
    return 0 if ok else 1


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def _median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def _batch_stats(url: str) -> tuple[float, float]:
    """(ads, Targeter.target_batch calls) so far, from the server's own Prometheus histogram."""
    import re

    import httpx

    m = httpx.get(url + "/metrics", timeout=60).text
    s = re.search(r"^egt_batch_size_sum (\S+)", m, re.M)
    c = re.search(r"^egt_batch_size_count (\S+)", m, re.M)
    return (float(s.group(1)) if s else 0.0, float(c.group(1)) if c else 0.0)


if __name__ == "__main__":
    sys.exit(main())
