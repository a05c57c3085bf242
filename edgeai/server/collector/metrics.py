"""Prometheus metrics of the collector: per-node gauges read at scrape time, message counters.

The per-node gauges are a custom collector (``prometheus_client`` calls ``collect()`` on
every scrape, see ``prometheus_client/registry.py``), so "online" reflects the offline
timeout at the moment of the scrape and a node never leaves a stale labelled series behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector as PromCollector

from edgeai.server.collector.fleet import NodeState


class NodeGauges(PromCollector):
    """Per-node gauges computed from the fleet view on each scrape."""

    def __init__(self, nodes: Callable[[], Sequence[NodeState]]) -> None:
        self._nodes = nodes

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The metric names, for the registry's duplicate check (no samples)."""
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample per node and known value."""
        online, release, epsilon, p95, seen = self._families()
        for n in self._nodes():
            online.add_metric([n.node, n.profile or ""], 1.0 if n.online else 0.0)
            if n.release is not None:
                release.add_metric([n.node], float(n.release))
            if n.epsilon is not None:
                epsilon.add_metric([n.node], n.epsilon)
            if n.p95_ms is not None:
                p95.add_metric([n.node], n.p95_ms / 1000.0)
            if n.last_seen is not None:
                seen.add_metric([n.node], n.last_seen)
        yield from (online, release, epsilon, p95, seen)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "edgeai_fleet_node_online",
                "1 if the node is online (retained status or recent message), else 0.",
                labels=["node", "profile"],
            ),
            GaugeMetricFamily(
                "edgeai_fleet_node_release", "The release the node reports active.", labels=["node"]
            ),
            GaugeMetricFamily(
                "edgeai_fleet_node_epsilon", "Privacy budget ε spent on the node.", labels=["node"]
            ),
            GaugeMetricFamily(
                "edgeai_fleet_node_inference_p95_seconds",
                "The node's p95 inference latency.",
                labels=["node"],
            ),
            GaugeMetricFamily(
                "edgeai_fleet_node_last_seen_timestamp_seconds",
                "Unix time of the node's last message.",
                labels=["node"],
            ),
        )


class CollectorCounters:
    """The collector's message counters, registered in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.messages = Counter(
            "edgeai_collector_messages",
            "Messages stored, by topic kind.",
            ["kind"],
            registry=registry,
        )
        self.duplicates = Counter(
            "edgeai_collector_duplicates",
            "QoS 1 re-deliveries dropped by (node, boot id, seq).",
            registry=registry,
        )
        self.invalid = Counter(
            "edgeai_collector_invalid",
            "Messages dropped because the topic or payload breaks the telemetry contract.",
            registry=registry,
        )
        self.errors = Counter(
            "edgeai_collector_errors",
            "Messages that could not be stored (database errors).",
            registry=registry,
        )

    def unregister(self) -> None:
        """Take the counters out of the registry (so a new collector can use it)."""
        for metric in (self.messages, self.duplicates, self.invalid, self.errors):
            self.registry.unregister(metric)


class MetricsServer:
    """A running ``/metrics`` HTTP endpoint; :meth:`close` stops it."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        server, thread = start_http_server(port, addr=host, registry=registry)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.host = host
        self.port = int(server.server_port)

    @property
    def url(self) -> str:
        """``http://HOST:PORT/metrics``."""
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
