"""The collector's state machine: telemetry messages in, one :class:`NodeRecord` per node out.

Pure functions, no I/O.  QoS 1 and the agents' outboxes deliver messages late, twice and out
of order (rows of an earlier boot are re-sent after a restart), so every value a record holds
carries the timestamp of the message that set it, and an older message never overwrites a
newer value.  The retained status is ordered separately (see :func:`_status_is_newer`)
because the last will's timestamp is the time its boot *connected*, not the time it died.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

from edgeai.server.collector.fleet import FleetEvent, NodeState
from edgeai.telemetry.topics import WILL_SEQ, Envelope, Topic

ONLINE = "online"
OFFLINE = "offline"  # the last will
STOPPED = "stopped"  # a clean shutdown
_GONE = frozenset({OFFLINE, STOPPED})

# Why a node has no p95 (NodeState.p95_note); the agent's p95 covers served requests only.
NO_TELEMETRY = "no telemetry received yet"
NOTHING_SERVED = "no inference served yet"
NO_LATENCY = "the node reported inferences but no latency"

# The release state an event leaves a node in (NodeState.release_state).
RELEASE_EVENTS = {"model_applied": "applied", "model_rejected": "rejected", "rollback": "rollback"}


@dataclass(frozen=True)
class Status:
    """The retained status currently believed, and where it came from."""

    state: str
    boot_id: str
    seq: int  # the highest non-will seq applied for this boot (0 if only the will)
    ts: float  # the newest timestamp applied for this boot


@dataclass(frozen=True)
class NodeRecord:
    """Everything the collector keeps about one node (serialised as JSON in SQLite).

    ``values`` maps a :class:`NodeState` field name to ``(value, ts)``.
    """

    node: str
    status: Status | None = None
    values: dict[str, tuple[Any, float]] = field(default_factory=dict)
    last_seen: float | None = None
    boot_id: str | None = None

    def value(self, name: str) -> Any:
        """The current value of one field (None if never reported)."""
        got = self.values.get(name)
        return None if got is None else got[0]


def apply(record: NodeRecord, topic: Topic, env: Envelope) -> NodeRecord:
    """Fold one message of ``record.node`` (already validated and deduplicated) into its record."""
    updates: dict[str, Any] = {}
    status = record.status
    if topic.kind == "status":
        if _status_is_newer(status, env):
            status = _next_status(status, env)
            if env.seq != WILL_SEQ:
                updates = _status_fields(env.body)
    elif topic.kind == "profile":
        updates = {"profile": _str(env.body.get("name"))}
    elif topic.kind == "telemetry":
        updates = _metric_fields(env.body)
    elif topic.kind == "events" and topic.name is not None:
        updates = _event_fields(topic.name, env.body)
    values = dict(record.values)
    for name, value in updates.items():
        if value is None:
            continue  # "not known" never erases what is known
        old = values.get(name)
        if old is None or env.ts >= old[1]:
            values[name] = (value, env.ts)
    last_seen, boot_id = record.last_seen, record.boot_id
    if env.seq != WILL_SEQ and (last_seen is None or env.ts >= last_seen):
        # The will is published by the broker, and stamped with its boot's start time.
        last_seen, boot_id = env.ts, env.boot_id
    return replace(record, status=status, values=values, last_seen=last_seen, boot_id=boot_id)


def _status_is_newer(current: Status | None, env: Envelope) -> bool:
    if current is None:
        return True
    if env.boot_id == current.boot_id:
        # The will is this boot's last word (its connection died); after it, only a status
        # the agent re-sends on reconnect (a higher seq) counts.
        return env.seq == WILL_SEQ or env.seq > current.seq
    # Another boot: a later boot's messages (its will included) carry later timestamps.
    return env.ts >= current.ts


def _next_status(current: Status | None, env: Envelope) -> Status:
    state = _str(env.body.get("state")) or "unknown"
    if current is not None and current.boot_id == env.boot_id:
        return Status(state, env.boot_id, max(current.seq, env.seq), max(current.ts, env.ts))
    return Status(state, env.boot_id, env.seq, env.ts)


def _status_fields(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "profile": _str(body.get("profile")),
        "model_version": _str(body.get("model_version")),
        "release": _int(body.get("release")),
    }


def _metric_fields(body: dict[str, Any]) -> dict[str, Any]:
    # Telemetry.metrics() sends {"metrics": {...}, "outbox": {...}}; accept a flat body too.
    metrics = body.get("metrics", body)
    if not isinstance(metrics, dict):
        return {}
    return {
        "model_version": _str(metrics.get("model_version")),
        "release": _int(metrics.get("release")),
        "epsilon": _num(metrics.get("epsilon")),
        "delta": _num(metrics.get("delta")),
        "p95_ms": _num(metrics.get("p95_ms")),
        # Not a NodeState field: it tells a node that has served nothing (p95_note).
        "inference_count": _int(metrics.get("inference_count")),
    }


def _event_fields(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    if kind == "round_joined":
        return {
            "last_round": _int(body.get("round")),
            "epsilon": _num(body.get("epsilon")),
            "delta": _num(body.get("delta")),
        }
    if kind == "budget_exhausted":
        return {"epsilon": _num(body.get("epsilon")), "delta": _num(body.get("delta"))}
    if kind == "agent_started":
        return {"profile": _str(body.get("profile"))}
    out: dict[str, Any] = {}
    if kind in RELEASE_EVENTS:
        out["release_state"] = RELEASE_EVENTS[kind]
    if kind == "model_applied":
        out["release"] = _int(body.get("release"))
        out["model_version"] = _str(body.get("version"))
    elif kind == "rollback":
        out["release"] = _int(body.get("to_release"))  # where it went back to, if known
    return out


def node_state(record: NodeRecord, now: float, offline_after_s: float) -> NodeState:
    """The :class:`NodeState` of a record at time ``now``.

    Online means: the retained status says "online" (the broker's last will is the liveness
    signal), or, without a definite status ("stopping", none yet), a message within
    ``offline_after_s``.  The last will and "stopped" mean offline at once.
    """
    state = record.status.state if record.status is not None else None
    if state == ONLINE:
        online = True
    elif state in _GONE:
        online = False
    else:
        online = record.last_seen is not None and now - record.last_seen <= offline_after_s
    v = record.value
    return NodeState(
        node=record.node,
        profile=v("profile"),
        online=online,
        model_version=v("model_version"),
        release=v("release"),
        release_state=v("release_state"),
        last_round=v("last_round"),
        epsilon=v("epsilon"),
        delta=v("delta"),
        p95_ms=v("p95_ms"),
        p95_note=_p95_note(record),
        last_seen=record.last_seen,
        boot_id=record.boot_id,
    )


def _p95_note(record: NodeRecord) -> str | None:
    """Why the record has no p95 (None when it has one)."""
    if record.value("p95_ms") is not None:
        return None
    served = record.value("inference_count")
    if served is None:
        return NO_TELEMETRY
    return NOTHING_SERVED if served == 0 else NO_LATENCY


def fleet_event(topic: Topic, env: Envelope) -> FleetEvent:
    """The :class:`FleetEvent` an ``events/<kind>`` message reports."""
    return FleetEvent(node=env.node, kind=topic.name or "", ts=env.ts, fields=dict(env.body))


def dumps(record: NodeRecord) -> str:
    """Serialise a record as JSON (for the ``nodes`` table)."""
    status = record.status
    doc = {
        "status": None if status is None else [status.state, status.boot_id, status.seq, status.ts],
        "values": {k: [v, ts] for k, (v, ts) in record.values.items()},
        "last_seen": record.last_seen,
        "boot_id": record.boot_id,
    }
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


def loads(node: str, text: str) -> NodeRecord:
    """Parse what :func:`dumps` wrote.

    Raises
    ------
    ValueError
        If the text is not a record (a corrupt or foreign database).
    """
    try:
        doc = json.loads(text)
        raw = doc["status"]
        status = None if raw is None else Status(str(raw[0]), str(raw[1]), int(raw[2]), raw[3])
        values = {str(k): (v[0], float(v[1])) for k, v in doc["values"].items()}
        return NodeRecord(node, status, values, doc["last_seen"], doc["boot_id"])
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"node {node!r}: unreadable record: {exc}") from exc


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
