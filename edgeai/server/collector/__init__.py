"""The telemetry collector: MQTT in, the fleet's state in SQLite, Prometheus out.

A pure state machine (:mod:`~edgeai.server.collector.state`) folds each node's messages
into its record; :class:`Collector` wires it to a subscriber (paho, or the in-memory
:class:`MemorySubscriber`), the SQLite :class:`Store` and the metrics server.
:class:`NodeState` is one row of ``edgeai fleet status``.
"""

from edgeai.server.collector.collector import (
    DUPLICATE,
    Collector,
    CollectorConfig,
    FleetReader,
    open_readonly,
)
from edgeai.server.collector.fleet import FleetEvent, FleetView, NodeState
from edgeai.server.collector.metrics import CollectorCounters, MetricsServer, NodeGauges
from edgeai.server.collector.mqtt import MemorySubscriber, PahoSubscriber, Subscriber
from edgeai.server.collector.store import Store, StoreError, open_database

__all__ = [
    "DUPLICATE",
    "Collector",
    "CollectorConfig",
    "CollectorCounters",
    "FleetEvent",
    "FleetReader",
    "FleetView",
    "MemorySubscriber",
    "MetricsServer",
    "NodeGauges",
    "NodeState",
    "PahoSubscriber",
    "Store",
    "StoreError",
    "Subscriber",
    "open_database",
    "open_readonly",
]
