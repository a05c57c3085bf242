"""What the server knows about each node, as the telemetry collector keeps it.

The release manager reads this view to see acks (a node reporting the new release as
active) and failures (a node's ``model_rejected`` event for it); ``edgeai fleet status``
prints it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class NodeState:
    """The latest known state of one node (from its retained status, telemetry and events)."""

    node: str
    profile: str | None = None
    online: bool = False
    model_version: str | None = None
    release: int | None = None  # the release the node reports active
    release_state: str | None = None  # last release event: applied, rejected, rollback, ...
    last_round: int | None = None  # last training round joined
    epsilon: float | None = None  # ε spent on the device (DP-SGD)
    delta: float | None = None
    p95_ms: float | None = None  # p95 inference latency, batch as served
    p95_note: str | None = None  # why p95_ms is None (no telemetry yet, nothing served yet)
    last_seen: float | None = None  # Unix time of the last message from the node
    boot_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the rows of ``fleet status --json``)."""
        return asdict(self)


@dataclass(frozen=True)
class FleetEvent:
    """One event a node reported (``nodes/<node>/events/<kind>``)."""

    node: str
    kind: str
    ts: float
    fields: dict[str, Any] = field(default_factory=dict)


class FleetView(Protocol):
    """Read access to the fleet's state; the collector implements it, tests fake it."""

    def nodes(self) -> Sequence[NodeState]:
        """Every node seen, sorted by name."""
        ...

    def events(self, since: float = 0.0, kinds: Sequence[str] = ()) -> Sequence[FleetEvent]:
        """Events with ``ts >= since`` (of the given kinds, or all), oldest first."""
        ...
