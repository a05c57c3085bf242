"""The micro-batcher: batch forming, merging and splitting, errors, limits, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from edgeai.serving.batcher import MicroBatcher, Pending, take_batch, translate
from edgeai.serving.errors import (
    InferenceFailedError,
    InvalidRequestError,
    ModelNotReadyError,
    QueueFullError,
)
from edgeai.serving.model import ServedModel, served_from_session
from edgeai.serving.protocol import InferRequest
from tests.unit.test_serving import FakeSession, fake_model


def request(model: ServedModel, rows: int, width: int = 3, fill: float = 1.0) -> InferRequest:
    a = np.full((rows, width), fill, np.float32)
    b = np.arange(rows * 2, dtype=np.int64).reshape(rows, 2)
    return InferRequest(model, "", {"a": a, "b": b}, model.output_names)


class Recorder:
    """A runner that records the rows of every run and can be held at a gate."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, model: ServedModel, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.gate.wait(10)
        if np.isnan(feeds["a"]).any():
            raise ValueError("NaN in input")  # like ORT on an input the graph refuses
        if (feeds["a"] < -100).any():
            raise RuntimeError("device lost")  # like a failing execution provider
        self.rows.append(len(feeds["a"]))
        return model.run(feeds)


def _pending(rows: int, key: int = 3) -> Pending:
    loop = asyncio.new_event_loop()
    try:
        return Pending(request(fake_model(), rows, key), loop.create_future(), 0.0)
    finally:
        loop.close()


def test_take_batch_is_fifo_stops_at_incompatible_and_respects_max() -> None:
    items = deque([_pending(2), _pending(3), _pending(1, key=4), _pending(1)])
    assert [p.rows for p in take_batch(items, 8)] == [2, 3]  # stops at the other shape
    assert [p.rows for p in take_batch(items, 8)] == [1]
    assert [p.rows for p in take_batch(items, 8)] == [1]
    items = deque([_pending(5), _pending(4), _pending(3)])
    assert [p.rows for p in take_batch(items, 8)] == [5]  # 5 + 4 > 8, and no overtaking
    assert [p.rows for p in take_batch(items, 8)] == [4, 3]
    items = deque([_pending(20), _pending(1)])
    assert [p.rows for p in take_batch(items, 8)] == [20]  # bigger than max: alone


async def _run_all(batcher: MicroBatcher, requests: list[InferRequest]) -> list[Any]:
    try:
        return await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)
    finally:
        await batcher.close()


def test_concurrent_requests_merge_and_split_back_exactly() -> None:
    model, runner = fake_model(), Recorder()
    batches: list[tuple[int, int]] = []
    batcher = MicroBatcher(8, 50_000, runner=runner, on_batch=lambda r, n: batches.append((r, n)))
    reqs = [request(model, rows, fill=float(i)) for i, rows in enumerate([1, 2, 3, 1, 1, 4, 2])]
    results = asyncio.run(_run_all(batcher, reqs))
    for req, got in zip(reqs, results, strict=True):
        want = FakeSession().run(model.output_names, req.inputs)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    assert sum(runner.rows) == 14
    assert len(runner.rows) < len(reqs)
    assert max(runner.rows) <= 8
    assert sum(n for _, n in batches) == len(reqs)


def test_without_delay_requests_batch_while_the_model_is_busy() -> None:
    model, runner = fake_model(), Recorder()
    runner.gate.clear()
    batcher = MicroBatcher(32, 0, runner=runner)

    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(batcher.submit(request(model, 1)))
        await asyncio.sleep(0.05)  # the first run is held at the gate in the worker thread
        rest = [asyncio.ensure_future(batcher.submit(request(model, 1))) for _ in range(5)]
        await asyncio.sleep(0)
        assert batcher.queue_depth == 5
        runner.gate.set()
        return await asyncio.gather(first, *rest)

    async def main() -> list[Any]:
        try:
            return await scenario()
        finally:
            await batcher.close()

    assert len(asyncio.run(main())) == 6
    assert runner.rows == [1, 5]


def test_one_bad_request_fails_alone_and_faults_are_internal() -> None:
    model, runner = fake_model(), Recorder()
    batcher = MicroBatcher(16, 50_000, runner=runner)
    reqs = [
        request(model, 1),
        request(model, 1, fill=np.nan),
        request(model, 2),
        request(model, 1, fill=-1e3),
    ]
    results = asyncio.run(_run_all(batcher, reqs))
    assert isinstance(results[1], InvalidRequestError)
    assert "NaN in input" in str(results[1])
    assert isinstance(results[3], InferenceFailedError)
    assert [len(r[0]) for r in (results[0], results[2])] == [1, 2]


def test_queue_limit_and_closed_batcher_refuse() -> None:
    model, runner = fake_model(), Recorder()
    runner.gate.clear()
    batcher = MicroBatcher(4, 0, max_queue_size=2, runner=runner)

    async def main() -> None:
        held = [asyncio.ensure_future(batcher.submit(request(model, 1)))]
        await asyncio.sleep(0.05)  # it runs, held at the gate; the next two queue
        held += [asyncio.ensure_future(batcher.submit(request(model, 1))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match="queue is full"):
            await batcher.submit(request(model, 1))
        runner.gate.set()
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)
        with pytest.raises(ModelNotReadyError):
            await batcher.submit(request(model, 1))
        await closing
        assert all(len(r[0]) == 1 for r in await asyncio.gather(*held))

    asyncio.run(main())


def test_unbatchable_models_and_requests_run_alone() -> None:
    class FixedBatch(FakeSession):
        def get_inputs(self) -> list[Any]:
            return [SimpleNamespace(name=i.name, type=i.type, shape=[1, *i.shape[1:]])
                    for i in super().get_inputs()]  # fmt: skip

    model, runner = fake_model(), Recorder()
    fixed = served_from_session(FixedBatch(), "fixed", "1", "CPU")
    assert not fixed.batchable
    uneven = InferRequest(
        model, "", {"a": np.ones((2, 3), np.float32), "b": np.ones((3, 2), np.int64)}, ()
    )
    assert uneven.rows == 0
    batcher = MicroBatcher(8, 20_000, runner=runner)
    asyncio.run(_run_all(batcher, [request(fixed, 1), request(fixed, 1), uneven]))
    assert runner.rows == [1, 1, 2]


def test_translate_keeps_serving_errors_and_maps_ort_names() -> None:
    original = QueueFullError("x")
    assert translate(original) is original
    invalid_argument = type("InvalidArgument", (Exception,), {})
    assert isinstance(translate(invalid_argument("bad")), InvalidRequestError)
    assert isinstance(translate(OSError("disk")), InferenceFailedError)


def test_a_cancelled_caller_is_skipped() -> None:
    model, runner = fake_model(), Recorder()
    batcher = MicroBatcher(8, 100_000, runner=runner)

    async def main() -> None:
        try:
            gone = asyncio.ensure_future(batcher.submit(request(model, 3)))
            kept = asyncio.ensure_future(batcher.submit(request(model, 1)))
            await asyncio.sleep(0.01)
            gone.cancel()
            assert len((await kept)[0]) == 1
        finally:
            await batcher.close()

    asyncio.run(main())
    assert runner.rows == [1]


def test_fast_models_run_on_the_loop_after_one_timed_run_in_the_thread() -> None:
    model, threads = fake_model(), []

    def runner(m: ServedModel, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        threads.append(threading.current_thread().name)
        return m.run(feeds)

    async def main(batcher: MicroBatcher) -> None:
        try:
            for _ in range(3):
                await batcher.submit(request(model, 1))
        finally:
            await batcher.close()

    asyncio.run(main(MicroBatcher(8, 0, runner=runner, inline_below_us=10**6)))
    assert threads[0].startswith("edgeai-infer")
    assert threads[1:] == [threading.main_thread().name] * 2
    threads.clear()
    asyncio.run(main(MicroBatcher(8, 0, runner=runner, inline_below_us=0)))
    assert all(t.startswith("edgeai-infer") for t in threads)


def test_adaptive_wait_merges_spaced_requests_and_stops_for_a_lone_client() -> None:
    model, runner = fake_model(), Recorder()
    delay = 0.1

    async def spaced(batcher: MicroBatcher) -> None:
        first = asyncio.create_task(batcher.submit(request(model, 1)))
        await asyncio.sleep(delay / 5)  # arrives while the first waits for company
        await asyncio.gather(first, batcher.submit(request(model, 2)))

    async def lone(batcher: MicroBatcher) -> list[float]:
        took = []
        for _ in range(4):
            start = time.perf_counter()
            await batcher.submit(request(model, 1))
            took.append(time.perf_counter() - start)
        return took

    async def main() -> list[float]:
        batcher = MicroBatcher(8, 0, runner=runner, adaptive_delay_us=int(delay * 1e6))
        try:
            await spaced(batcher)
            return await lone(batcher)
        finally:
            await batcher.close()

    took = asyncio.run(main())
    assert runner.rows[0] == 3  # merged although the second came later
    assert all(t >= delay * 0.9 for t in took[:3])  # three fruitless waits ...
    assert took[3] < delay / 2  # ... then a lone client no longer waits
    assert runner.rows[1:] == [1, 1, 1, 1]


def test_without_adaptive_wait_a_later_request_runs_alone() -> None:
    model, runner = fake_model(), Recorder()

    async def main() -> None:
        batcher = MicroBatcher(8, 0, runner=runner)
        try:
            first = asyncio.create_task(batcher.submit(request(model, 1)))
            await asyncio.sleep(0.02)
            await asyncio.gather(first, batcher.submit(request(model, 2)))
        finally:
            await batcher.close()

    asyncio.run(main())
    assert runner.rows == [1, 2]
