"""One update step: check, download, stage, gate, commit; otherwise keep the old model.

The agent calls :func:`apply_latest` on a timer or when a release is announced, then
serves ``store.active().path``. Every decision is reported through ``on_event``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from edgeai.artifacts.errors import UpdateRejected
from edgeai.artifacts.gate import GateResult, run_gate
from edgeai.artifacts.store import ModelStore
from edgeai.artifacts.updater import ReleaseInfo
from edgeai.profiles import DeviceProfile

log = logging.getLogger(__name__)

Status = Literal["applied", "current", "none", "skipped", "rejected", "unavailable"]
EventSink = Callable[[str, dict[str, Any]], None]
Gate = Callable[[Path, DeviceProfile], GateResult]
# Reasons that say nothing about the release itself: try again on the next check.
_TRANSIENT = frozenset({"timeout", "unreachable"})


class ReleaseSource(Protocol):
    """What :func:`apply_latest` needs from an updater (``BundleUpdater`` is one)."""

    def latest(self, profile: str) -> ReleaseInfo | None:
        """Return the newest signed release for ``profile``."""
        ...

    def download(self, release: ReleaseInfo, dest_dir: Path, mirrors: Sequence[str] = ()) -> Path:
        """Download and verify a release into ``dest_dir``."""
        ...


@dataclass(frozen=True)
class Outcome:
    """What one update step did.

    ``status``: ``applied`` (new model active), ``current`` (already active), ``none``
    (nothing published), ``skipped`` (known bad), ``rejected`` (refused; ``reason`` is an
    :data:`~edgeai.artifacts.errors.REASONS` code, or ``gate`` / ``activate``),
    ``unavailable`` (repository unreachable or too slow: retried next time).
    """

    status: Status
    release: int | None = None
    version: str | None = None
    reason: str | None = None


def apply_latest(
    updater: ReleaseSource,
    store: ModelStore,
    profile: DeviceProfile,
    on_event: EventSink,
    *,
    mirrors: Sequence[str] = (),
    gate: Gate = run_gate,
    activate: Callable[[Path], None] | None = None,
) -> Outcome:
    """Bring the newest signed release for ``profile`` into service, or keep the old one.

    Parameters
    ----------
    updater
        Finds and downloads signed releases (a ``BundleUpdater``).
    store
        The two-slot model store (already :meth:`~ModelStore.recover`-ed).
    profile
        This device's profile: its name selects releases, its budgets drive the gate.
    on_event
        Called as ``on_event(kind, fields)`` with kinds ``model_applied``,
        ``model_rejected`` and ``rollback``.
    mirrors
        LAN peers' mirror URLs, tried before the server.
    gate
        The on-device check (:func:`~edgeai.artifacts.gate.run_gate` by default).
    activate
        Called with the new active bundle after the commit (the agent's serving swap);
        if it raises, the store rolls back and the release is marked bad.
    """
    try:
        release = updater.latest(profile.name)
    except UpdateRejected as exc:
        return _rejected(exc, None, on_event)
    if release is None:
        return Outcome("none")
    fields: dict[str, Any] = {"release": release.release, "version": release.model_version}
    active = store.active()
    if active is not None and release.release == active.release:
        return Outcome("current", active.release, active.version)
    known = store.is_bad(release.release)
    if known is not None:
        return Outcome("skipped", release.release, release.model_version, f"known_bad: {known}")
    try:
        with store.scratch() as scratch:
            bundle = updater.download(release, scratch / "bundle", mirrors)
            staged = store.stage(bundle, release.release)
    except UpdateRejected as exc:
        return _rejected(exc, release, on_event)
    result = gate(staged, profile)
    if not result.ok:
        reason = "; ".join(result.reasons)
        store.discard(staged)
        store.mark_bad(release.release, f"gate: {reason}")
        on_event("model_rejected", {**fields, "reason": "gate", "detail": reason,
                                    "measurements": result.measurements})  # fmt: skip
        on_event("rollback", {**fields, "to_release": active.release if active else None,
                              "stage": "gate"})  # fmt: skip
        return Outcome("rejected", release.release, release.model_version, "gate")
    new = store.commit(staged)
    if activate is not None:
        try:
            activate(new.path)
        except Exception as exc:
            return _undo(store, release, on_event, exc)
    on_event("model_applied", {**fields, "previous": active.release if active else None,
                               "measurements": result.measurements})  # fmt: skip
    return Outcome("applied", new.release, new.version)


def _rejected(exc: UpdateRejected, release: ReleaseInfo | None, on_event: EventSink) -> Outcome:
    number = release.release if release else None
    version = release.model_version if release else None
    if exc.reason in _TRANSIENT:
        log.warning("update check failed, will retry: %s", exc)
        return Outcome("unavailable", number, version, exc.reason)
    on_event(
        "model_rejected",
        {"release": number, "version": version, "reason": exc.reason, "detail": str(exc)},
    )
    return Outcome("rejected", number, version, exc.reason)


def _undo(store: ModelStore, release: ReleaseInfo, on_event: EventSink, exc: Exception) -> Outcome:
    detail = f"{type(exc).__name__}: {exc}"
    store.mark_bad(release.release, f"activate: {detail}")
    back = store.rollback() if store.previous() is not None else None
    fields = {"release": release.release, "version": release.model_version}
    on_event("model_rejected", {**fields, "reason": "activate", "detail": detail})
    on_event("rollback", {**fields, "to_release": back.release if back else None,
                          "stage": "activate"})  # fmt: skip
    return Outcome("rejected", release.release, release.model_version, "activate")
