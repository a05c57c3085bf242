"""The agent's metrics: one telemetry sample, and the same numbers as Prometheus gauges."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

# sample key -> (gauge name, help); served on /metrics beside the serving metrics
_GAUGES = {
    "release": ("edgeai_agent_release", "Active release (-1: none)"),
    "epsilon": ("edgeai_agent_epsilon", "DP ε spent on this device"),
    "rounds_joined": ("edgeai_agent_rounds_joined", "Training rounds joined"),
    "supernode_starts": ("edgeai_agent_supernode_starts", "SuperNode starts"),
    "outbox_queued": ("edgeai_agent_outbox_queued", "Telemetry queued in the outbox"),
    "outbox_dropped": ("edgeai_agent_outbox_dropped", "Telemetry dropped (outbox full)"),
}


def sample(
    serving: Mapping[str, Any],
    process: Mapping[str, Any],
    outbox: Mapping[str, Any],
    state: Mapping[str, Any],
) -> dict[str, Any]:
    """One telemetry sample (the body documented in docs/AGENT.md).

    ``serving`` is the inference server's stats, ``process`` CPU and memory, ``outbox`` the
    telemetry counters, ``state`` the agent's own (release, ε, δ, rounds, SuperNode starts).
    """
    starts = state.get("supernode_starts")
    return {
        "inference_count": serving.get("inference_count"),
        "request_count": serving.get("request_count"),
        "p50_ms": serving.get("latency_p50_ms"),
        "p95_ms": serving.get("latency_p95_ms"),
        "queue_depth": serving.get("queue_depth"),
        **process,
        "model_version": serving.get("model_version"),
        "release": state.get("release"),
        "epsilon": state.get("epsilon"),
        "delta": state.get("delta"),
        "rounds_joined": state.get("rounds_joined"),
        "supernode_restarts": max(0, starts - 1) if starts is not None else None,
        "outbox_queued": outbox.get("queued"),
        "outbox_dropped": outbox.get("dropped"),
    }


class AgentGauges:
    """Prometheus gauges of the agent's numbers."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._gauges = {
            key: Gauge(name, doc, registry=registry) for key, (name, doc) in _GAUGES.items()
        }

    def set(self, values: Mapping[str, Any]) -> None:
        """Set every gauge whose key has a number in ``values``."""
        for key, gauge in self._gauges.items():
            value = values.get(key)
            if isinstance(value, int | float):
                gauge.set(value)
