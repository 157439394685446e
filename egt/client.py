"""`egt.Client`: a small synchronous HTTP client for an `egt serve` server.

Contract:
- `Client(base_url="http://127.0.0.1:8000", api_key=None, timeout=30.0)`; the key defaults to `EGT_API_KEY`.
- `target(text, k)` -> list of entity dicts (`id`, `text`, `score`), best first; `target_batch(texts, k)` -> one such
  list per ad; `targeting(...)` returns the server's full JSON. `complete(prompt, max_tokens)` -> text;
  `stream(prompt, max_tokens)` yields text pieces as the server produces them. `health()`, `metrics()`.
- A non-2xx answer raises `EgtHTTPError` carrying the status, the server's error code and message, and
  `retry_after` (seconds, from a 503). Retrying is left to the caller, who knows its latency budget.
- Thread-safe: it wraps one `httpx.Client` (a connection pool); use it as a context manager or call `close()`.
"""
from __future__ import annotations

import json
import os
from typing import Iterator

import httpx


class EgtHTTPError(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


class Client:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 30.0,
                 max_connections: int = 64):
        key = api_key if api_key is not None else os.environ.get("EGT_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout,
                                  limits=httpx.Limits(max_connections=max_connections,
                                                      max_keepalive_connections=max_connections))

    def __repr__(self) -> str:  # never shows the key
        return f"Client({str(self._http.base_url)!r})"

    # ---- targeting ---------------------------------------------------------------------------------------
    def targeting(self, texts: str | list[str], k: int = 5, catalog: str | None = None) -> dict:
        body: dict = {"text": texts} if isinstance(texts, str) else {"texts": list(texts)}
        body["k"] = k
        if catalog is not None:
            body["catalog"] = catalog
        return self._post("/v1/targeting", body)

    def target(self, text: str, k: int = 5, catalog: str | None = None) -> list[dict]:
        return self.targeting(text, k, catalog)["results"][0]["entities"]

    def target_batch(self, texts: list[str], k: int = 5, catalog: str | None = None) -> list[list[dict]]:
        return [r["entities"] for r in self.targeting(list(texts), k, catalog)["results"]]

    # ---- completions -------------------------------------------------------------------------------------
    def complete(self, prompt: str, max_tokens: int = 16, stop: list[str] | None = None) -> str:
        body = {"prompt": prompt, "max_tokens": max_tokens, **({"stop": stop} if stop else {})}
        return self._post("/v1/completions", body)["choices"][0]["text"]

    def stream(self, prompt: str, max_tokens: int = 16, stop: list[str] | None = None) -> Iterator[str]:
        body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, **({"stop": stop} if stop else {})}
        with self._http.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code >= 300:
                r.read()
                self._raise(r)
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    e = chunk["error"]
                    raise EgtHTTPError(504 if e.get("code") == "timeout" else 500, e.get("code", "error"),
                                       e.get("message", ""))
                for choice in chunk["choices"]:
                    if choice["text"]:
                        yield choice["text"]

    # ---- operations --------------------------------------------------------------------------------------
    def health(self) -> dict:
        r = self._http.get("/health")
        if r.status_code >= 300:
            self._raise(r)
        return r.json()

    def metrics(self) -> str:
        r = self._http.get("/metrics")
        if r.status_code >= 300:
            self._raise(r)
        return r.text

    # ---- plumbing ----------------------------------------------------------------------------------------
    def _post(self, path: str, body: dict) -> dict:
        r = self._http.post(path, json=body)
        if r.status_code >= 300:
            self._raise(r)
        return r.json()

    @staticmethod
    def _raise(r: httpx.Response):
        try:
            err = r.json().get("error", {})
        except (ValueError, AttributeError):
            err = {}
        retry = r.headers.get("retry-after")
        raise EgtHTTPError(r.status_code, err.get("code", "http_error"), err.get("message", r.text[:200]),
                           float(retry) if retry and retry.replace(".", "", 1).isdigit() else None)

    def close(self):
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc):
        self.close()
