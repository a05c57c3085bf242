"""The node's telemetry: every message goes to the SQLite outbox, a thread pumps it to MQTT.

The caller never waits for the network: :meth:`Telemetry.event` and friends return once the
message is durable in the outbox.  A background thread hands queued rows, oldest first, to
the transport (at most ``transport_window`` unacknowledged at a time, so paho's RAM queue
stays bounded) and deletes rows in batches, one transaction per batch, when their PUBACKs
arrive.  Whatever is not acknowledged when the process ends is sent by the next run.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgeai.telemetry.mqtt import MqttOptions, PahoTransport, Transport, TransportError, Will
from edgeai.telemetry.outbox import Outbox, OutboxError
from edgeai.telemetry.settings import BrokerLogin
from edgeai.telemetry.topics import WILL_SEQ, Envelope, NodeTopics, encode_envelope

log = logging.getLogger(__name__)
# PUBACKs are applied (rows deleted) in batches of this size, or after _ACK_DELAY_S: a
# transaction per PUBACK would cost more than the publish.  Deleting late is safe; at worst
# a crash re-sends a few delivered rows, which subscribers drop as duplicates.
_ACK_BATCH = 64
_ACK_DELAY_S = 0.005
_EVENT_TOPICS_CACHED = 256  # event types whose checked topic is kept (a few in practice)


class TelemetryConfig(BrokerLogin):
    """The ``[telemetry]`` settings of an agent."""

    outbox_path: Path = Path("telemetry-outbox.sqlite")
    outbox_max_messages: int = Field(100_000, ge=1)
    # NORMAL survives process crashes, FULL also power loss (an fsync per message).
    outbox_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    # The newest rows are also kept in RAM so the pump need not read back what was just
    # written (~1 MB for 4096 small messages); older rows are read from the file.
    outbox_memory_rows: int = Field(4096, ge=0)
    metrics_interval_s: float = Field(60.0, ge=0)  # own outbox stats as metrics; 0 = off
    max_inflight: int = Field(20, ge=1, le=65535)  # QoS 1 messages on the wire
    transport_window: int = Field(500, ge=1, le=30_000)  # handed to paho, not yet acked

    def mqtt_options(self, client_id: str) -> MqttOptions:
        """The paho transport settings for one client id."""
        return self.options(client_id, self.max_inflight)


class Telemetry:
    """Durable telemetry of one node.

    Parameters
    ----------
    config
        Broker, fleet and outbox settings.
    node
        The node name (one topic level; also the stable MQTT client id's suffix).
    transport
        The MQTT link; a :class:`~edgeai.telemetry.mqtt.PahoTransport` from ``config`` if None.
    clock
        Wall-clock time for payload timestamps.
    monotonic
        Time for deadlines and the metrics interval.
    boot_id
        This run's id (a fresh UUID if None).
    """

    def __init__(
        self,
        config: TelemetryConfig,
        node: str,
        *,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        boot_id: str | None = None,
    ) -> None:
        self.config = config
        self.topics = NodeTopics(config.fleet, node)
        self.node = node
        self.boot_id = boot_id or uuid.uuid4().hex
        self.client_id = f"edgeai-{config.fleet}-{node}"
        self._clock, self._monotonic = clock, monotonic
        self._transport = transport or PahoTransport(config.mqtt_options(self.client_id))
        self._outbox = Outbox(
            config.outbox_path,
            self.boot_id,
            max_messages=config.outbox_max_messages,
            synchronous=config.outbox_synchronous,
            memory_rows=config.outbox_memory_rows,
        )
        self._cond = threading.Condition()
        # Appended by paho's thread, drained by the pump: deque appends and pops are atomic, so
        # a PUBACK costs the network thread (the bottleneck) no lock.
        self._acks: deque[tuple[int, int]] = deque()
        # New rows wake the pump only while the transport holds fewer than this; above it the
        # pump is woken by PUBACK batches anyway and tops the window up then.
        self._low_water = max(config.transport_window // 2, 1)
        self._inflight: dict[int, int] = {}  # transport handle -> outbox row id
        self._last_sent = 0
        self._dirty = True
        self._connections = 0
        self._reconnected = False
        self._stopping = False
        self._delivered = 0
        self._rejected = 0
        self._last_status: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._final_stats: dict[str, Any] | None = None
        self._event_topics: dict[str, str] = {}

    # -- the caller's side -------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background and start pumping the outbox (idempotent)."""
        if self._thread is not None:
            return
        self._transport.set_callbacks(self._on_ack, self._on_connection)
        will = Envelope(self.node, self.boot_id, WILL_SEQ, self._clock(), {"state": "offline"})
        self._transport.connect(Will(self.topics.status, will.encode()))
        self._thread = threading.Thread(
            target=self._run, name=f"edgeai-telemetry-{self.node}", daemon=True
        )
        self._thread.start()

    def status(self, state: str, **fields: Any) -> int:
        """Publish the node's retained status (e.g. ``"online"``); returns the seq."""
        body = {"state": state, **fields}
        self._last_status = body
        return self._enqueue(self.topics.status, body, retain=True)

    def profile(self, profile: Mapping[str, Any]) -> int:
        """Publish the node's retained device profile; returns the seq."""
        return self._enqueue(self.topics.profile, dict(profile), retain=True)

    def event(self, kind: str, **fields: Any) -> int:
        """Publish an event on ``events/<kind>``; returns the seq."""
        return self._enqueue(self._event_topic(kind), fields)

    def events(self, kind: str, bodies: Iterable[Mapping[str, Any]]) -> list[int]:
        """Publish a burst of events on ``events/<kind>`` with one commit; returns the seqs.

        Durable when it returns, like :meth:`event`; all or none are stored.
        """
        topic = self._event_topic(kind)
        seqs = self._outbox.enqueue_many(
            [(topic, self._payload(dict(body)), False) for body in bodies]
        )
        self._wake_pump()
        return seqs

    def metrics(self, values: Mapping[str, Any]) -> int:
        """Publish metrics, with the outbox's own queued and dropped counts; returns the seq."""
        outbox = {"queued": len(self._outbox), "dropped": self._outbox.dropped}
        return self._enqueue(self.topics.telemetry, {"metrics": dict(values), "outbox": outbox})

    def stats(self) -> dict[str, Any]:
        """Counters: queued and dropped (from the outbox file), delivered, rejected, connected."""
        if self._final_stats is not None:
            return dict(self._final_stats)
        return {
            "queued": len(self._outbox),
            "dropped": self._outbox.dropped,
            "delivered": self._delivered,
            "rejected": self._rejected,
            "connected": self._transport.is_connected(),
            "boot_id": self.boot_id,
        }

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued message is acknowledged (True) or ``timeout_s`` passes."""
        deadline = self._monotonic() + timeout_s
        with self._cond:
            while len(self._outbox) and (left := deadline - self._monotonic()) > 0:
                self._cond.wait(min(left, 0.1))
        return len(self._outbox) == 0

    def stop(self, flush_timeout_s: float = 10.0) -> bool:
        """Publish retained status "stopped", flush until empty or timeout, disconnect.

        Returns True when the outbox was emptied.  What is left stays on disk for the next
        start; in that case the broker is asked to publish the "offline" will, since the
        "stopped" status may not have reached it.
        """
        if self._closed:
            return len(self._outbox) == 0
        flushed = False
        if self._thread is not None:
            self.status("stopped")
            self.flush(flush_timeout_s)
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            self._thread.join()
            flushed = len(self._outbox) == 0
            self._transport.disconnect(send_will=not flushed)
        else:
            flushed = len(self._outbox) == 0
        self._final_stats = {**self.stats(), "connected": False}
        self._closed = True
        self._outbox.close()
        return flushed

    def __enter__(self) -> Telemetry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _event_topic(self, kind: str) -> str:
        topic = self._event_topics.get(kind)
        if topic is None:
            topic = self.topics.event(kind)
            if len(self._event_topics) < _EVENT_TOPICS_CACHED:
                self._event_topics[kind] = topic
        return topic

    def _payload(self, body: dict[str, Any]) -> Callable[[int], bytes]:
        def payload(seq: int) -> bytes:
            return encode_envelope(self.node, self.boot_id, seq, self._clock(), body)

        return payload

    def _enqueue(self, topic: str, body: dict[str, Any], *, retain: bool = False) -> int:
        seq = self._outbox.enqueue(topic, self._payload(body), qos=1, retain=retain)
        self._wake_pump()
        return seq

    def _wake_pump(self) -> None:
        # Only when it may be idle and the transport may run dry; it takes rows in batches.
        if not self._dirty and len(self._inflight) < self._low_water:
            with self._cond:
                self._dirty = True
                self._cond.notify_all()

    # -- transport callbacks (paho's network thread) -----------------------------------

    def _on_ack(self, handle: int, reason: int) -> None:
        acks = self._acks
        acks.append((handle, reason))
        # Wake the pump for a full batch, or when nothing else is in flight (end of burst).
        if len(acks) >= min(_ACK_BATCH, len(self._inflight)):
            with self._cond:
                self._cond.notify_all()

    def _on_connection(self, up: bool) -> None:
        if not up:
            return
        with self._cond:
            self._connections += 1
            # After a reconnect the broker may have published the "offline" will: say again
            # what the status is.
            self._reconnected = self._connections > 1
            self._dirty = True  # rows may have waited for the connection
            self._cond.notify_all()

    # -- the pump thread ---------------------------------------------------------------

    def _run(self) -> None:
        interval = self.config.metrics_interval_s
        next_metrics = self._monotonic() + interval
        while True:
            with self._cond:
                if not (self._dirty or self._reconnected or self._stopping):
                    idle_s = _ACK_DELAY_S if self._acks else min(interval or 1.0, 1.0)
                    self._cond.wait(timeout=idle_s)
                acks = [self._acks.popleft() for _ in range(len(self._acks))]
                reconnected, self._reconnected = self._reconnected, False
                self._dirty = False
                stopping = self._stopping
            try:
                self._apply_acks(acks)
                if stopping:
                    return
                if reconnected and self._last_status is not None:
                    self.status(**self._last_status)
                if interval and self._monotonic() >= next_metrics:
                    next_metrics = self._monotonic() + interval
                    self.metrics({})
                self._fill()
            except (OutboxError, TransportError):
                log.exception("telemetry pump failed; retrying in a second")
                time.sleep(1.0)

    def _apply_acks(self, acks: list[tuple[int, int]]) -> None:
        ids = []
        for handle, reason in acks:
            row_id = self._inflight.pop(handle, None)
            if row_id is None:
                continue
            if reason >= 0x80:  # MQTT 5 failure, e.g. 135 not authorized: retrying won't help
                self._rejected += 1
                log.warning("broker rejected telemetry row %d with reason code %d", row_id, reason)
            else:
                self._delivered += 1
            ids.append(row_id)
        if ids:
            self._outbox.ack(ids)
            with self._cond:
                self._cond.notify_all()  # stop() waits for the outbox to empty

    def _fill(self) -> None:
        free = self.config.transport_window - len(self._inflight)
        # While disconnected rows stay in the outbox, where the bound and drop count apply,
        # rather than piling up in paho's RAM queue.
        if free <= 0 or not self._transport.is_connected():
            return
        for row in self._outbox.pending(free, after_id=self._last_sent):
            handle = self._transport.publish(row.topic, row.payload, row.qos, row.retain)
            self._inflight[handle] = row.id
            self._last_sent = row.id
