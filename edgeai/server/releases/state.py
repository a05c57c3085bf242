"""The release manager's records and its pure decisions: canary choice and wave verdicts.

Kept apart from :mod:`edgeai.server.releases.manager` (which does the I/O: compiling, signing,
announcing, persisting) so the rules can be tested as plain functions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from edgeai.configfile import Frozen
from edgeai.errors import EdgeAIError
from edgeai.plumbing.files import atomic_write
from edgeai.server.collector import FleetEvent, NodeState

RolloutState = Literal["canary", "promoted", "revoked", "failed"]
# Kinds of node events that count as a wave node failing the release.
FAILURE_KINDS = ("model_rejected", "rollback")


class ReleaseError(EdgeAIError, RuntimeError):
    """The release manager cannot go on (unreadable state file, no fleet to release to)."""


class Rollout(Frozen):
    """One profile's part of a release: its wave and what the wave's nodes reported.

    ``state``: ``canary`` (signed for ``wave`` only), ``promoted`` (signed for every
    node), ``revoked`` (withdrawn; ``detail`` says why), ``failed`` (compiling or signing
    for this profile failed; ``detail`` says why; nothing was published).
    """

    profile: str
    state: RolloutState
    wave: tuple[str, ...] = ()  # the canary nodes chosen when the release was proposed
    started: float  # when the canary wave was signed (server clock)
    changed: float  # when ``state`` last changed
    acked: tuple[str, ...] = ()  # wave nodes reporting the release active
    failed: dict[str, str] = Field(default_factory=dict)  # wave node -> what it reported
    detail: str | None = None
    announced: bool = False  # the retained announcement for ``state`` was published


class Release(Frozen):
    """A proposed model: its number, quality, origin and one rollout per profile."""

    release: int = Field(ge=1)
    version: str
    accuracy: float
    round: int
    source: str  # the checkpoint or ONNX file it was compiled from
    created: float
    rollouts: dict[str, Rollout] = Field(default_factory=dict)

    def promoted(self) -> bool:
        """True when at least one profile's wave was promoted to everyone."""
        return any(r.state == "promoted" for r in self.rollouts.values())


class ManagerState(Frozen):
    """Everything the release manager persists (``releases.json``)."""

    schema_version: Literal[1] = 1
    releases: tuple[Release, ...] = ()


@dataclass(frozen=True)
class ReleaseStateChange:
    """A rollout moved to a new state (what :meth:`ReleaseManager.step` returns)."""

    release: int
    profile: str
    state: RolloutState
    reason: str


def load_state(path: Path) -> ManagerState:
    """Read the persisted state; a missing file is a fresh start."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ManagerState()
    except OSError as exc:
        raise ReleaseError(f"{path}: unreadable ({exc})") from exc
    try:
        return ManagerState.model_validate_json(text)
    except ValidationError as exc:
        raise ReleaseError(
            f"{path}: not a release manager state file ({exc.error_count()} error(s)); it is "
            "only ever replaced atomically, so something else damaged it: restore it from a "
            "backup, or move it away to start over (the TUF repository keeps what was signed)"
        ) from exc


def save_state(path: Path, state: ManagerState) -> None:
    """Replace the persisted state atomically (a crash leaves the old or the new file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, state.model_dump_json(indent=2).encode() + b"\n")


def canary_count(n: int, fraction: float, minimum: int) -> int:
    """Return how many of ``n`` nodes form the canary wave.

    That is ``ceil(fraction * n)``, at least ``minimum`` and at most ``n``.
    """
    return min(n, max(minimum, math.ceil(fraction * n)))


def choose_canaries(
    nodes: Sequence[NodeState], release: int, fraction: float, minimum: int
) -> tuple[str, ...]:
    """Pick a profile's canary nodes, deterministically for a given fleet and release.

    Online nodes come first (an offline canary can only time out); among them the order
    is a hash of release and node name, so the burden rotates from release to release
    but a restarted server picks the same nodes again.
    """

    def rank(state: NodeState) -> tuple[bool, str]:
        digest = hashlib.sha256(f"{release}:{state.node}".encode()).hexdigest()
        return (not state.online, digest)

    chosen = sorted(nodes, key=rank)[: canary_count(len(nodes), fraction, minimum)]
    return tuple(sorted(s.node for s in chosen))


@dataclass(frozen=True)
class Verdict:
    """What a canary wave's reports add up to: ``wait``, ``promote`` or ``revoke``."""

    action: Literal["wait", "promote", "revoke"]
    acked: tuple[str, ...]
    failed: dict[str, str]
    reason: str = ""


def judge(
    release: int,
    rollout: Rollout,
    nodes: Mapping[str, NodeState],
    events: Sequence[FleetEvent],
    *,
    now: float,
    failure_threshold: float,
    ack_timeout_s: float,
) -> Verdict:
    """Decide a canary wave from the fleet's state and events (pure).

    A wave node acks when it reports ``release`` active; it fails when it sent a
    ``model_rejected`` or ``rollback`` event for ``release`` (a failure is never undone by
    a later ack). Failures >= ``failure_threshold * len(wave)`` revoke; all acked promotes;
    otherwise the wave is revoked once ``ack_timeout_s`` has passed since it started.
    """
    wave = rollout.wave
    failed = dict(rollout.failed)
    for event in events:
        if (
            event.kind in FAILURE_KINDS
            and event.node in wave
            and event.node not in failed
            and event.fields.get("release") == release
        ):
            what = event.fields.get("reason") or event.fields.get("stage") or "?"
            detail = event.fields.get("detail")
            failed[event.node] = f"{event.kind} ({what})" + (f": {detail}" if detail else "")
    acked = tuple(n for n in wave if n not in failed and n in nodes and nodes[n].release == release)
    if wave and len(failed) >= failure_threshold * len(wave):
        summary = "; ".join(f"{n}: {why}" for n, why in sorted(failed.items()))
        return Verdict("revoke", acked, failed, f"{len(failed)}/{len(wave)} failed: {summary}")
    if wave and len(acked) == len(wave):
        return Verdict("promote", acked, failed, f"{len(acked)}/{len(wave)} acked")
    if now - rollout.started >= ack_timeout_s:
        missing = sorted(set(wave) - set(acked) - set(failed))
        return Verdict(
            "revoke",
            acked,
            failed,
            f"ack timeout: {len(acked)}/{len(wave)} acked after {ack_timeout_s:g} s "
            f"(no ack from {', '.join(missing)})",
        )
    return Verdict("wait", acked, failed)
