"""Check a candidate: outputs against the fp32 model and the labels, size, host latency."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

EVAL_BATCH = 256


def cpu_session(path: str, threads: int | None = None) -> Any:
    """Return an ORT CPU session with all graph optimizations (as the runtime loads it)."""
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def predict(session: Any, x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Run ``session`` on ``x`` in batches and return its first output as float32."""
    name = session.get_inputs()[0].name
    outs = [
        session.run(None, {name: x[i : i + EVAL_BATCH]})[0] for i in range(0, len(x), EVAL_BATCH)
    ]
    return np.concatenate(outs).astype(np.float32)


@dataclass(frozen=True)
class Quality:
    """How a candidate's outputs compare with the fp32 model's."""

    accuracy: float | None  # vs labels, in [0, 1]
    top1_agreement: float
    max_abs_diff: float

    def as_json(self) -> dict[str, object]:
        """Return the numbers as a JSON-ready dict."""
        return {
            "accuracy": self.accuracy,
            "top1_agreement": round(self.top1_agreement, 6),
            "max_abs_logit_diff": round(self.max_abs_diff, 6),
        }


def quality(
    logits: NDArray[np.float32], reference: NDArray[np.float32], labels: NDArray[np.int64] | None
) -> Quality:
    """Compare ``logits`` with the fp32 ``reference`` logits (and ``labels`` if given)."""
    top1 = logits.argmax(axis=1)
    accuracy = None if labels is None else float((top1 == labels).mean())
    agreement = float((top1 == reference.argmax(axis=1)).mean())
    return Quality(accuracy, agreement, float(np.abs(logits - reference).max()))


@dataclass(frozen=True)
class Latency:
    """Host timings: p50/p95 ms at batch 1, samples per second at batch 64."""

    p50_ms_batch1: float
    p95_ms_batch1: float
    throughput_batch64: float

    def as_json(self) -> dict[str, object]:
        """Return the timings as a JSON-ready dict."""
        return {
            "p50_ms_batch1": round(self.p50_ms_batch1, 4),
            "p95_ms_batch1": round(self.p95_ms_batch1, 4),
            "throughput_batch64": round(self.throughput_batch64, 1),
        }


def time_calls(
    call: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> NDArray[np.float64]:
    """Return ``repeats`` wall times of ``call()`` in seconds, after a short warm-up."""
    for _ in range(max(3, repeats // 10)):
        call()
    times = np.empty(repeats)
    for i in range(repeats):
        start = clock()
        call()
        times[i] = clock() - start
    return times


def measure(
    run: Callable[[NDArray[np.float32]], object],
    sample: NDArray[np.float32],
    repeats: int = 200,
    big_batch: int = 64,
) -> Latency:
    """Time ``run`` at batch 1 (``repeats`` calls) and at ``big_batch``."""
    one = np.ascontiguousarray(sample[:1])
    big = np.ascontiguousarray(np.resize(sample, (big_batch, *sample.shape[1:])))
    single = time_calls(lambda: run(one), repeats)
    batched = time_calls(lambda: run(big), max(10, repeats // 10))
    return Latency(
        float(np.percentile(single, 50) * 1e3),
        float(np.percentile(single, 95) * 1e3),
        float(big_batch / np.median(batched)),
    )


Runner = Callable[[NDArray[np.float32]], object]


def spread_pct(values: list[float]) -> float:
    """The range of ``values`` as a percentage of their median: the measured noise."""
    middle = float(np.median(values))
    if middle <= 0:
        return 0.0
    return float((max(values) - min(values)) / middle * 100)


@dataclass(frozen=True)
class Timing:
    """One model's host timings over several interleaved rounds.

    The medians over rounds are what a model "measured"; the spread over rounds (max -
    min, in % of the median) is how much one measurement of it can be trusted.
    """

    rounds: tuple[Latency, ...]

    def median(self) -> Latency:
        """The median over rounds of each timing."""
        return Latency(
            float(np.median([r.p50_ms_batch1 for r in self.rounds])),
            float(np.median([r.p95_ms_batch1 for r in self.rounds])),
            float(np.median([r.throughput_batch64 for r in self.rounds])),
        )

    def throughput_spread_pct(self) -> float:
        """The noise of the throughput at batch 64 over the rounds, in %."""
        return spread_pct([r.throughput_batch64 for r in self.rounds])

    def as_json(self) -> dict[str, object]:
        """Medians (the keys of :class:`Latency`), per-round throughputs and the noise."""
        return {
            **self.median().as_json(),
            "rounds": len(self.rounds),
            "throughput_batch64_rounds": [round(r.throughput_batch64, 1) for r in self.rounds],
            "throughput_spread_pct": round(self.throughput_spread_pct(), 2),
            "p50_ms_batch1_spread_pct": round(
                spread_pct([r.p50_ms_batch1 for r in self.rounds]), 2
            ),
        }


def time_interleaved(
    runners: Mapping[str, Runner], sample: NDArray[np.float32], repeats: int, rounds: int
) -> dict[str, Timing]:
    """Time every runner in ``rounds`` interleaved rounds (A, B, C, A, B, C, ...).

    A noisy neighbour or a clock change during the run then hits every model alike
    instead of deciding the comparison.  ``repeats`` batch-1 calls per model are spread
    over the rounds (at least 20 per round).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, not {rounds}")
    per_round = max(20, repeats // rounds)
    samples: dict[str, list[Latency]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            samples[name].append(measure(run, sample, per_round))
    return {name: Timing(tuple(lats)) for name, lats in samples.items()}


def session_runner(session: Any) -> Runner:
    """Return ``x -> session.run(None, {input: x})``."""
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})
