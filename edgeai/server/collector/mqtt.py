"""The narrow MQTT interface the collector needs: subscribe, receive, stop.

:class:`PahoSubscriber` speaks MQTT 5 through paho-mqtt 2.x with a persistent session
(``clean_start=False`` + Session Expiry Interval), so the broker queues the QoS 1 messages
published while the collector is down and delivers them on reconnect.
:class:`MemorySubscriber` hands messages in directly for unit tests.

paho acknowledges a QoS 1 message after ``on_message`` returns
(``Client._handle_publish`` in ``paho/mqtt/client.py``), so a message is stored before the
broker forgets it; an exception escaping ``on_message`` would stop paho's network loop
(``suppress_exceptions`` is off), hence the callback must never raise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgeai.telemetry.mqtt import (
    MqttOptions,
    TransportError,
    configure_client,
    connect_persistent,
)

log = logging.getLogger(__name__)

MessageCallback = Callable[[str, bytes, bool], object]
"""Called with (topic, payload, retained) for each message; must not raise."""


class Subscriber(Protocol):
    """What the collector needs from an MQTT client."""

    def start(self, filters: Sequence[str], on_message: MessageCallback) -> None:
        """Connect in the background, subscribe to ``filters`` (QoS 1) after every connect."""

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Wait until the broker acknowledged the subscriptions; False on timeout."""
        ...

    def stop(self) -> None:
        """Disconnect (the session, and what it queues, stays on the broker) and stop."""

    def is_connected(self) -> bool:
        """Whether the broker connection is up now."""
        ...


class PahoSubscriber:
    """A paho-mqtt 2.x MQTT 5 subscriber with a persistent session and reconnect."""

    def __init__(self, options: MqttOptions) -> None:
        self.options = options
        self._filters: Sequence[str] = ()
        self._on_message: MessageCallback = _ignore
        self._subscribed = threading.Event()
        self._disconnected = threading.Event()
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=options.client_id, protocol=paho.MQTTv5
        )
        configure_client(client, options)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        self._unsubscribed = threading.Event()
        self._last_message = 0.0
        client.on_unsubscribe = lambda *_: self._unsubscribed.set()
        self._client = client

    def start(self, filters: Sequence[str], on_message: MessageCallback) -> None:
        """Start paho's network thread; it connects, subscribes and reconnects on its own."""
        self._filters, self._on_message = tuple(filters), on_message
        connect_persistent(self._client, self.options)

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Wait for the SUBACK of the latest connection."""
        return self._subscribed.wait(timeout_s)

    def leave(self, timeout_s: float = 10.0, quiet_s: float = 1.0) -> bool:
        """Unsubscribe, then take what the session still holds until ``quiet_s`` of silence.

        For a member of a shared subscription group that goes away for good (a scale-down):
        Mosquitto 2.0 keeps routing a member's share to its session while it is offline, so
        a replica that only disconnected would collect its share on the broker until the
        session expired.  False if the broker did not acknowledge within ``timeout_s``.
        """
        self._unsubscribed.clear()
        self._last_message = time.monotonic()
        if self._client.unsubscribe(list(self._filters))[0] != paho.MQTT_ERR_SUCCESS:
            return False
        acked = self._unsubscribed.wait(timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() - self._last_message < quiet_s and time.monotonic() < deadline:
            time.sleep(0.05)
        return acked

    def stop(self, timeout_s: float = 2.0) -> None:
        """Send DISCONNECT (reason 0: the session stays) and stop the network thread."""
        if self._client.disconnect() == paho.MQTT_ERR_SUCCESS:
            self._disconnected.wait(timeout_s)
        self._client.loop_stop()

    def is_connected(self) -> bool:
        """Whether the broker connection is up now."""
        return bool(self._client.is_connected())

    def _handle_connect(
        self, client: Any, _u: Any, flags: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            log.warning("collector: MQTT connect to %s refused: %s", self.options.host, reason)
            return
        self._disconnected.clear()
        log.info("collector connected (session present: %s)", flags.session_present)
        # Subscribing again is harmless when the session kept the subscriptions; retained
        # messages are sent only for a new subscription (a lost session), not on every
        # reconnect (MQTT 5 "Retain Handling" = 1).
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.subscribe([(f, options) for f in self._filters])

    def _handle_subscribe(
        self, _c: Any, _u: Any, _mid: int, codes: list[ReasonCode], _p: Any
    ) -> None:
        refused = [str(c) for c in codes if c.is_failure]
        if refused:
            log.error("collector: broker refused the subscriptions: %s", ", ".join(refused))
            return
        self._subscribed.set()

    def _handle_disconnect(self, _c: Any, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        log.info("collector disconnected: %s", reason)
        self._subscribed.clear()
        self._disconnected.set()

    def _handle_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        self._on_message(msg.topic, bytes(msg.payload), bool(msg.retain))
        self._last_message = time.monotonic()


class MemorySubscriber:
    """Messages handed in by the test through :meth:`deliver`."""

    def __init__(self) -> None:
        self.filters: tuple[str, ...] = ()
        self.started = False
        self._on_message: MessageCallback = _ignore

    def start(self, filters: Sequence[str], on_message: MessageCallback) -> None:
        """Remember the filters and the callback."""
        self.filters, self._on_message, self.started = tuple(filters), on_message, True

    def wait_subscribed(self, timeout_s: float) -> bool:
        """True once started."""
        del timeout_s
        return self.started

    def deliver(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        """Deliver one message as the broker would."""
        if not self.started:
            raise TransportError("deliver() before start()")
        data = payload.encode("utf-8") if isinstance(payload, str) else payload
        self._on_message(topic, data, retain)

    def stop(self) -> None:
        """Stop delivering."""
        self.started = False

    def is_connected(self) -> bool:
        """Whether started."""
        return self.started


def _ignore(topic: str, payload: bytes, retain: bool) -> None:
    del topic, payload, retain
