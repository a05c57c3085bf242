"""The narrow MQTT interface telemetry needs, with a paho-mqtt 5 and an in-memory implementation.

:class:`Transport` is all :class:`~edgeai.telemetry.client.Telemetry` knows about MQTT:
connect (with a last will), publish returning a handle, an ack callback per handle,
disconnect, is_connected.  :class:`PahoTransport` speaks MQTT 5 through paho-mqtt 2.x;
:class:`MemoryTransport` is a broker in a list for unit tests.

paho keeps unacknowledged QoS 1 messages in RAM and re-sends them itself after a reconnect
(``Client._messages_reconnect_reset_out`` and the CONNACK handler in
``paho/mqtt/client.py``), so within one process a handle stays valid across reconnects; after
a restart that RAM is gone and the SQLite outbox re-sends.
"""

from __future__ import annotations

import itertools
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeai.errors import EdgeAIError

log = logging.getLogger(__name__)

AckCallback = Callable[[int, int], None]
"""Called with (handle, MQTT 5 reason code) when the broker acknowledges a publish."""
ConnectionCallback = Callable[[bool], None]
"""Called with True after each successful (re)connect and False after each loss."""

REASON_NOT_AUTHORIZED = 135
_COALESCE_BYTES = 64 * 1024  # at most this much per merged write (see _Client)


class TransportError(EdgeAIError, ConnectionError):
    """The MQTT client could not be set up or refused a message."""


@dataclass(frozen=True)
class Will:
    """The last-will message the broker publishes when the connection dies uncleanly."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class Transport(Protocol):
    """What telemetry needs from an MQTT client."""

    def set_callbacks(self, on_ack: AckCallback, on_connection: ConnectionCallback) -> None:
        """Register the ack and connection callbacks (before :meth:`connect`)."""

    def connect(self, will: Will | None = None) -> None:
        """Start connecting in the background, and keep reconnecting; never blocks."""

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        """Hand one message over (sent now or after the next connect); returns its handle."""
        ...

    def disconnect(self, *, send_will: bool = False) -> None:
        """Disconnect and stop; with ``send_will`` the broker publishes the will."""

    def is_connected(self) -> bool:
        """Whether the broker connection is up now."""
        ...


@dataclass(frozen=True)
class MqttOptions:
    """How :class:`PahoTransport` reaches and identifies itself to the broker."""

    host: str
    port: int
    client_id: str
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    max_inflight: int = 20
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30


def configure_client(client: paho.Client, options: MqttOptions) -> None:
    """Reconnect backoff, login and TLS of a paho client, from ``options``.

    Raises
    ------
    TransportError
        The TLS files cannot be read or do not fit together.
    """
    # paho waits min, then doubles up to max between attempts (Client._reconnect_wait).
    client.reconnect_delay_set(options.reconnect_min_s, options.reconnect_max_s)
    if options.username is not None:
        client.username_pw_set(options.username, options.password)
    if options.tls:
        try:
            client.tls_set(
                ca_certs=options.ca_file, certfile=options.certfile, keyfile=options.keyfile
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise TransportError(
                f"cannot set up TLS for mqtts://{options.host}:{options.port}: {exc}; check "
                "ca_file, certfile and keyfile"
            ) from exc


def connect_persistent(client: paho.Client, options: MqttOptions) -> None:
    """Connect in the background with an MQTT 5 persistent session; start paho's thread.

    ``clean_start=False`` plus a Session Expiry Interval: the broker keeps the session (and
    a subscriber's queued messages) while the client is away.
    """
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves __init__ unannotated
    props.SessionExpiryInterval = options.session_expiry_s
    try:
        client.connect_async(
            options.host, options.port, options.keepalive_s, clean_start=False, properties=props
        )
    except (OSError, ValueError) as exc:
        raise TransportError(f"cannot connect to {options.host}:{options.port}: {exc}") from exc
    client.loop_start()


class PahoTransport:
    """MQTT 5 over paho-mqtt 2.x: persistent session, QoS 1, reconnect with backoff.

    ``clean_start=False`` plus a Session Expiry Interval makes the broker keep the session
    (and the QoS 1 messages queued for it) across disconnects and, with persistence, across
    broker restarts; the client id must therefore be stable per node.
    """

    def __init__(self, options: MqttOptions) -> None:
        self.options = options
        self._on_ack: AckCallback = _ignore_ack
        self._on_connection: ConnectionCallback = _ignore_connection
        self._disconnected = threading.Event()
        client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            protocol=paho.MQTTv5,
        )
        client.max_inflight_messages_set(options.max_inflight)
        client.max_queued_messages_set(0)  # bounded by the caller's window, not by dropping
        configure_client(client, options)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        self._client = client

    def set_callbacks(self, on_ack: AckCallback, on_connection: ConnectionCallback) -> None:
        """Register the ack and connection callbacks (before :meth:`connect`)."""
        self._on_ack, self._on_connection = on_ack, on_connection

    def connect(self, will: Will | None = None) -> None:
        """Start the network thread; it connects and reconnects on its own."""
        opts = self.options
        if will is not None:
            self._client.will_set(will.topic, will.payload, will.qos, will.retain)
        connect_persistent(self._client, opts)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        """Queue one message in paho (sent now, or on the next connect)."""
        try:
            info = self._client.publish(topic, payload, qos, retain)
        except ValueError as exc:
            raise TransportError(f"paho refused a message on {topic!r}: {exc}") from exc
        # NO_CONN still queues a QoS > 0 message for the next connect (Client.publish).
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise TransportError(
                f"paho refused a message on {topic!r}: {paho.error_string(info.rc)}"
            )
        return int(info.mid)

    def disconnect(self, *, send_will: bool = False, timeout_s: float = 2.0) -> None:
        """Send DISCONNECT (reason 4 asks the broker to publish the will) and stop the thread."""
        reason = (
            ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
            if send_will
            else None
        )
        if self._client.disconnect(reasoncode=reason) == paho.MQTT_ERR_SUCCESS:
            self._disconnected.wait(timeout_s)  # let the network thread write the packet
        self._client.loop_stop()

    def is_connected(self) -> bool:
        """Whether the broker connection is up now."""
        return bool(self._client.is_connected())

    def _handle_connect(self, _c: Any, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT connect to %s refused: %s", self.options.host, reason)
            return
        log.debug("MQTT connected (session present: %s)", flags.session_present)
        self._disconnected.clear()
        self._on_connection(True)

    def _handle_disconnect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        log.debug("MQTT disconnected: %s", reason)
        self._disconnected.set()
        self._on_connection(False)

    def _handle_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        self._on_ack(mid, int(reason.value))


class _Client(paho.Client):
    """paho's client with two cuts in the network thread's per-message work.

    That thread bounds throughput: on each PUBACK it queues the next waiting QoS 1 message
    (``_handle_pubackcomp`` -> ``_do_on_publish`` -> ``_update_inflight`` ->
    ``_send_publish`` -> ``_packet_queue``), and later writes it (``_loop`` ->
    ``loop_write`` -> ``_packet_write``, one ``send`` per queued packet).  When
    ``_packet_queue`` runs on that thread itself:

    - it writes no wake-up byte to the socket pair: the thread is not in ``select``, and its
      next ``_loop`` sees ``want_write()`` anyway.  Stock paho pays a ``send`` plus a later
      ``recv`` per message for it.  Other threads still wake the loop.
    - a QoS > 0 PUBLISH is appended to the previous queued PUBLISH if none of that one's
      bytes went out yet, so the PUBLISHes released by a burst of PUBACKs leave in one
      ``send``.  Only the network thread writes or pops queued packets, so the merged entry
      cannot be half-written meanwhile; ``_packet_write`` reads nothing per packet of a QoS > 0
      PUBLISH but its bytes (``mid``/``info`` matter for QoS 0 and DISCONNECT only).

    Source: paho-mqtt 2.1/2.2 ``paho/mqtt/client.py`` (``_packet_queue``, ``_packet_write``,
    ``_loop``).  Should a paho release queue packets differently, the stock path is used.
    """

    def _packet_queue(
        self,
        command: int,
        packet: bytes | bytearray,
        mid: int,
        qos: int,
        info: paho.MQTTMessageInfo | None = None,
    ) -> MQTTErrorCode:
        thread = getattr(self, "_thread", None)
        if thread is None or thread is not threading.current_thread():
            return super()._packet_queue(command, packet, mid, qos, info)
        if command == paho.PUBLISH and qos > 0 and self._append_to_last_publish(packet):
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        wake, self._sockpairW = self._sockpairW, None
        try:
            return super()._packet_queue(command, packet, mid, qos, info)
        finally:
            self._sockpairW = wake

    def _append_to_last_publish(self, packet: bytes | bytearray) -> bool:
        queue = getattr(self, "_out_packet", None)
        if not queue:
            return False
        last = queue[-1]
        try:
            mergeable = (
                last["command"] == paho.PUBLISH
                and last["qos"] > 0
                and last["pos"] == 0
                and last["to_process"] + len(packet) <= _COALESCE_BYTES
            )
        except (KeyError, TypeError):  # a paho that keeps packets another way
            return False
        if not mergeable:
            return False
        if isinstance(last["packet"], bytearray):  # what _send_publish builds
            last["packet"].extend(packet)
        else:
            last["packet"] = last["packet"] + packet
        last["to_process"] += len(packet)
        return True


def _ignore_ack(handle: int, reason: int) -> None:
    del handle, reason


def _ignore_connection(up: bool) -> None:
    del up


@dataclass(frozen=True)
class Message:
    """A message as the in-memory broker received it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    handle: int


class MemoryTransport:
    """An in-memory broker link for unit tests.

    ``reachable`` toggles the "network"; while it is down, published messages wait (as in
    paho) and are delivered and acknowledged when it comes back.  With ``auto_ack=False``
    acknowledgements wait for :meth:`ack`.  ``reason`` is the reason code acks carry.
    """

    def __init__(self, *, auto_ack: bool = True, reachable: bool = True, reason: int = 0) -> None:
        self.auto_ack = auto_ack
        self.reason = reason
        self.received: list[Message] = []  # duplicates included, like a broker would see
        self.will: Will | None = None
        self._reachable = reachable
        self._started = False
        self._connected = False
        self._unacked: dict[int, Message] = {}
        self._handles = itertools.count(1)
        self._lock = threading.RLock()
        self._on_ack: AckCallback = _ignore_ack
        self._on_connection: ConnectionCallback = _ignore_connection

    def set_callbacks(self, on_ack: AckCallback, on_connection: ConnectionCallback) -> None:
        """Register the ack and connection callbacks."""
        self._on_ack, self._on_connection = on_ack, on_connection

    def connect(self, will: Will | None = None) -> None:
        """Connect now if reachable."""
        self.will = will
        self._started = True
        self.set_reachable(self._reachable)

    def set_reachable(self, reachable: bool) -> None:
        """Bring the link up (re-sending what was not acknowledged) or down."""
        with self._lock:
            self._reachable = reachable
            was, self._connected = self._connected, reachable and self._started
            if self._connected and not was:
                self._on_connection(True)
                for msg in list(self._unacked.values()):
                    self._deliver(msg)
            elif was and not self._connected:
                self._on_connection(False)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        """Store the message; deliver it now if connected."""
        with self._lock:
            msg = Message(topic, payload, qos, retain, next(self._handles))
            self._unacked[msg.handle] = msg
            if self._connected:
                self._deliver(msg)
            return msg.handle

    def _deliver(self, msg: Message) -> None:
        self.received.append(msg)
        if self.auto_ack:
            self._ack(msg.handle)

    def _ack(self, handle: int) -> None:
        if self._unacked.pop(handle, None) is not None:
            self._on_ack(handle, self.reason)

    def ack(self) -> int:
        """Acknowledge every delivered, unacknowledged message; returns how many."""
        with self._lock:
            if not self._connected:
                return 0
            handles = list(self._unacked)
            for handle in handles:
                self._ack(handle)
            return len(handles)

    def disconnect(self, *, send_will: bool = False) -> None:
        """Disconnect; with ``send_will`` the will lands in :attr:`received`."""
        with self._lock:
            if send_will and self.will is not None and self._connected:
                w = self.will
                self.received.append(Message(w.topic, w.payload, w.qos, w.retain, 0))
            self._started = False
            self.set_reachable(self._reachable)

    def is_connected(self) -> bool:
        """Whether the link is up now."""
        return self._connected

    @property
    def unacked(self) -> int:
        """How many published messages wait for an ack."""
        return len(self._unacked)
