"""Where the agent's events, status and metrics go: the log always, MQTT when configured.

Every event is logged as one structured line; with ``[telemetry]`` it also goes through
the durable outbox (:class:`edgeai.telemetry.Telemetry`), so a broker outage or a crash
loses nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

from edgeai.agent.config import AgentConfig
from edgeai.configfile import anchor_fields
from edgeai.profiles import DeviceProfile
from edgeai.telemetry.client import Telemetry
from edgeai.telemetry.mqtt import Transport

log = logging.getLogger("edgeai.agent.events")


class Reporter:
    """Events, retained status and metrics of one agent.

    With ``[telemetry]`` they go through a :class:`Telemetry` over ``transport`` (paho from
    the settings if None), stamped by ``clock``.
    """

    def __init__(
        self,
        config: AgentConfig,
        state_dir: Path,
        *,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = config.node
        tel = config.telemetry
        self.telemetry: Telemetry | None = None
        if tel is not None:
            # The outbox is state: a relative outbox_path lives in state_dir.
            settings = anchor_fields(tel, ("outbox_path",), state_dir)
            self.telemetry = Telemetry(settings, config.node, transport=transport, clock=clock)
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first reading is meaningless; prime it

    def start(self, profile: DeviceProfile) -> None:
        """Connect (in the background) and publish the retained profile."""
        if self.telemetry is not None:
            self.telemetry.start()
            self.telemetry.profile(profile.model_dump(mode="json"))

    def event(self, kind: str, **fields: Any) -> None:
        """Report an event (``events/<kind>``)."""
        log.info("%s %s", kind, json.dumps(fields, default=str, sort_keys=True))
        if self.telemetry is not None:
            self.telemetry.event(kind, **_plain(fields))

    def event_sink(self, kind: str, fields: Mapping[str, Any]) -> None:
        """:meth:`event` in the ``(kind, fields)`` form callbacks use."""
        self.event(kind, **fields)

    def status(self, state: str, **fields: Any) -> None:
        """Publish the retained status."""
        log.info("status %s", state)
        if self.telemetry is not None:
            self.telemetry.status(state, **_plain(fields))

    def metrics(self, values: Mapping[str, Any]) -> None:
        """Publish one metrics sample."""
        if self.telemetry is not None:
            self.telemetry.metrics(_plain(dict(values)))

    def stats(self) -> dict[str, Any]:
        """The outbox's counters (empty without telemetry)."""
        return self.telemetry.stats() if self.telemetry is not None else {}

    def process_stats(self) -> dict[str, float]:
        """CPU (% of one core since the last call) and resident memory of this process."""
        return {
            "cpu_percent": self._process.cpu_percent(None),
            "rss_mb": self._process.memory_info().rss / 2**20,
        }

    def stop(self, flush_timeout_s: float) -> None:
        """Flush the outbox (what doesn't make it stays on disk for the next start)."""
        if self.telemetry is not None:
            flushed = self.telemetry.stop(flush_timeout_s)
            if not flushed:
                log.warning("telemetry not flushed in %.0f s; kept on disk", flush_timeout_s)


def _plain(fields: Mapping[str, Any]) -> dict[str, Any]:
    # Telemetry bodies are JSON: make paths, tuples and numpy scalars plain.
    return json.loads(json.dumps(fields, default=_default))  # type: ignore[no-any-return]


def _default(value: object) -> object:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
