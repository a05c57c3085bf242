"""A micro-batcher in the sense of Triton's dynamic batcher.

Requests for the same model whose tensors agree on every non-batch dimension are
concatenated along the batch axis (up to ``max_batch_size`` rows), run once in a worker
thread (ONNX Runtime releases the GIL), and the outputs are split back. A batch is formed
as soon as the model is free; with ``max_queue_delay_us`` > 0 the oldest request waits at
most that long for company. A request larger than the maximum, or one for a model whose
first axis is not a free batch axis, runs alone. Triton's semantics:
https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/user_guide/batcher.html
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from edgeai.serving.errors import (
    InferenceFailedError,
    InvalidRequestError,
    ModelNotReadyError,
    QueueFullError,
    ServingError,
)
from edgeai.serving.model import ServedModel
from edgeai.serving.protocol import Array, InferRequest

log = logging.getLogger(__name__)

Runner = Callable[[ServedModel, dict[str, Array]], list[Array]]
# ORT raises pybind11 classes (onnxruntime.capi.onnxruntime_pybind11_state) that subclass
# only Exception; InvalidArgument is the one that means "this input is wrong".
_BAD_INPUT_NAMES = frozenset({"InvalidArgument", "InvalidGraph"})
_MISSES_TO_STOP = 3  # adaptive waits in a row that gathered nobody


def _run_model(model: ServedModel, feeds: dict[str, Array]) -> list[Array]:
    return model.run(feeds)


def translate(exc: Exception) -> ServingError:
    """Map a runtime failure to a serving error: bad input is the client's, the rest ours."""
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, ValueError | TypeError) or type(exc).__name__ in _BAD_INPUT_NAMES:
        return InvalidRequestError(f"the model rejected the input: {exc}")
    return InferenceFailedError(f"inference failed: {type(exc).__name__}: {exc}")


@dataclass
class Pending:
    """A queued request and the future its caller awaits."""

    request: InferRequest
    future: asyncio.Future[list[Array]]
    enqueued: float
    rows: int = field(init=False)
    key: tuple[tuple[int, ...], ...] = field(init=False)

    def __post_init__(self) -> None:
        self.rows = self.request.rows
        self.key = self.request.batch_key


def take_batch(items: deque[Pending], max_rows: int) -> list[Pending]:
    """Pop the next batch from the head of ``items`` (first-in, first-out).

    The batch is the head plus the requests right behind it that share its key and fit in
    ``max_rows``; it stops at the first that does not, so no request is overtaken.
    """
    first = items.popleft()
    batch = [first]
    rows = first.rows
    if rows == 0:
        return batch
    while items:
        nxt = items[0]
        if nxt.rows == 0 or nxt.key != first.key or rows + nxt.rows > max_rows:
            break
        batch.append(items.popleft())
        rows += nxt.rows
    return batch


def merge(batch: list[Pending]) -> dict[str, Array]:
    """Concatenate the batch's inputs along axis 0 (no copy for a batch of one)."""
    if len(batch) == 1:
        return batch[0].request.inputs
    names = batch[0].request.inputs.keys()
    return {n: np.concatenate([p.request.inputs[n] for p in batch]) for n in names}


def split(batch: list[Pending], outputs: list[Array]) -> list[list[Array]]:
    """Slice batched outputs back into one list per request (views, no copies)."""
    if len(batch) == 1:
        return [outputs]
    parts, start = [], 0
    for p in batch:
        parts.append([o[start : start + p.rows] for o in outputs])
        start += p.rows
    return parts


class _Queue:
    def __init__(self) -> None:
        self.items: deque[Pending] = deque()
        self.wake = asyncio.Event()
        self.worker: asyncio.Task[None] | None = None


class MicroBatcher:
    """Per-model request queues that merge compatible requests into batches.

    Parameters
    ----------
    max_batch_size
        Most rows in one merged run.
    max_queue_delay_us
        How long the oldest request may wait for others; 0 batches only what is already
        queued when the model becomes free (Triton's default).
    max_queue_size
        Most requests waiting across all models; beyond it :class:`QueueFullError`.
    runner
        Runs a model on feeds (default: the ORT session); unit tests inject one.
    executor
        Where runs happen; default one thread, so one batch runs at a time and ORT's own
        intra-op threads use the cores.
    clock
        Monotonic seconds, for queue-delay deadlines.
    on_batch
        Called with (rows, requests) after each run, for metrics.
    adaptive_delay_us
        With ``max_queue_delay_us`` 0: how long a request may wait for company while
        waiting pays. Three waits in a row that gather nobody turn waiting off for
        ``probe_every_s``, so a lone client pays the delay three times per probe, while
        concurrent clients (whose requests reach the loop one at a time through the gRPC
        stack, never together) get merged batches. 0: off.
    probe_every_s
        How long the adaptive wait stays off after waits that gathered nobody.
    inline_below_us
        Runs of a model whose recent runs took less than this (moving average) happen on
        the event loop itself: for a model that computes in tens of microseconds the two
        thread hops cost more than the run, and blocking the loop that briefly delays no
        one. 0 always uses the executor.
    """

    def __init__(
        self,
        max_batch_size: int = 32,
        max_queue_delay_us: int = 0,
        max_queue_size: int = 1024,
        *,
        runner: Runner = _run_model,
        executor: ThreadPoolExecutor | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[int, int], None] | None = None,
        inline_below_us: int = 0,
        adaptive_delay_us: int = 0,
        probe_every_s: float = 0.2,
    ) -> None:
        self._adaptive = adaptive_delay_us / 1e6
        self._probe_every = probe_every_s
        # Per model: until when the adaptive wait is off (the last wait found no company).
        self._no_wait_until: weakref.WeakKeyDictionary[ServedModel, float] = (
            weakref.WeakKeyDictionary()
        )
        self._misses: weakref.WeakKeyDictionary[ServedModel, int] = weakref.WeakKeyDictionary()
        self._max = max_batch_size
        self._delay = max_queue_delay_us / 1e6
        self._limit = max_queue_size
        self._runner = runner
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="edgeai-infer")
        self._clock = clock
        self._on_batch = on_batch
        self._inline_below = inline_below_us / 1e6
        # Moving average of run seconds; weak keys so swapped-out models are not kept alive.
        self._run_cost: weakref.WeakKeyDictionary[ServedModel, float] = weakref.WeakKeyDictionary()
        self._queues: dict[ServedModel, _Queue] = {}
        self._depth = 0
        self._closed = False

    @property
    def queue_depth(self) -> int:
        """Requests waiting (not yet running)."""
        return self._depth

    async def submit(self, request: InferRequest) -> list[Array]:
        """Queue ``request`` and return every model output for it, in model order."""
        if self._closed:
            raise ModelNotReadyError("the server is shutting down")
        if self._depth >= self._limit:
            raise QueueFullError(f"the request queue is full ({self._limit}); retry later")
        loop = asyncio.get_running_loop()
        queue = self._queues.get(request.model)
        if queue is None:
            queue = self._queues[request.model] = _Queue()
        future: asyncio.Future[list[Array]] = loop.create_future()
        queue.items.append(Pending(request, future, self._clock()))
        self._depth += 1
        if queue.worker is None:
            queue.worker = loop.create_task(self._work(request.model, queue))
        else:
            queue.wake.set()
        return await future

    async def _work(self, model: ServedModel, queue: _Queue) -> None:
        # One worker per model, alive only while its queue has requests: a swapped-out
        # model's queue drains and disappears with it.
        try:
            while queue.items:
                adaptive = False
                if model.batchable:
                    if self._delay > 0:
                        await self._wait_for_company(queue, self._delay)
                    elif self._adaptive > 0 and self._clock() >= self._no_wait_until.get(model, 0):
                        adaptive = True
                        await self._wait_for_company(queue, self._adaptive)
                batch = take_batch(queue.items, self._max)
                if adaptive:
                    self._judge_wait(model, len(batch))
                self._depth -= len(batch)
                batch = [p for p in batch if not p.future.done()]  # callers that gave up
                if batch:
                    await self._execute(model, batch)
        finally:
            queue.worker = None
            if not queue.items and self._queues.get(model) is queue:
                del self._queues[model]

    def _judge_wait(self, model: ServedModel, requests: int) -> None:
        # A few waits in a row that gathered nobody mean a lone client: stop waiting for a
        # while. One miss is not enough: under load a request now and then arrives alone.
        misses = 0 if requests > 1 else self._misses.get(model, 0) + 1
        self._misses[model] = misses
        if misses >= _MISSES_TO_STOP:
            self._misses[model] = 0
            self._no_wait_until[model] = self._clock() + self._probe_every

    async def _wait_for_company(self, queue: _Queue, delay: float) -> None:
        deadline = queue.items[0].enqueued + delay
        while sum(p.rows for p in queue.items) < self._max:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            queue.wake.clear()
            try:
                await asyncio.wait_for(queue.wake.wait(), remaining)
            except TimeoutError:
                return

    def _run_sliced(self, model: ServedModel, feeds: dict[str, Array]) -> list[Array]:
        """Run a request of more than ``max_batch_size`` rows in slices of that size.

        The runtime's memory grows with the rows of a run and its arena keeps the peak:
        one 7,000-row request took the server from 110 to 290 MB. Slices bound it by the
        batch size, for the same result.
        """
        rows = len(next(iter(feeds.values())))
        step = self._max
        parts = [
            self._runner(model, {n: a[i : i + step] for n, a in feeds.items()})
            for i in range(0, rows, step)
        ]
        return [np.concatenate(outs) for outs in zip(*parts, strict=True)]

    async def _execute(self, model: ServedModel, batch: list[Pending]) -> None:
        feeds = merge(batch)
        cost = self._run_cost.get(model)
        start = time.perf_counter()
        run = self._runner
        if len(batch) == 1 and batch[0].rows > self._max:
            run = self._run_sliced
        try:
            if cost is not None and cost < self._inline_below and run is self._runner:
                outputs = run(model, feeds)
            else:
                loop = asyncio.get_running_loop()
                outputs = await loop.run_in_executor(self._executor, run, model, feeds)
        except Exception as exc:
            if len(batch) > 1:  # rerun one by one so a single bad request fails alone
                for p in batch:
                    await self._execute(model, [p])
                return
            error = translate(exc)
            if isinstance(error, InferenceFailedError):
                log.error("%s", error)
            if not batch[0].future.done():
                batch[0].future.set_exception(error)
            return
        took = time.perf_counter() - start
        self._run_cost[model] = took if cost is None else 0.8 * cost + 0.2 * took
        if self._on_batch is not None:
            self._on_batch(sum(max(p.rows, 1) for p in batch), len(batch))
        for p, part in zip(batch, split(batch, outputs), strict=True):
            if not p.future.done():
                p.future.set_result(part)

    async def close(self) -> None:
        """Refuse new requests, finish the queued ones, release the worker thread."""
        self._closed = True
        workers = [q.worker for q in self._queues.values() if q.worker is not None]
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        if self._own_executor:
            self._executor.shutdown(wait=True)
