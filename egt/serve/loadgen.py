"""Start a real `egt serve` process on loopback and drive it with concurrent clients (tests and eval/serve_load.py).

Contract:
- `ServerProcess(args, env)` runs `python -m egt.serve --host 127.0.0.1 --port <free port> ARGS` (or
  `python -m egt.cli serve ...` with `cli=True`), waits for GET /health (bounded), exposes `.url` and `.log()`,
  and on exit sends SIGTERM and waits (bounded) for a clean exit, killing it only as a last resort.
- `run_load(url, clients, seconds, texts, k)` is a closed loop: each client thread sends one targeting request at a
  time, rotating through `texts`, and stops issuing new ones after `seconds`; requests already sent are awaited
  (up to `drain_s`). Returns counts by status, errors, p50/p90/p99 latency and completed requests per second of
  wall time (the drain included, so the rate is not flattered).
- Only loopback addresses; every loop has a deadline.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, args: list[str] = (), env: dict | None = None, cli: bool = False, start_timeout: float = 900,
                 cwd: str | None = None):
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        entry = ["-m", "egt.cli", "serve"] if cli else ["-m", "egt.serve"]
        self.cmd = [sys.executable, *entry, "--host", LOOPBACK, "--port", str(self.port), *args]
        self.env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.start_timeout, self.cwd = start_timeout, cwd
        self._logf = tempfile.NamedTemporaryFile("w+", prefix="egt-serve-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        self.proc = subprocess.Popen(self.cmd, stdout=self._logf, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.cwd, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} during start:\n{self.log()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not healthy within {self.start_timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return Path(self._logf.name).read_text(errors="replace")

    def terminate(self):
        """Send SIGTERM (graceful shutdown) without waiting."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 120) -> int | None:
        if self.proc is None:
            return None
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # only this process, by its own handle
            return self.proc.wait(10)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        try:
            os.unlink(self._logf.name)
        except OSError:
            pass


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    i = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[i]


def run_load(url: str, clients: int, seconds: float, texts: list[str], k: int = 5, api_key: str | None = None,
             timeout: float = 600, drain_s: float = 900, path: str = "/v1/targeting") -> dict:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    lock = threading.Lock()
    lat: list[float] = []
    status: dict[str, int] = {}
    errors: list[str] = []
    t_start = time.perf_counter()
    stop_at = t_start + seconds

    def client(cid: int):
        i = cid
        with httpx.Client(base_url=url, headers=headers, timeout=timeout) as c:
            while time.perf_counter() < stop_at:
                body = {"text": texts[i % len(texts)], "k": k}
                i += clients
                t0 = time.perf_counter()
                try:
                    r = c.post(path, json=body)
                    code = str(r.status_code)
                    ok = r.status_code == 200 and len(r.json()["results"][0]["entities"]) > 0
                except (httpx.HTTPError, ValueError, KeyError) as e:
                    code, ok = type(e).__name__, False
                dt = time.perf_counter() - t0
                with lock:
                    status[code] = status.get(code, 0) + 1
                    if ok:
                        lat.append(dt)
                    else:
                        errors.append(code)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    deadline = stop_at + drain_s
    for t in threads:
        t.join(max(0.0, deadline - time.perf_counter()))
    wall = time.perf_counter() - t_start
    hung = sum(t.is_alive() for t in threads)
    n = len(lat)
    return {"clients": clients, "issue_window_s": seconds, "wall_s": round(wall, 2), "requests": n + len(errors),
            "ok": n, "errors": len(errors) + hung, "clients_still_waiting": hung, "status_counts": status,
            "http_5xx": sum(v for s, v in status.items() if s.startswith("5")),
            "p50_ms": _ms(percentile(lat, 50)), "p90_ms": _ms(percentile(lat, 90)),
            "p99_ms": _ms(percentile(lat, 99)), "max_ms": _ms(max(lat) if lat else None),
            "req_per_s": round(n / wall, 3) if wall > 0 else None}


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1e3, 1)
