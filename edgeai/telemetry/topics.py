"""MQTT topic names and the JSON envelope every telemetry payload travels in (pure functions).

Topics live under ``edgeai/v1/<fleet>/`` (DESIGN.md §5)::

    nodes/<node>/status          retained; the last will says "offline"
    nodes/<node>/profile         retained
    nodes/<node>/telemetry
    nodes/<node>/events/<type>
    nodes/<node>/cmd/<name>
    releases/<profile>           retained

Every payload is an :class:`Envelope`: schema version, node, boot id, sequence number and
timestamp around a JSON object body.  ``(node, boot_id, seq)`` is unique per message, so a
subscriber can drop the duplicates QoS 1 is allowed to deliver.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from edgeai.errors import EdgeAIError

PREFIX = "edgeai/v1"
SCHEMA_VERSION = 1
WILL_SEQ = 0
"""The sequence number of the last-will message; the outbox numbers its rows from 1."""
MAX_NAME_LEN = 128
_FORBIDDEN = frozenset("+#/\x00")
_KINDS_WITH_NAME = frozenset({"events", "cmd"})
_KINDS = frozenset({"status", "profile", "telemetry"}) | _KINDS_WITH_NAME
# One encoder for every payload: json.dumps with options builds a new JSONEncoder per call.
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


class TelemetryError(EdgeAIError, ValueError):
    """A topic, name or payload does not follow the telemetry contract."""


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it can be one topic level: non-empty, no ``+ # /`` or NUL.

    Raises
    ------
    TelemetryError
        If the name would break the topic tree or match as a wildcard.
    """
    if not isinstance(name, str) or not name:
        raise TelemetryError(f"{what} must be a non-empty string; got {name!r}")
    bad = sorted(_FORBIDDEN.intersection(name))
    if bad:
        raise TelemetryError(
            f"{what} {name!r} contains {', '.join(repr(c) for c in bad)}; MQTT uses '/' to "
            "separate levels and '+', '#' as wildcards, so use letters, digits, '-', '_' or '.'"
        )
    if len(name) > MAX_NAME_LEN:
        raise TelemetryError(f"{what} {name[:20]!r}... is {len(name)} characters; keep it ≤ 128")
    return name


@dataclass(frozen=True)
class NodeTopics:
    """The topics one node publishes on (and its command topics)."""

    fleet: str
    node: str

    def __post_init__(self) -> None:
        check_name(self.fleet, "fleet")
        check_name(self.node, "node")

    @property
    def base(self) -> str:
        """``edgeai/v1/<fleet>/nodes/<node>``."""
        return f"{PREFIX}/{self.fleet}/nodes/{self.node}"

    @property
    def status(self) -> str:
        """The retained status topic (also the last-will topic)."""
        return f"{self.base}/status"

    @property
    def profile(self) -> str:
        """The retained device-profile topic."""
        return f"{self.base}/profile"

    @property
    def telemetry(self) -> str:
        """The metrics topic."""
        return f"{self.base}/telemetry"

    def event(self, kind: str) -> str:
        """The topic of events of type ``kind``."""
        return f"{self.base}/events/{check_name(kind, 'event type')}"

    def cmd(self, name: str) -> str:
        """The topic the node receives command ``name`` on."""
        return f"{self.base}/cmd/{check_name(name, 'command name')}"


def release_topic(fleet: str, profile: str) -> str:
    """The retained release announcement topic of one device profile."""
    return f"{PREFIX}/{check_name(fleet, 'fleet')}/releases/{check_name(profile, 'profile')}"


def fleet_filter(fleet: str) -> str:
    """The subscription filter that matches everything of one fleet."""
    return f"{PREFIX}/{check_name(fleet, 'fleet')}/#"


@dataclass(frozen=True)
class Topic:
    """A parsed topic: ``kind`` is status/profile/telemetry/events/cmd/releases."""

    fleet: str
    kind: str
    node: str | None = None
    name: str | None = None  # event type, command name or release profile


def parse_topic(topic: str) -> Topic:
    """Parse a topic built by this module.

    Raises
    ------
    TelemetryError
        If the topic is not one of the contract's shapes.
    """
    parts = topic.split("/")
    if len(parts) < 4 or "/".join(parts[:2]) != PREFIX:
        raise TelemetryError(f"topic {topic!r} is not under {PREFIX}/<fleet>/")
    fleet, rest = parts[2], parts[3:]
    try:
        check_name(fleet, "fleet")
        for level in rest:
            check_name(level, "topic level")
    except TelemetryError as exc:
        raise TelemetryError(f"topic {topic!r}: {exc}") from exc
    if rest[0] == "releases" and len(rest) == 2:
        return Topic(fleet, "releases", name=rest[1])
    if rest[0] == "nodes" and len(rest) >= 3 and rest[2] in _KINDS:
        node, kind = rest[1], rest[2]
        if kind in _KINDS_WITH_NAME and len(rest) == 4:
            return Topic(fleet, kind, node, rest[3])
        if kind not in _KINDS_WITH_NAME and len(rest) == 3:
            return Topic(fleet, kind, node)
    raise TelemetryError(f"topic {topic!r} is not a telemetry contract topic (see DESIGN.md §5)")


@dataclass(frozen=True)
class Envelope:
    """One telemetry payload: who sent it, which boot, which message, when, and the body."""

    node: str
    boot_id: str
    seq: int
    ts: float
    body: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    @property
    def key(self) -> tuple[str, str, int]:
        """The dedup key ``(node, boot_id, seq)``."""
        return (self.node, self.boot_id, self.seq)

    def encode(self) -> bytes:
        """Compact UTF-8 JSON; non-finite floats are refused (JSON has none)."""
        return encode_envelope(
            self.node, self.boot_id, self.seq, self.ts, self.body, schema=self.schema
        )


def encode_envelope(
    node: str,
    boot_id: str,
    seq: int,
    ts: float,
    body: dict[str, Any],
    *,
    schema: int = SCHEMA_VERSION,
) -> bytes:
    """``Envelope(node, boot_id, seq, ts, body).encode()`` without the intermediate object.

    Raises
    ------
    TelemetryError
        If the body is not plain JSON (e.g. a set, or a non-finite float).
    """
    doc = {"schema": schema, "node": node, "boot_id": boot_id, "seq": seq, "ts": ts, "body": body}
    try:
        return _JSON.encode(doc).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TelemetryError(f"telemetry body is not plain JSON: {exc}") from exc


def decode(payload: bytes | str) -> Envelope:
    """Parse and validate an envelope.

    Raises
    ------
    TelemetryError
        If the payload is not JSON or misses or mistypes a field.
    """
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TelemetryError(f"telemetry payload is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise TelemetryError("telemetry payload must be a JSON object")
    schema = doc.get("schema")
    if schema != SCHEMA_VERSION:
        raise TelemetryError(f"unsupported telemetry schema {schema!r}; this build reads 1")
    node, boot, seq, ts, body = (doc.get(k) for k in ("node", "boot_id", "seq", "ts", "body"))
    if not isinstance(node, str) or not isinstance(boot, str) or not boot:
        raise TelemetryError("telemetry payload needs string 'node' and 'boot_id'")
    check_name(node, "node")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise TelemetryError(f"telemetry 'seq' must be an integer ≥ 0; got {seq!r}")
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts):
        raise TelemetryError(f"telemetry 'ts' must be a finite number; got {ts!r}")
    if not isinstance(body, dict):
        raise TelemetryError("telemetry 'body' must be a JSON object")
    return Envelope(node, boot, seq, float(ts), body, schema)
