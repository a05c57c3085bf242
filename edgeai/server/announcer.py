"""Retained release announcements (``releases/<profile>``) with the server's own broker account."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from edgeai.server.broker import releases_user
from edgeai.server.collector import CollectorConfig
from edgeai.telemetry.mqtt import MqttOptions, Transport
from edgeai.telemetry.topics import release_topic


class Announcer:
    """Publishes retained release announcements (QoS 1) over ``transport``.

    Parameters
    ----------
    transport
        The MQTT link (a ``PahoTransport`` of :func:`announcer_options` in the server; a
        ``MemoryTransport`` in unit tests); connected here, disconnected by :meth:`close`.
    fleet
        The fleet whose topics are announced on.
    """

    def __init__(self, transport: Transport, fleet: str) -> None:
        self.fleet = fleet
        self._transport = transport
        self._transport.connect()

    def __call__(self, profile: str, body: dict[str, Any]) -> None:
        """Announce ``body`` on ``releases/<profile>`` (retained)."""
        payload = json.dumps(body, sort_keys=True).encode()
        self._transport.publish(release_topic(self.fleet, profile), payload, 1, True)

    def close(self) -> None:
        """Flush and disconnect."""
        self._transport.disconnect()


def announcer_options(cfg: CollectorConfig) -> MqttOptions:
    """The announcer's MQTT settings: the collector's broker, its own account and client id."""
    # Its own account (same password): the broker takes the client id from the user name
    # (use_username_as_clientid), so the collector's login would kick the collector off.
    options = cfg.mqtt_options()
    username = releases_user(options.username) if options.username else None
    return dataclasses.replace(options, client_id=f"edgeai-releases-{cfg.fleet}", username=username)
