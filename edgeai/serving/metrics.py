"""Prometheus metrics of the inference server, and the summary the agent's telemetry reads."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edgeai.serving.model import ServedModel

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServingMetrics:
    """Request, latency, batch and model metrics, registered in ``registry``.

    Parameters
    ----------
    registry
        Where the collectors live (the agent passes its own; ``/metrics`` renders it).
    queue_depth
        Read when scraped: requests waiting in the batcher.
    window
        How many recent requests :meth:`stats` summarises.
    """

    def __init__(
        self, registry: CollectorRegistry, queue_depth: Callable[[], int], window: int = 2048
    ) -> None:
        self.registry = registry
        self._requests = Counter(
            "edgeai_serving_requests",
            "Inference-server requests by protocol, endpoint and result code.",
            ["protocol", "endpoint", "code"],
            registry=registry,
        )
        self._latency = Histogram(
            "edgeai_serving_request_latency_seconds",
            "Infer request latency from receipt to response, by protocol.",
            ["protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self._batch = Histogram(
            "edgeai_serving_batch_size",
            "Rows per model execution (merged requests).",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self._batch_requests = Histogram(
            "edgeai_serving_batch_requests",
            "Requests merged into one model execution.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self._inferences = Counter(
            "edgeai_serving_inferences", "Rows inferred (batch elements).", registry=registry
        )
        depth = Gauge(
            "edgeai_serving_queue_depth", "Requests waiting to be batched.", registry=registry
        )
        depth.set_function(lambda: float(queue_depth()))
        self._queue_depth = queue_depth
        self._model = Gauge(
            "edgeai_serving_model_info",
            "The model being served (value 1), by name, version and execution provider.",
            ["name", "version", "provider"],
            registry=registry,
        )
        self._recent: deque[float] = deque(maxlen=window)
        self._counts = {"requests": 0, "inferences": 0, "executions": 0}
        self._version: str | None = None
        self._children: dict[tuple[str, str, str], Any] = {}
        self._latency_children: dict[str, Any] = {}

    def request(self, protocol: str, endpoint: str, code: str, seconds: float | None) -> None:
        """Count one request; ``seconds`` (infer only) feeds the latency histogram."""
        key = (protocol, endpoint, code)
        child = self._children.get(key)
        if child is None:  # labels() costs a lock and a dict build: cache the children
            child = self._children[key] = self._requests.labels(*key)
        child.inc()
        self._counts["requests"] += 1
        if seconds is not None:
            latency = self._latency_children.get(protocol)
            if latency is None:
                latency = self._latency_children[protocol] = self._latency.labels(protocol)
            latency.observe(seconds)
            self._recent.append(seconds)

    def batch(self, rows: int, requests: int) -> None:
        """Record one model execution of ``rows`` rows merged from ``requests`` requests."""
        self._batch.observe(rows)
        self._batch_requests.observe(requests)
        self._inferences.inc(rows)
        self._counts["inferences"] += rows
        self._counts["executions"] += 1

    def model(self, model: ServedModel | None) -> None:
        """Show ``model`` as the one being served (None: nothing loaded)."""
        self._model.clear()
        self._version = None if model is None else model.version
        if model is not None:
            self._model.labels(model.name, model.version, model.provider).set(1)

    def stats(self) -> dict[str, Any]:
        """Counts, p50/p95 latency (ms) over the recent window, queue depth, model version."""
        recent = np.fromiter(self._recent, dtype=np.float64)
        p50, p95 = np.percentile(recent, [50, 95]) * 1e3 if recent.size else (None, None)
        return {
            "request_count": self._counts["requests"],
            "inference_count": self._counts["inferences"],
            "execution_count": self._counts["executions"],
            "latency_p50_ms": None if p50 is None else float(p50),
            "latency_p95_ms": None if p95 is None else float(p95),
            "latency_window": int(recent.size),
            "queue_depth": self._queue_depth(),
            "model_version": self._version,
        }
