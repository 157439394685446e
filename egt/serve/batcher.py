"""The model thread and the targeting micro-batcher.

Contract:
- `ModelWorker` runs every piece of model work (targeting batches, completion prefill and decode steps) on ONE
  thread, so the engine, its caches and the Targeter are never used concurrently, whatever the Targeter itself
  guarantees. Completions run step by step, so targeting batches interleave with long generations.
- `TargetBatcher.submit(catalog, texts, k)` queues one request's ads and waits for their results. Requests with the
  same (catalog, k) that arrive within `batch_wait_ms` of each other (or while the model is busy) are merged into
  one `Targeter.target_batch` call of up to `max_batch` ads. A request's ads are never split across batches.
- The queue is bounded (`max_queue` ads): `QueueFull` is raised at once instead of queueing. A request that is not
  answered within `request_timeout_s` raises `asyncio.TimeoutError`; if it had not started yet, it is dropped
  from the queue so that the model never works for nobody.
- A batch that raises is retried request by request, so one bad ad fails only its own request.
- Identical ads within one batch are sent to the Targeter once (it is deterministic) and the answer is shared.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger("egt.serve")


class QueueFull(Exception):
    """The bounded queue has no room; the client should retry later."""


class ModelWorker:
    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="egt-model")

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self):
        self._pool.shutdown(wait=True, cancel_futures=False)


@dataclass
class _Job:
    catalog: str
    k: int
    texts: list[str]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class TargetBatcher:
    def __init__(self, worker: ModelWorker, targeters: dict, cfg, metrics, max_batch: int = 16):
        self.worker, self.targeters, self.cfg, self.metrics = worker, targeters, cfg, metrics
        self.max_batch = max_batch
        self._jobs: collections.deque[_Job] = collections.deque()
        self._queued_ads = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self):
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="egt-batcher")

    async def stop(self):
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(RuntimeError("server shutting down"))

    @property
    def queued_ads(self) -> int:
        return self._queued_ads

    async def submit(self, catalog: str, texts: list[str], k: int) -> list:
        if self._queued_ads + len(texts) > self.cfg.max_queue:
            raise QueueFull(f"{self._queued_ads} ads already queued (limit {self.cfg.max_queue})")
        job = _Job(catalog, k, list(texts), asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._set_queued(self._queued_ads + len(texts))
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self.cfg.request_timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            # Not started yet: drop it. Already running: the result is discarded when it arrives.
            if job in self._jobs:
                self._jobs.remove(job)
                self._set_queued(self._queued_ads - len(job.texts))
            if not job.future.done():
                job.future.cancel()
            raise

    def _set_queued(self, n: int):
        self._queued_ads = n
        self.metrics.queue_depth.set(n)

    def _take_batch(self) -> list[_Job]:
        """The oldest job and every later job with the same (catalog, k), up to max_batch ads in all."""
        first = self._jobs[0]
        batch, n = [], 0
        for job in list(self._jobs):
            if (job.catalog, job.k) != (first.catalog, first.k):
                continue
            if batch and n + len(job.texts) > self.max_batch:
                break
            batch.append(job)
            n += len(job.texts)
        for job in batch:
            self._jobs.remove(job)
        self._set_queued(self._queued_ads - n)
        return batch

    async def _loop(self):
        wait_s = self.cfg.batch_wait_ms / 1e3
        while True:
            while not self._jobs:
                self._wake.clear()
                await self._wake.wait()
            if wait_s > 0 and self._queued_ads < self.max_batch:
                # Give concurrent requests a moment to join; don't wait when the model was busy long enough
                # for a full batch to build up.
                await asyncio.sleep(max(0.0, wait_s - (time.perf_counter() - self._jobs[0].queued_at)))
            if not self._jobs:
                continue
            batch = [j for j in self._take_batch() if not j.future.done()]
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Job]):
        targeter = self.targeters[batch[0].catalog]
        texts = [t for job in batch for t in job.texts]
        unique = list(dict.fromkeys(texts))  # the same ad twice in a batch is computed once (results are pure)
        t0 = time.perf_counter()
        try:
            answers = await self.worker.run(targeter.target_batch, unique, batch[0].k)
            by_text = dict(zip(unique, answers))
            results = [by_text[t] for t in texts]
        except Exception as e:  # noqa: BLE001 - isolate the failing request below
            if len(batch) > 1:
                for job in batch:
                    await self._run([job])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(e)
            return
        self.metrics.batch_size.observe(len(unique))
        self.metrics.batch_seconds.observe(time.perf_counter() - t0)
        i = 0
        for job in batch:
            part = results[i: i + len(job.texts)]
            i += len(job.texts)
            if not job.future.done():
                job.future.set_result(part)
