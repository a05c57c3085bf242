"""Durable MQTT 5 telemetry: a SQLite outbox in front of a QoS 1 persistent session.

Public API::

    Telemetry(config, node).start(); .status("online"); .event("swap", version="3")
    TelemetryConfig(...)           the [telemetry] settings
    NodeTopics, release_topic, parse_topic, Envelope, decode   the topic/payload contract
    Outbox, Deduplicator           the durable queue and the consumer-side dedup
    Transport, PahoTransport, MemoryTransport                  the MQTT boundary
"""

from edgeai.telemetry.client import Telemetry, TelemetryConfig
from edgeai.telemetry.dedup import Deduplicator
from edgeai.telemetry.mqtt import (
    MemoryTransport,
    MqttOptions,
    PahoTransport,
    Transport,
    TransportError,
    Will,
)
from edgeai.telemetry.outbox import Outbox, OutboxError, Row
from edgeai.telemetry.topics import (
    SCHEMA_VERSION,
    Envelope,
    NodeTopics,
    TelemetryError,
    Topic,
    check_name,
    decode,
    fleet_filter,
    parse_topic,
    release_topic,
)

__all__ = [
    "SCHEMA_VERSION",
    "Deduplicator",
    "Envelope",
    "MemoryTransport",
    "MqttOptions",
    "NodeTopics",
    "Outbox",
    "OutboxError",
    "PahoTransport",
    "Row",
    "Telemetry",
    "TelemetryConfig",
    "TelemetryError",
    "Topic",
    "Transport",
    "TransportError",
    "Will",
    "check_name",
    "decode",
    "fleet_filter",
    "parse_topic",
    "release_topic",
]
