"""The federation server's telemetry collector: MQTT in, per-node state and history in SQLite.

Public API::

    CollectorConfig(...)                        the [collector] settings
    Collector(config).start() / .stop()         subscribe and keep the fleet's state
    collector.nodes(), collector.events(...)    the FleetView (edgeai/server/collector/fleet.py)
    collector.serve_metrics(host, port)         Prometheus /metrics (a stoppable server)
    open_readonly(db_path)                      the same view from the file, without MQTT

The collector subscribes to ``edgeai/v1/<fleet>/nodes/+/#`` and ``releases/+`` with QoS 1
and a persistent session (messages published while it is down wait on the broker), drops
what breaks the contract (counted, never a crash), drops QoS 1 duplicates by
``(node, boot_id, seq)`` (a unique index, so a restart does not double-count), and folds
the rest into one record per node (``_collector_state``).  See docs/FLEET.md.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import Field

from edgeai.server.collector import state as fsm
from edgeai.server.collector.fleet import FleetEvent, NodeState
from edgeai.server.collector.metrics import CollectorCounters, MetricsServer, NodeGauges
from edgeai.server.collector.mqtt import PahoSubscriber, Subscriber
from edgeai.server.collector.store import Store, StoreError
from edgeai.telemetry.mqtt import MqttOptions
from edgeai.telemetry.settings import BrokerLogin
from edgeai.telemetry.topics import PREFIX, TelemetryError, decode, parse_topic

__all__ = [
    "Collector",
    "CollectorConfig",
    "FleetReader",
    "StoreError",
    "open_readonly",
]

log = logging.getLogger(__name__)
_DAY_S = 86_400.0

STORED, DUPLICATE, INVALID, IGNORED, ERROR = "stored", "duplicate", "invalid", "ignored", "error"
"""What :meth:`Collector.handle` did with a message."""


class CollectorConfig(BrokerLogin):
    """The ``[collector]`` settings of the federation server."""

    # Stable per collector; on a broker with use_username_as_clientid (ours) the session
    # lives under the user name instead.
    client_id: str | None = None
    db_path: Path = Path("fleet.sqlite")
    # Nodes without a definite retained status ("online", or the "offline" will) count as
    # offline once their last message is older than this; agents send metrics every 60 s.
    offline_after_s: float = Field(180.0, gt=0)
    history_days: float = Field(30.0, gt=0)
    max_history_rows: int = Field(1_000_000, ge=1)
    # MQTT 5 shared subscription group: collectors with the same group (each logged in with
    # its own account) split the fleet's telemetry and events between them, and write one
    # database (docs/FLEET.md, "Scaling out").  None: this collector takes every message.
    shared_group: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    @property
    def filters(self) -> tuple[str, ...]:
        """The subscriptions: every node topic and every release announcement of the fleet.

        With ``shared_group`` the high-volume topics (telemetry, events) are subscribed as
        ``$share/<group>/...``: the broker hands each message to one collector of the group.
        Status, profile and releases stay plain subscriptions: they are retained, and MQTT 5
        never sends retained messages to a shared subscription (spec 4.8.2), so every
        collector gets them (the second copy is a duplicate, refused by the history index).
        """
        base = f"{PREFIX}/{self.fleet}"
        if self.shared_group is None:
            return (f"{base}/nodes/+/#", f"{base}/releases/+")
        share = f"$share/{self.shared_group}/{base}/nodes/+"
        return (
            f"{share}/telemetry",
            f"{share}/events/+",
            f"{base}/nodes/+/status",
            f"{base}/nodes/+/profile",
            f"{base}/releases/+",
        )

    def mqtt_options(self) -> MqttOptions:
        """The paho settings (the client id defaults to ``edgeai-collector-<fleet>``)."""
        return self.options(self.client_id or f"edgeai-collector-{self.fleet}")


class FleetReader:
    """The fleet view read from a collector database (no MQTT); see :func:`open_readonly`."""

    def __init__(
        self, store: Store, offline_after_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self.offline_after_s = offline_after_s
        self._clock = clock

    def nodes(self) -> list[NodeState]:
        """Every node seen, sorted by name, with "online" as of now."""
        now = self._clock()
        return [fsm.node_state(r, now, self.offline_after_s) for r in self._store.records()]

    def events(self, since: float = 0.0, kinds: Sequence[str] = ()) -> list[FleetEvent]:
        """Events with ``ts >= since`` (of the given kinds, or all), oldest first."""
        return self._store.events(since, kinds)

    def releases(self) -> dict[str, dict[str, Any]]:
        """The latest ``releases/<profile>`` announcement per profile."""
        return self._store.releases()

    def close(self) -> None:
        """Close the database."""
        self._store.close()

    def __enter__(self) -> FleetReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_readonly(
    db_path: Path, *, offline_after_s: float = 180.0, clock: Callable[[], float] = time.time
) -> FleetReader:
    """Open a collector database for reading (``edgeai fleet status``).

    Raises
    ------
    StoreError
        If the file is missing, corrupt or not a collector database.
    """
    return FleetReader(Store(db_path, readonly=True), offline_after_s, clock)


class Collector(FleetReader):
    """Subscribes to a fleet's telemetry and keeps its state.

    Parameters
    ----------
    config
        Broker, fleet, database and retention settings.
    transport
        The MQTT subscriber (a :class:`PahoSubscriber` from ``config`` if None).
    clock
        Wall-clock time (offline detection, history retention).
    registry
        Where the Prometheus metrics go (a private registry if None).
    prune_every
        Apply the history bounds after this many stored messages.
    """

    def __init__(
        self,
        config: CollectorConfig,
        transport: Subscriber | None = None,
        clock: Callable[[], float] = time.time,
        *,
        registry: CollectorRegistry | None = None,
        prune_every: int = 256,
    ) -> None:
        # A shared group means other collectors write the same file: read records from it.
        store = Store(config.db_path, shared=config.shared_group is not None)
        super().__init__(store, config.offline_after_s, clock)
        self.config = config
        self._transport = transport or PahoSubscriber(config.mqtt_options())
        self.registry = registry if registry is not None else CollectorRegistry()
        try:
            self._counters = CollectorCounters(self.registry)
            self._gauges = NodeGauges(self.nodes)
            self.registry.register(self._gauges)
        except ValueError:  # "Duplicated timeseries": another collector uses this registry
            self.close()
            raise
        self._prune_every = prune_every
        self._since_prune = 0
        self._lock = threading.Lock()
        self._stats = dict.fromkeys((STORED, DUPLICATE, INVALID, IGNORED, ERROR), 0)
        self._servers: list[MetricsServer] = []
        self._started = self._closed = False
        self._prune()

    def start(self) -> None:
        """Connect and subscribe in the background (idempotent)."""
        if not self._started:
            self._started = True
            self._transport.start(self.config.filters, self.handle)

    def wait_ready(self, timeout_s: float = 10.0) -> bool:
        """Wait until the broker acknowledged the subscriptions."""
        return self._transport.wait_subscribed(timeout_s)

    def is_connected(self) -> bool:
        """Whether the broker connection is up now."""
        return self._transport.is_connected()

    def stop(self) -> None:
        """Disconnect (the broker keeps queuing for the session), stop metrics, close the file."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._transport.stop()
        for server in self._servers:
            server.close()
        self._counters.unregister()
        self.registry.unregister(self._gauges)
        self.close()

    def __enter__(self) -> Collector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_metrics(self, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
        """Serve ``/metrics`` over HTTP (port 0: any free one); :meth:`stop` stops it too."""
        server = MetricsServer(self.registry, host, port)
        self._servers.append(server)
        return server

    def stats(self) -> dict[str, int]:
        """How many messages were stored, duplicate, invalid, ignored, or failed to store."""
        with self._lock:
            return dict(self._stats)

    # -- messages (paho's network thread) ---------------------------------------------------

    def handle(self, topic: str, payload: bytes, retain: bool = False) -> str:
        """Process one message; returns what happened to it (never raises)."""
        del retain  # retained or live, a message is folded in by its own timestamp
        try:
            outcome, kind = self._handle(topic, payload)
        except (StoreError, sqlite3.Error) as exc:
            log.error("collector: cannot store a message on %s: %s", topic, exc)
            outcome, kind = ERROR, ""
        except Exception:  # a thread boundary: paho's loop must survive anything
            log.exception("collector: unexpected failure on %s", topic)
            outcome, kind = ERROR, ""
        with self._lock:
            self._stats[outcome] += 1
        if outcome == STORED:
            self._counters.messages.labels(kind).inc()
        elif outcome == DUPLICATE:
            self._counters.duplicates.inc()
        elif outcome == INVALID:
            self._counters.invalid.inc()
        elif outcome == ERROR:
            self._counters.errors.inc()
        return outcome

    def _handle(self, topic: str, payload: bytes) -> tuple[str, str]:
        if not payload:
            return IGNORED, ""  # an operator clearing a retained topic
        try:
            parsed = parse_topic(topic)
        except TelemetryError as exc:
            log.debug("collector: dropped: %s", exc)
            return INVALID, ""
        if parsed.fleet != self.config.fleet:
            return INVALID, ""
        if parsed.kind == "cmd":
            return IGNORED, ""  # the server's own commands to nodes
        now = self._clock()
        try:
            if parsed.kind == "releases":
                body = _release_body(payload)
                if body is None or parsed.name is None:
                    return INVALID, ""
                self._store.put_release(parsed.name, body, now)
                return STORED, parsed.kind
            env = decode(payload)
            if env.node != parsed.node:
                raise TelemetryError(f"envelope node {env.node!r} on {parsed.node!r}'s topic")
            new = self._store.ingest(parsed, env, now)
        # ValueError: NaN/Infinity in a body; RecursionError: absurdly nested JSON.
        except (TelemetryError, ValueError, RecursionError) as exc:
            log.debug("collector: dropped a message on %s: %s", topic, exc)
            return INVALID, ""
        if not new:
            return DUPLICATE, ""
        self._since_prune += 1
        if self._since_prune >= self._prune_every:
            self._prune()
        return STORED, parsed.kind

    def _prune(self) -> None:
        self._since_prune = 0
        older_than = self._clock() - self.config.history_days * _DAY_S
        removed = self._store.prune(older_than, self.config.max_history_rows)
        if removed:
            log.debug("collector: pruned %d history rows", removed)

    def history_rows(self) -> int:
        """How many history rows the database holds (bounded by the config)."""
        return self._store.history_rows()


def _release_body(payload: bytes) -> dict[str, Any] | None:
    """A release announcement: an envelope's body, or a plain JSON object."""
    try:
        return dict(decode(payload).body)
    except TelemetryError:
        pass
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
