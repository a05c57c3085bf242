"""One update step: check, download, stage, gate, commit; otherwise keep the old model.

The agent calls :func:`apply_latest` on a timer or when a release is announced, then
serves ``store.active().path``. Every decision is reported through ``on_event``. Which
release a node installs is decided only by signed metadata: a release's wave (the nodes
it is for) and the profile's revocation list; an announcement merely triggers a check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from edgeai.artifacts.errors import StoreError, UpdateRejected
from edgeai.artifacts.gate import GateResult, run_gate
from edgeai.artifacts.store import ActiveModel, ModelStore
from edgeai.artifacts.updater import ReleaseInfo, SignedReleases
from edgeai.plumbing.files import sha256_file
from edgeai.profiles import DeviceProfile

log = logging.getLogger(__name__)

Status = Literal[
    "applied",
    "current",
    "none",
    "skipped",
    "rejected",
    "unavailable",
    "not_in_wave",
    "rolled_back",
    "revoked",
]
EventSink = Callable[[str, dict[str, Any]], None]
Gate = Callable[[Path, DeviceProfile], GateResult]
# Reasons that say nothing about the release itself: try again on the next check.
_TRANSIENT = frozenset({"timeout", "unreachable"})


class ReleaseSource(Protocol):
    """What :func:`apply_latest` needs from an updater (``BundleUpdater`` is one)."""

    def releases(self, profile: str) -> SignedReleases:
        """Return the signed releases and revocations for ``profile``."""
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
    ``unavailable`` (repository unreachable or too slow: retried next time),
    ``not_in_wave`` (the newest release's signed wave leaves this node out; ``release``
    is that release), ``rolled_back`` (the active release was revoked and the signed
    release before it is active again; ``reason`` is ``revoked``), ``revoked`` (the
    active release was revoked but no signed release is left to return to).
    """

    status: Status
    release: int | None = None
    version: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class _Step:
    """Everything one update step works with."""

    updater: ReleaseSource
    store: ModelStore
    profile: DeviceProfile
    on_event: EventSink
    mirrors: Sequence[str]
    gate: Gate
    activate: Callable[[Path], None] | None


def apply_latest(
    updater: ReleaseSource,
    store: ModelStore,
    profile: DeviceProfile,
    on_event: EventSink,
    *,
    mirrors: Sequence[str] = (),
    gate: Gate = run_gate,
    activate: Callable[[Path], None] | None = None,
    node: str | None = None,
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
    node
        This device's node name: a release whose signed wave does not name it is not
        installed (None: only releases for everyone).
    """
    step = _Step(updater, store, profile, on_event, mirrors, gate, activate)
    try:
        signed = updater.releases(profile.name)
    except UpdateRejected as exc:
        return _rejected(exc, None, on_event)
    active = store.active()
    if (
        active is not None
        and active.release in signed.revoked
        and signed.get(active.release) is None
    ):
        return _revert(step, signed, active, node)
    newest = signed.newest()
    if newest is None:
        return Outcome("none")
    release = signed.for_node(node)
    if release is None or (
        not newest.admits(node) and active is not None and release.release <= active.release
    ):
        return Outcome("not_in_wave", newest.release, newest.model_version)
    if active is not None and release.release == active.release:
        return Outcome("current", active.release, active.version)
    return _install(step, release, active)


def _install(
    step: _Step, release: ReleaseInfo, active: ActiveModel | None, *, downgrade: bool = False
) -> Outcome:
    """Download, stage, gate and commit ``release``; on failure the active model stays."""
    store, on_event = step.store, step.on_event
    fields: dict[str, Any] = {"release": release.release, "version": release.model_version}
    known = store.is_bad(release.release)
    if known is not None:
        return Outcome("skipped", release.release, release.model_version, f"known_bad: {known}")
    try:
        with store.scratch() as scratch:
            bundle = step.updater.download(release, scratch / "bundle", step.mirrors)
            staged = store.stage(bundle, release.release, downgrade=downgrade)
    except UpdateRejected as exc:
        return _rejected(exc, release, on_event)
    result = step.gate(staged, step.profile)
    if not result.ok:
        reason = "; ".join(result.reasons)
        store.discard(staged)
        store.mark_bad(release.release, f"gate: {reason}")
        on_event("model_rejected", {**fields, "reason": "gate", "detail": reason,
                                    "measurements": result.measurements})  # fmt: skip
        on_event("rollback", {**fields, "to_release": active.release if active else None,
                              "stage": "gate"})  # fmt: skip
        return Outcome("rejected", release.release, release.model_version, "gate")
    new = store.commit(staged, downgrade=downgrade)
    if step.activate is not None:
        try:
            step.activate(new.path)
        except Exception as exc:
            return _undo(store, release, on_event, exc)
    on_event("model_applied", {**fields, "previous": active.release if active else None,
                               "measurements": result.measurements})  # fmt: skip
    return Outcome("applied", new.release, new.version)


def _slot_matches(slot: Path, release: ReleaseInfo) -> bool:
    """True when every file of the signed release is in ``slot`` with its signed sha256."""
    try:
        return all(
            sha256_file(slot / info.path.rsplit("/", 1)[-1]) == info.hashes.get("sha256")
            for info in release.targets
        )
    except OSError:
        return False


def _revert(step: _Step, signed: SignedReleases, active: ActiveModel, node: str | None) -> Outcome:
    """The active release was revoked (signed): go back to the newest release still signed.

    Not a replay: the revocation itself is in signed metadata. The previous slot is used
    when it holds exactly that release; otherwise it is installed through the normal path.
    """
    store = step.store
    reason = signed.revoked[active.release]
    store.mark_bad(active.release, f"revoked: {reason}")
    target = signed.for_node(node)
    if target is None:
        log.warning(
            "release %s was revoked (%s) and no signed release is left for this node; "
            "it keeps serving until one is published",
            active.release,
            reason,
        )
        return Outcome("revoked", active.release, active.version, reason)
    if target.release > active.release:  # a newer release came out since: an ordinary update
        return _install(step, target, active)
    event = {"release": active.release, "version": active.version,
             "to_release": target.release, "stage": "revoked", "reason": reason}  # fmt: skip
    previous = store.previous()
    if (
        previous is not None
        and previous.release == target.release
        and _slot_matches(previous.path, target)
    ):
        try:
            back = store.rollback()
        except StoreError as exc:
            log.warning("previous slot unusable (%s); downloading release %s", exc, target.release)
        else:
            if step.activate is not None:
                try:
                    step.activate(back.path)
                except Exception as exc:  # the serving swap failed; the store is right
                    detail = f"{type(exc).__name__}: {exc}"
                    step.on_event("model_rejected", {"release": back.release,
                                  "version": back.version, "reason": "activate",
                                  "detail": detail})  # fmt: skip
                    return Outcome("rejected", back.release, back.version, "activate")
            step.on_event("rollback", event)
            return Outcome("rolled_back", back.release, back.version, "revoked")
    outcome = _install(step, target, active, downgrade=True)
    if outcome.status != "applied":
        return outcome
    step.on_event("rollback", event)
    return Outcome("rolled_back", outcome.release, outcome.version, "revoked")


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
