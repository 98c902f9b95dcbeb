"""Dynamic batching: examples queued within a short window, up to a token budget, run as one batch.

The batcher lives on the event loop and never blocks it: the batch runs on the caller's single worker
thread (`executor`). Examples waiting while a batch runs are taken at once by the next one (their
window has passed). When a batch fails as a whole, each of its examples is run alone, so only the
examples at fault fail. `close()` refuses new work and returns once everything queued is answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from roberta_lora.serving.engine import Encoded, padded_tokens
from roberta_lora.serving.metrics import ServerMetrics

logger = logging.getLogger(__name__)

# run(rows) -> one result per row: a dict, or an Exception for that row alone.
BatchRunner = Callable[[list[Encoded]], list[Any]]


class ShuttingDown(RuntimeError):
    """New work arrived after the server began to shut down."""


@dataclass
class _Item:
    row: Encoded
    future: asyncio.Future
    enqueued: float


class Batcher:
    """Collects examples into batches for `runner`.

    Args:
        runner: answers a list of rows (runs on `executor`).
        executor: a single-thread executor (the engine is not thread-safe).
        window_s: how long the first example of a batch waits for company.
        max_tokens: padded tokens per batch (an example larger than that runs alone).
        metrics: where batch sizes and queue times are recorded.
    """

    def __init__(self, runner: BatchRunner, executor: Executor, window_s: float, max_tokens: int,
                 metrics: ServerMetrics) -> None:
        self.runner, self.executor = runner, executor
        self.window_s, self.max_tokens, self.metrics = window_s, max_tokens, metrics
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def submit(self, rows: list[Encoded]) -> list[dict[str, Any]]:
        """Queue `rows` and wait for their results (raises the first row's error, if any)."""
        if self._closing:
            raise ShuttingDown("the server is shutting down; retry on another instance")
        loop = asyncio.get_running_loop()
        items = [_Item(row, loop.create_future(), time.monotonic()) for row in rows]
        self._queue.extend(items)
        self._wake.set()
        results = await asyncio.gather(*(i.future for i in items), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return list(results)

    async def close(self) -> None:
        """Refuse new work, answer everything queued, stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _loop(self) -> None:
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            delay = self._queue[0].enqueued + self.window_s - time.monotonic()
            if delay > 0 and not self._closing and self._queued_tokens() < self.max_tokens:
                await asyncio.sleep(delay)
            batch = self._take()
            if batch:
                try:
                    await self._run(batch)
                except Exception as error:  # never let the loop die: fail this batch only
                    logger.exception("batch failed")
                    _settle(batch, [error] * len(batch))

    def _queued_tokens(self) -> int:
        return padded_tokens([i.row for i in self._queue])

    def _take(self) -> list[_Item]:
        """The next batch: queued examples in order while the batch, padded to its longest window, stays
        within max_tokens (a first example larger than that runs alone)."""
        batch: list[_Item] = []
        windows = longest = 0
        while self._queue:
            item = self._queue[0]
            if item.future.done():  # the client went away
                self._queue.popleft()
                continue
            row = item.row
            if batch and (windows + row.windows) * max(longest, row.longest) > self.max_tokens:
                break
            batch.append(self._queue.popleft())
            windows, longest = windows + row.windows, max(longest, row.longest)
        return batch

    async def _run(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        for item in batch:
            self.metrics.queue_seconds.observe(now - item.enqueued)
        self.metrics.batch_size.observe(len(batch))
        rows = [i.row for i in batch]
        self.metrics.batch_tokens.observe(padded_tokens(rows))
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.executor, self.runner, rows)
        except Exception:
            if len(batch) == 1:
                raise
            logger.warning("a batch of %d failed; running its examples one by one", len(batch))
            results = []
            for row in rows:  # isolate the example at fault
                try:
                    results.extend(await loop.run_in_executor(self.executor, self.runner, [row]))
                except Exception as error:
                    results.append(error)
        self.metrics.batch_seconds.observe(time.monotonic() - now)
        _settle(batch, results)


def _settle(batch: list[_Item], results: list[Any]) -> None:
    for item, result in zip(batch, results, strict=True):
        if item.future.done():
            continue
        if isinstance(result, BaseException):
            item.future.set_exception(result)
        else:
            item.future.set_result(result)
