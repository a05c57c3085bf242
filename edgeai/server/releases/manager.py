"""The release manager: quality gate, compile per profile, signed canary wave, promote or revoke.

Flow of one release ``N`` (docs/UPDATES.md, "Staged releases"):

1. :meth:`ReleaseManager.propose` checks the candidate's accuracy against the serving
   release, compiles it for every profile present in the fleet, signs each bundle into
   the TUF repository for a canary wave (the wave is in the signed metadata, so devices
   outside it never install the release whatever they are told) and announces it on the
   retained ``releases/<profile>`` topic.
2. :meth:`ReleaseManager.step`, called periodically, reads the fleet view: a canary acks
   by reporting release ``N`` active, fails by reporting ``model_rejected`` or
   ``rollback`` for ``N``. All acked → the wave is re-signed for everyone (promoted);
   failures past the threshold or no verdict within the ack timeout → the release is
   revoked (signed), and devices that installed it roll back.

State is persisted as JSON (atomically) under ``state_dir`` so a restarted server goes on.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from edgeai.artifacts import ArtifactError, ArtifactRepository
from edgeai.compile.select import CompileOptions
from edgeai.configfile import Frozen
from edgeai.models.checkpoint import load_checkpoint
from edgeai.server.collector import FleetView, NodeState
from edgeai.server.releases.state import (
    FAILURE_KINDS,
    ManagerState,
    Release,
    ReleaseError,
    ReleaseStateChange,
    Rollout,
    RolloutState,
    choose_canaries,
    judge,
    load_state,
    save_state,
)

__all__ = [
    "CompileSettings",
    "Release",
    "ReleaseConfig",
    "ReleaseError",
    "ReleaseManager",
    "ReleaseStateChange",
    "Rollout",
    "choose_canaries",
]

log = logging.getLogger(__name__)

Announce = Callable[[str, dict[str, Any]], None]
# compile_fn(model, profile name, bundle dir to create, model version)
CompileFn = Callable[[Path, str, Path, str], None]
# Node clocks stamp events; look back this far before a wave began so skew loses nothing.
_CLOCK_SLACK_S = 3600.0
STATE_FILE = "releases.json"


class CompileSettings(Frozen):
    """``edgeai.compile.CompileOptions`` as configuration."""

    calibration_samples: int = Field(default=256, gt=0)
    eval_samples: int = Field(default=2000, gt=0)
    golden_samples: int = Field(default=8, gt=0)
    latency_repeats: int = Field(default=200, gt=0)
    measure_latency: bool = True

    def options(self) -> CompileOptions:
        """The compiler's options object."""
        return CompileOptions(**self.model_dump())


class ReleaseConfig(Frozen):
    """How releases are gated, staged and judged."""

    state_dir: Path  # releases.json and the compiled bundles
    calibration: Path  # .npz (X, y) for int8 calibration and the compile-time checks
    accuracy_margin: float = Field(default=0.01, ge=0.0, le=1.0)
    canary_fraction: float = Field(default=0.34, gt=0.0, le=1.0)
    min_canary_nodes: int = Field(default=1, ge=1)
    failure_threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    ack_timeout_s: float = Field(default=900.0, gt=0.0)
    compile_options: CompileSettings = CompileSettings()


class ReleaseManager:
    """Stage releases through canary waves; see the module docstring.

    Parameters
    ----------
    repo
        The TUF repository releases are signed into.
    fleet
        The fleet view (node states and events).
    announce
        ``announce(profile, body)`` publishes ``body`` retained on ``releases/<profile>``.
    config
        Gate, wave and timing settings; ``state_dir`` is where state is kept.
    compile_fn
        ``compile_fn(model, profile, out, version)`` builds a bundle (default:
        :func:`edgeai.compile.compile_model` with the configured calibration and options).
    clock
        Unix seconds (``time.time``); tests pass a fake one.
    """

    def __init__(
        self,
        repo: ArtifactRepository,
        fleet: FleetView,
        announce: Announce,
        config: ReleaseConfig,
        *,
        compile_fn: CompileFn | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.fleet = fleet
        self.config = config
        self._announce = announce
        self._compile = compile_fn or self._compile_model
        self._clock = clock
        self._path = config.state_dir / STATE_FILE
        self._state = load_state(self._path)

    # -- reading -------------------------------------------------------------------------

    def releases(self) -> tuple[Release, ...]:
        """Every release proposed, oldest first."""
        return self._state.releases

    def serving(self) -> Release | None:
        """The newest release promoted for at least one profile."""
        return next((r for r in reversed(self._state.releases) if r.promoted()), None)

    def in_flight(self) -> list[tuple[Release, Rollout]]:
        """Canary waves waiting for a verdict."""
        return [
            (release, rollout)
            for release in self._state.releases
            for rollout in release.rollouts.values()
            if rollout.state == "canary"
        ]

    def status(self) -> dict[str, Any]:
        """A JSON-ready summary: release serving per profile, waves in flight, history."""
        serving: dict[str, int] = {}
        for release in self._state.releases:
            for profile, rollout in release.rollouts.items():
                if rollout.state == "promoted":
                    serving[profile] = release.release
        return {
            "serving": serving,
            "in_flight": [
                {
                    "release": r.release,
                    "profile": o.profile,
                    "wave": list(o.wave),
                    "acked": list(o.acked),
                    "failed": o.failed,
                }
                for r, o in self.in_flight()
            ],
            "releases": [r.model_dump(mode="json") for r in self._state.releases],
        }

    # -- proposing -----------------------------------------------------------------------

    def propose(self, checkpoint_or_onnx: Path, accuracy: float, round: int) -> Release | None:
        """Gate a candidate model and start its canary waves.

        Parameters
        ----------
        checkpoint_or_onnx
            An ONNX model or an edgeai checkpoint (``.npz``).
        accuracy
            Its validation score on the task's primary metric, higher is better
            (accuracy 0..1 for a classifier, e.g. ``neg_mae`` for a regression).
        round
            The training round that produced it.

        Returns
        -------
        Release or None
            The release with one rollout per fleet profile (``canary``, or ``failed`` with
            the compile or signing error); None when the gate refused it, a wave is still
            in flight, or the fleet has no node with a known profile.
        """
        if self.in_flight():
            log.info("release not proposed: a canary wave is still in flight")
            return None
        serving = self.serving()
        if serving is not None and accuracy < serving.accuracy - self.config.accuracy_margin:
            log.info(
                "release not proposed: score %.4f is worse than release %d's %.4f by more "
                "than the margin %.4f",
                accuracy,
                serving.release,
                serving.accuracy,
                self.config.accuracy_margin,
            )
            return None
        groups = _by_profile(self.fleet.nodes())
        if not groups:
            log.info("release not proposed: no node in the fleet has reported a profile")
            return None
        number = self._next_number(groups)
        release = Release(
            release=number,
            version=f"r{number}",
            accuracy=accuracy,
            round=round,
            source=str(checkpoint_or_onnx),
            created=self._clock(),
        )
        for profile, members in sorted(groups.items()):
            release = self._publish(release, checkpoint_or_onnx, profile, members)
        return release

    def propose_checkpoint(self, path: Path) -> Release | None:
        """:meth:`propose` a checkpoint of the round loop, at the accuracy it records.

        Raises
        ------
        DataError
            The file is no checkpoint, or records no validation accuracy.
        """
        ckpt = load_checkpoint(path)
        metric, score = ckpt.score()  # the task's primary metric (accuracy, neg_mae, ...)
        release = self.propose(path, score, ckpt.round or 0)
        log.info("checkpoint of round %s (%s %.4f): %s", ckpt.round, metric, score,
                 "released" if release else "not released")  # fmt: skip
        return release

    def _publish(
        self, release: Release, model: Path, profile: str, members: Sequence[NodeState]
    ) -> Release:
        """Compile, record, sign and announce one profile's canary wave; return the release."""
        now = self._clock()
        out = self.config.state_dir / "bundles" / release.version / profile
        shutil.rmtree(out, ignore_errors=True)  # a leftover of a crash mid-compile
        out.parent.mkdir(parents=True, exist_ok=True)
        wave = choose_canaries(
            members, release.release, self.config.canary_fraction, self.config.min_canary_nodes
        )
        canary = Rollout(profile=profile, state="canary", wave=wave, started=now, changed=now)
        try:
            self._compile(model, profile, out, release.version)
            # On record before it is signed: a crash after signing cannot leave a wave
            # nobody judges (one never signed times out and its revocation is a no-op).
            self._save(_with(release, canary))
            self.repo.add_release(
                profile, out, release.release, wave, wave_id=f"{release.version}-canary"
            )
        except Exception as exc:  # one profile's failure, whatever it is, must not stop the others
            detail = f"{type(exc).__name__}: {exc}"
            log.error("release %d for %s failed: %s", release.release, profile, detail)
            failed = Rollout(profile=profile, state="failed", started=now, changed=now,
                             detail=detail)  # fmt: skip
            self._save(_with(release, failed))
            return self._find(release.release)
        log.info("release %d for %s: canary wave %s", release.release, profile, ", ".join(wave))
        self._save(_with(release, self._try_announce(release, canary)))
        return self._find(release.release)

    def _next_number(self, groups: Mapping[str, Sequence[NodeState]]) -> int:
        known = [r.release for r in self._state.releases]
        for profile in groups:
            known += [*self.repo.releases(profile), *self.repo.revoked(profile)]
        return max(known, default=0) + 1

    def _compile_model(self, model: Path, profile: str, out: Path, version: str) -> None:
        # Imported here: the compiler pulls in onnx tooling a server without releases
        # never needs.
        from edgeai.compile import compile_model  # noqa: PLC0415
        from edgeai.profiles import load_profile  # noqa: PLC0415

        options = self.config.compile_options.options()
        compile_model(
            model, load_profile(profile), self.config.calibration, out,
            options=options, version=version,
        )  # fmt: skip

    # -- judging -------------------------------------------------------------------------

    def step(self) -> list[ReleaseStateChange]:
        """Promote or revoke canary waves from what the fleet reports; retry announcements.

        Returns
        -------
        list of ReleaseStateChange
            The rollouts that changed state in this step.
        """
        self._retry_announcements()
        waiting = self.in_flight()
        if not waiting:
            return []
        now = self._clock()
        nodes = {s.node: s for s in self.fleet.nodes()}
        since = min(r.created for r, _ in waiting) - _CLOCK_SLACK_S
        events = self.fleet.events(since=since, kinds=FAILURE_KINDS)
        changes: list[ReleaseStateChange] = []
        for release, rollout in waiting:
            verdict = judge(
                release.release, rollout, nodes, events, now=now,
                failure_threshold=self.config.failure_threshold,
                ack_timeout_s=self.config.ack_timeout_s,
            )  # fmt: skip
            updated = rollout.model_copy(update={"acked": verdict.acked, "failed": verdict.failed})
            if verdict.action != "wait":
                state: RolloutState = "promoted" if verdict.action == "promote" else "revoked"
                try:
                    self._sign(release, rollout.profile, state, verdict.reason)
                except (ArtifactError, OSError) as exc:
                    log.error("release %d for %s: cannot sign %s (%s); retrying next step",
                              release.release, rollout.profile, state, exc)  # fmt: skip
                else:
                    updated = updated.model_copy(update={"state": state, "changed": now,
                                                         "detail": verdict.reason,
                                                         "announced": False})  # fmt: skip
                    changes.append(
                        ReleaseStateChange(release.release, rollout.profile, state, verdict.reason)
                    )
            if updated != rollout:
                if updated.state != "canary":
                    updated = self._try_announce(release, updated)
                self._save(_with(self._find(release.release), updated))
        return changes

    def _sign(self, release: Release, profile: str, state: RolloutState, reason: str) -> None:
        if state == "promoted":
            self.repo.set_wave(profile, release.release, None, wave_id=f"{release.version}-all")
            log.info("release %d for %s promoted to every node: %s",
                     release.release, profile, reason)  # fmt: skip
        elif release.release in self.repo.releases(profile):
            self.repo.revoke(profile, release.release, reason)
            log.warning("release %d for %s revoked: %s", release.release, profile, reason)
        else:  # the server stopped between recording and signing it: no device has it
            log.warning("release %d for %s was never signed; dropped: %s",
                        release.release, profile, reason)  # fmt: skip

    # -- announcing and persisting -------------------------------------------------------

    def _try_announce(self, release: Release, rollout: Rollout) -> Rollout:
        body = {
            "release": release.release,
            "version": release.version,
            "wave": None if rollout.state == "promoted" else list(rollout.wave),
            "state": rollout.state,
        }
        try:
            self._announce(rollout.profile, body)
        except Exception as exc:  # the broker may be down: step() retries
            log.warning("announcing release %d for %s failed (%s); will retry",
                        release.release, rollout.profile, exc)  # fmt: skip
            return rollout
        return rollout.model_copy(update={"announced": True})

    def _retry_announcements(self) -> None:
        for release in self._state.releases:
            for rollout in release.rollouts.values():
                if rollout.state != "failed" and not rollout.announced:
                    retried = self._try_announce(release, rollout)
                    if retried.announced:
                        self._save(_with(self._find(release.release), retried))

    def _find(self, number: int) -> Release:
        for release in self._state.releases:
            if release.release == number:
                return release
        raise ReleaseError(f"release {number} is not on record")

    def _save(self, release: Release) -> None:
        others = [r for r in self._state.releases if r.release != release.release]
        state = ManagerState(releases=tuple(sorted([*others, release], key=lambda r: r.release)))
        save_state(self._path, state)
        self._state = state


def _with(release: Release, rollout: Rollout) -> Release:
    return release.model_copy(update={"rollouts": {**release.rollouts, rollout.profile: rollout}})


def _by_profile(nodes: Sequence[NodeState]) -> dict[str, list[NodeState]]:
    groups: dict[str, list[NodeState]] = {}
    for state in nodes:
        if state.profile:
            groups.setdefault(state.profile, []).append(state)
    return groups
