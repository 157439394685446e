"""The FastAPI application: /v1/targeting, /v1/completions, /v1/models, /health, /metrics, /docs.

Contract:
- `create_app(service)` builds the app around a `Service` (engine, targeters by catalog name, settings, metrics).
  It loads nothing itself, so tests can build it around any object with the Targeter interface.
- Every error is JSON `{"error": {"type", "code", "message"}}` with a 4xx status for client mistakes: 400 invalid
  JSON, 401 missing/wrong API key, 404 unknown catalog or path, 413 body too large, 422 missing or invalid fields
  (text over the token limit, k out of range, too many ads, unsupported completion options), 503 (+ Retry-After)
  when the queue is full, 504 when a request times out. A 500 means a bug in egt and is logged with its traceback.
- With an API key set, every path except /health needs `Authorization: Bearer <key>`, compared in constant time.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batcher import ModelWorker, QueueFull, TargetBatcher
from .completions import GreedyStream, TextDelta
from .config import ServeConfig
from .metrics import Metrics
from .schemas import (CompletionRequest, CompletionResponse, ErrorResponse, TargetingRequest, TargetingResponse)

log = logging.getLogger("egt.serve")

KNOWN_PATHS = ("/v1/targeting", "/v1/completions", "/v1/models", "/health", "/metrics", "/docs", "/openapi.json")
ERROR_RESPONSES = {s: {"model": ErrorResponse} for s in (400, 401, 404, 413, 422, 503, 504)}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class BodyTooLarge(Exception):
    pass


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    kind = ("authentication_error" if status == 401 else "server_overloaded" if status in (503, 504)
            else "server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"error": {"type": kind, "code": code, "message": message}}, status_code=status,
                        headers=headers)


@dataclass
class Service:
    """What the app serves. `tokenizer` is a private copy for request validation on the event-loop thread (HF fast
    tokenizers mutate state on every call and must not be shared with the model thread)."""
    engine: object
    targeters: dict
    cfg: ServeConfig
    model_name: str = "default"
    backend: str = "torch"
    metrics: Metrics = field(default_factory=Metrics)
    tokenizer: object = None
    worker: ModelWorker = field(default_factory=ModelWorker)
    active_streams: int = 0

    def __post_init__(self):
        if self.tokenizer is None and getattr(self.engine, "tokenizer", None) is not None:
            self.tokenizer = copy.deepcopy(self.engine.tokenizer)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]


# ---- ASGI middleware: auth, body limit, metrics -------------------------------------------------------------
class Gate:
    """Outermost layer: counts and times every request, refuses bad keys and oversized bodies before any parsing."""

    def __init__(self, app, service: Service):
        self.app, self.svc = app, service
        key = service.cfg.api_key
        self._expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in KNOWN_PATHS else "other"
        m = self.svc.metrics
        status = {"code": 500}
        t0 = time.perf_counter()

        async def send_tracked(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        m.in_flight.inc()
        try:
            headers = dict(scope["headers"])
            if self._expected is not None and path != "/health":
                got = headers.get(b"authorization", b"")
                if not hmac.compare_digest(got, self._expected):
                    code = "missing_api_key" if not got else "invalid_api_key"
                    resp = error_response(401, code, "a valid 'Authorization: Bearer <key>' header is required",
                                          {"WWW-Authenticate": "Bearer"})
                    return await resp(scope, receive, send_tracked)
            limit = self.svc.cfg.max_body_bytes
            try:
                declared = int(headers.get(b"content-length", b"0"))
            except ValueError:
                declared = 0
            if declared > limit:
                resp = error_response(413, "body_too_large", f"request body over {limit} bytes")
                return await resp(scope, receive, send_tracked)
            seen = {"n": 0}

            async def receive_limited():
                msg = await receive()
                if msg["type"] == "http.request":
                    seen["n"] += len(msg.get("body", b""))
                    if seen["n"] > limit:
                        raise BodyTooLarge()
                return msg

            await self.app(scope, receive_limited, send_tracked)
        finally:
            m.in_flight.dec()
            m.requests.labels(endpoint, str(status["code"])).inc()
            m.latency.labels(endpoint).observe(time.perf_counter() - t0)


# ---- the app -------------------------------------------------------------------------------------------------
def create_app(service: Service) -> FastAPI:
    cfg, m = service.cfg, service.metrics
    batcher_box: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        device = getattr(getattr(service.engine, "device", None), "type", "cuda")
        batcher = TargetBatcher(service.worker, service.targeters, cfg, m, max_batch=cfg.batch_limit(device))
        log.info("micro-batching: up to %d ads per model call, %.1f ms wait", batcher.max_batch, cfg.batch_wait_ms)
        batcher.start()
        batcher_box["b"] = batcher
        yield
        # uvicorn has already let in-flight requests finish before the lifespan ends.
        await batcher.stop()
        service.worker.shutdown()

    app = FastAPI(title="egt", version=_version(), lifespan=lifespan,
                  description="Real-time ad targeting: catalog-constrained generation with prefix-tree parallel "
                              "verification, plus OpenAI-compatible completions.")

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return error_response(400, "invalid_json", "the request body is not valid JSON")
        parts = []
        for e in errs[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{loc}: {e.get('msg', 'invalid')}")
        return error_response(422, "invalid_request", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        if isinstance(exc.__cause__, BodyTooLarge):  # FastAPI wraps errors raised while reading the body
            return error_response(413, "body_too_large", f"request body over {cfg.max_body_bytes} bytes")
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request, exc):
        return error_response(413, "body_too_large", f"request body over {cfg.max_body_bytes} bytes")

    @app.exception_handler(Exception)
    async def _bug(request, exc):
        log.exception("internal error on %s", request.url.path)
        return error_response(500, "internal_error", "internal server error")

    @app.get("/health")
    async def health():
        b = batcher_box.get("b")
        return {"status": "ok", "model": service.model_name, "backend": service.backend,
                "device": str(getattr(service.engine, "device", "")), "catalogs": sorted(service.targeters),
                "queued_ads": b.queued_ads if b else 0}

    @app.get("/metrics")
    async def metrics():
        return Response(m.render(), media_type=m.content_type)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": service.model_name, "object": "model", "owned_by": "egt"}]}

    @app.post("/v1/targeting", response_model=TargetingResponse, responses=ERROR_RESPONSES)
    async def targeting(req: TargetingRequest):
        """Rank catalog entities for one ad (`text`) or a batch (`texts`)."""
        if (req.text is None) == (req.texts is None):
            raise ApiError(422, "invalid_request", "give exactly one of 'text' (one ad) or 'texts' (a batch)")
        texts = [req.text] if req.text is not None else req.texts
        if not texts:
            raise ApiError(422, "invalid_request", "'texts' is empty")
        if len(texts) > cfg.max_ads:
            raise ApiError(422, "too_many_ads", f"{len(texts)} ads in one request; the limit is {cfg.max_ads}")
        if not 1 <= req.k <= cfg.max_k:
            raise ApiError(422, "k_out_of_range", f"k must be in 1..{cfg.max_k}, got {req.k}")
        name = req.catalog if req.catalog is not None else next(iter(service.targeters))
        if name not in service.targeters:
            raise ApiError(404, "unknown_catalog",
                           f"unknown catalog {name!r}; this server has: {', '.join(sorted(service.targeters))}")
        for i, t in enumerate(texts):
            if not t.strip():
                raise ApiError(422, "empty_text", f"ad {i} is empty")
        for i, n in enumerate(service.count_tokens(texts)):
            if n > cfg.max_text_tokens:
                raise ApiError(422, "text_too_long",
                               f"ad {i} has {n} tokens; the limit is {cfg.max_text_tokens}")
        try:
            results = await batcher_box["b"].submit(name, texts, req.k)
        except QueueFull as e:
            m.rejected.labels("queue_full").inc()
            raise ApiError(503, "queue_full", f"server busy: {e}", {"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            m.rejected.labels("timeout").inc()
            raise ApiError(504, "timeout", f"not answered within {cfg.request_timeout_s:g} s") from None
        except ValueError as e:  # the Targeter refused this input
            raise ApiError(422, "invalid_request", str(e).splitlines()[0] if str(e) else "invalid input") from None
        return {"model": service.model_name, "catalog": name, "k": req.k,
                "results": [_result_dict(r) for r in results]}

    @app.post("/v1/completions", response_model=CompletionResponse, responses=ERROR_RESPONSES)
    async def completions(req: CompletionRequest):
        """OpenAI-compatible text completion with greedy decoding; `stream: true` sends server-sent events."""
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts or len(prompts) > cfg.max_prompts:
            raise ApiError(422, "invalid_request", f"give 1..{cfg.max_prompts} prompts, got {len(prompts)}")
        if req.max_tokens is None:
            req.max_tokens = min(16, cfg.max_completion_tokens)
        if not 1 <= req.max_tokens <= cfg.max_completion_tokens:
            raise ApiError(422, "max_tokens_out_of_range",
                           f"max_tokens must be in 1..{cfg.max_completion_tokens}, got {req.max_tokens}")
        if req.temperature not in (None, 0, 0.0):
            raise ApiError(422, "unsupported", "only greedy decoding is served: temperature must be 0 or absent")
        if req.n != 1 or req.echo or req.logprobs is not None:
            raise ApiError(422, "unsupported", "n must be 1; echo and logprobs are not supported")
        if req.model is not None and req.model != service.model_name:
            raise ApiError(404, "unknown_model", f"unknown model {req.model!r}; this server has "
                                                 f"{service.model_name!r}")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4:
            raise ApiError(422, "invalid_request", "at most 4 stop strings")
        ids = service.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        for i, p in enumerate(ids):
            if not p:
                raise ApiError(422, "empty_prompt", f"prompt {i} is empty")
            if len(p) > cfg.max_prompt_tokens:
                raise ApiError(422, "prompt_too_long",
                               f"prompt {i} has {len(p)} tokens; the limit is {cfg.max_prompt_tokens}")
        if service.active_streams >= cfg.max_streams or batcher_box["b"].queued_ads >= cfg.max_queue:
            m.rejected.labels("queue_full").inc()
            raise ApiError(503, "queue_full", "server busy", {"Retry-After": "1"})
        service.active_streams += 1
        released = False

        def release():
            nonlocal released
            if not released:
                released = True
                service.active_streams -= 1

        try:
            run = _Completion(service, ids, req.max_tokens, stop)
            await run.start()
        except BaseException:
            release()
            raise
        if not req.stream:
            try:
                await run.finish()
            finally:
                release()
            return run.response()

        async def events():
            try:
                async for chunk in run.chunks():
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                release()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return _wrap(app, service)


def _wrap(app: FastAPI, service: Service):
    """Return the gated ASGI app but keep FastAPI attributes reachable for tests (`.fastapi`)."""
    gated = Gate(app, service)
    gated.fastapi = app
    return gated


class _Completion:
    """One /v1/completions request: drives a GreedyStream on the model thread, one step per executor job."""

    def __init__(self, service: Service, prompts: list[list[int]], max_tokens: int, stop: list[str]):
        self.svc, self.prompts = service, prompts
        self.stream = GreedyStream(service.engine, prompts, max_tokens)
        eos = getattr(service.engine, "eos_ids", set())
        self.deltas = [TextDelta(service.tokenizer, eos, stop) for _ in prompts]
        self.reason: list[str | None] = [None] * len(prompts)
        self.id = f"cmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.deadline = time.monotonic() + service.cfg.request_timeout_s
        self._pending: list[str] = []
        self._t_first = None

    async def _call(self, fn):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise asyncio.TimeoutError()
        return await asyncio.wait_for(self.svc.worker.run(fn), left)

    async def start(self):
        try:
            await self._call(self.stream.start)
        except ValueError as e:  # e.g. prompt + max_tokens beyond what the engine can hold
            raise ApiError(422, "invalid_request", str(e).splitlines()[0] if str(e) else "invalid input") from None
        except asyncio.TimeoutError:
            self.svc.metrics.rejected.labels("timeout").inc()
            raise ApiError(504, "timeout", f"not answered within {self.svc.cfg.request_timeout_s:g} s") from None
        self._t_first = time.perf_counter()
        self._pending = self._texts()

    def _texts(self) -> list[str]:
        out = []
        for i, d in enumerate(self.deltas):
            if self.reason[i] is not None:
                out.append("")
                continue
            row_done = self.stream.done[i] or self.stream.finished
            out.append(d.update(self.stream.tokens[i], final=row_done))
            if d.stopped or self.stream.done[i]:
                self.reason[i] = "stop"
            elif self.stream.finished:
                self.reason[i] = "length"
        return out

    @property
    def done(self) -> bool:
        return all(r is not None for r in self.reason)

    async def _advance(self) -> list[str]:
        await self._call(self.stream.step)
        return self._texts()

    def _account(self):
        n = sum(len(r) for r in self.stream.tokens)
        m = self.svc.metrics
        m.tokens.inc(n)
        steps = self.stream.steps
        dt = time.perf_counter() - (self._t_first or time.perf_counter())
        if steps > 1 and dt > 0:
            m.tokens_per_second.set((steps - 1) * len(self.prompts) / dt)

    async def finish(self):
        self.texts = list(self._pending)
        try:
            while not self.done:
                for i, t in enumerate(await self._advance()):
                    self.texts[i] += t
        except asyncio.TimeoutError:
            self.svc.metrics.rejected.labels("timeout").inc()
            raise ApiError(504, "timeout", f"not answered within {self.svc.cfg.request_timeout_s:g} s") from None
        finally:
            self._account()

    def response(self) -> dict:
        comp = sum(len(r) for r in self.stream.tokens)
        prompt = sum(len(p) for p in self.prompts)
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.svc.model_name,
                "choices": [{"text": t, "index": i, "logprobs": None, "finish_reason": self.reason[i]}
                            for i, t in enumerate(self.texts)],
                "usage": {"prompt_tokens": prompt, "completion_tokens": comp, "total_tokens": prompt + comp}}

    def _chunk(self, i: int, text: str, reason: str | None) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.svc.model_name,
                "choices": [{"text": text, "index": i, "logprobs": None, "finish_reason": reason}]}

    async def chunks(self):
        """Chunks as tokens are produced; each row's last chunk carries its finish_reason."""
        sent_final = [False] * len(self.prompts)
        texts = self._pending
        try:
            while True:
                for i, t in enumerate(texts):
                    if sent_final[i]:
                        continue
                    if self.reason[i] is not None:
                        sent_final[i] = True
                        yield self._chunk(i, t, self.reason[i])
                    elif t:
                        yield self._chunk(i, t, None)
                if self.done:
                    return
                try:
                    texts = await self._advance()
                except asyncio.TimeoutError:
                    self.svc.metrics.rejected.labels("timeout").inc()
                    yield {"error": {"type": "server_overloaded", "code": "timeout",
                                     "message": f"not finished within {self.svc.cfg.request_timeout_s:g} s"}}
                    return
        finally:
            self._account()


def _result_dict(res) -> dict:
    """A Targeter result as JSON: entities (id, text, score) and its timings."""
    d = res.to_dict() if hasattr(res, "to_dict") else {}
    ents = [{"id": str(h.id), "text": str(h.text), "score": float(h.score)} for h in res.entities]
    timings = d.get("timings")
    if timings is None and dataclasses.is_dataclass(getattr(res, "timings", None)):
        timings = dataclasses.asdict(res.timings)
    return {"entities": ents, "timings": _jsonable(timings or {})}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and x != x:
        return None  # NaN is not JSON
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _version() -> str:
    from egt import __version__

    return __version__
