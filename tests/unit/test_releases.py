"""Release manager logic: gate, canary choice, promotion, failure threshold, timeout, restart.

An in-memory fleet view, a fake compiler writing bundle-shaped directories, a fake clock,
and a real (local, file-based) TUF repository.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from edgeai.artifacts import ArtifactRepository
from edgeai.errors import CompileError, DataError
from edgeai.flower.loop import RoundOutcome
from edgeai.flower.plan import ClientPlan, DataConfig, TrainingConfig
from edgeai.flower.records import RoundRecord
from edgeai.flower.sinks import CheckpointSink
from edgeai.flower.strategy import RoundStats
from edgeai.models.checkpoint import checkpoint_from_state, save_checkpoint
from edgeai.privacy.config import PrivacyConfig
from edgeai.server.collector import FleetEvent, NodeState
from edgeai.server.releases import (
    ReleaseConfig,
    ReleaseError,
    ReleaseManager,
    canary_count,
    choose_canaries,
    load_state,
)
from edgeai.task import TaskConfig
from tests.support.clock import FakeClock

X86, RPI = "x86-64-avx2", "rpi5"


class MemoryFleet:
    """A FleetView over dicts the test edits."""

    def __init__(self) -> None:
        self.states: dict[str, NodeState] = {}
        self.log: list[FleetEvent] = []

    def add(self, node: str, profile: str, release: int | None = None, online: bool = True):
        self.states[node] = NodeState(node, profile, online, release=release)

    def report(self, node: str, release: int) -> None:
        state = self.states[node]
        self.states[node] = NodeState(node, state.profile, state.online, release=release)

    def event(self, node: str, kind: str, ts: float, **fields: Any) -> None:
        self.log.append(FleetEvent(node, kind, ts, fields))

    def nodes(self) -> Sequence[NodeState]:
        return [self.states[n] for n in sorted(self.states)]

    def events(self, since: float = 0.0, kinds: Sequence[str] = ()) -> Sequence[FleetEvent]:
        return [e for e in self.log if e.ts >= since and (not kinds or e.kind in kinds)]


class FakeCompiler:
    """Writes a bundle-shaped directory; profiles in ``broken`` fail like the compiler."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.broken: set[str] = set()

    def __call__(self, model: Path, profile: str, out: Path, version: str) -> None:
        self.calls.append((profile, version))
        if profile in self.broken:
            raise CompileError(f"no candidate of {model.name} fits {profile}'s budgets")
        out.mkdir(parents=True)
        files = {"model.onnx": f"{version} {profile}".encode(), "golden.npz": b"golden"}
        for name, data in files.items():
            (out / name).write_bytes(data)
        manifest = {
            "model": {"name": "m", "version": version},
            "profile": profile,
            "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()},
        }
        (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


class Harness:
    def __init__(self, tmp: Path, **config: Any) -> None:
        self.tmp = tmp
        self.repo = ArtifactRepository.create(tmp / "repo")
        self.fleet = MemoryFleet()
        self.announced: list[tuple[str, dict[str, Any]]] = []
        self.compiler = FakeCompiler()
        self.clock = FakeClock(1_000.0)
        self.config = ReleaseConfig(state_dir=tmp / "state", calibration=tmp / "cal.npz",
                                    **config)  # fmt: skip
        self.model = tmp / "model.onnx"
        self.manager = self.restart()

    def announce(self, profile: str, body: dict[str, Any]) -> None:
        self.announced.append((profile, body))

    def restart(self) -> ReleaseManager:
        self.manager = ReleaseManager(
            ArtifactRepository.open(self.tmp / "repo"), self.fleet, self.announce, self.config,
            compile_fn=self.compiler, clock=self.clock,
        )  # fmt: skip
        return self.manager


def loop_checkpoint(directory: Path, server_round: int, accuracy: float) -> Path:
    """A checkpoint written as the round loop writes it: through its checkpoint sink."""
    plan = ClientPlan(task=TaskConfig(name="mnist", options={"model": "dp-cnn-tiny"}),
                      task_name="mnist", task_version="1",
                      data=DataConfig(), training=TrainingConfig(), privacy=PrivacyConfig(),
                      num_rounds=server_round)  # fmt: skip
    path_of = lambda r: directory / f"round-{r:04d}.npz"  # noqa: E731
    stats = RoundStats(sampled=3, accepted=3, bytes_up=12, bytes_down=12, train_loss=0.4)
    record = RoundRecord.of(server_round, accuracy, 0.3, 2.5, stats, 1.0, 1e-5, None)
    arrays = ArrayRecord({"w": Array(np.full(3, server_round, np.float32))})
    CheckpointSink(plan, path_of).round_done(RoundOutcome(record, arrays, 0, 1.0, {}))
    return path_of(server_round)


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    harness = Harness(tmp_path)
    for node in ("a1", "a2", "a3"):
        harness.fleet.add(node, X86)
    harness.fleet.add("p1", RPI)
    return harness


def test_canary_count_and_choice_are_deterministic():
    assert [canary_count(n, 0.34, 1) for n in (1, 2, 3, 10)] == [1, 1, 2, 4]
    assert canary_count(5, 0.1, 2) == 2
    nodes = [NodeState(f"n{i}", X86, online=True) for i in range(6)]
    first = choose_canaries(nodes, 7, 0.34, 1)
    assert len(first) == 3
    assert first == choose_canaries(list(reversed(nodes)), 7, 0.34, 1)
    assert {choose_canaries(nodes, r, 0.34, 1) for r in range(1, 9)} != {first}  # rotates
    offline = [NodeState(n.node, X86, online=n.node in first) for n in nodes]
    assert choose_canaries(offline, 7, 0.34, 1) == first
    mixed = [NodeState("up", X86, online=True), NodeState("down", X86, online=False)]
    assert choose_canaries(mixed, 1, 0.34, 1) == ("up",)


def test_propose_compiles_per_profile_signs_canary_waves_and_announces(h: Harness):
    release = h.manager.propose(h.model, 0.9, round=3)
    assert release is not None
    assert (release.release, release.version, release.round) == (1, "r1", 3)
    assert sorted(h.compiler.calls) == [(RPI, "r1"), (X86, "r1")]
    x86 = release.rollouts[X86]
    assert (x86.state, len(x86.wave)) == ("canary", 2)
    assert release.rollouts[RPI].wave == ("p1",)
    assert h.repo.wave(X86, 1) == list(x86.wave)
    assert h.repo.wave(RPI, 1) == ["p1"]
    bodies = dict(h.announced)
    assert bodies[X86] == {"release": 1, "version": "r1", "wave": list(x86.wave),
                           "state": "canary"}  # fmt: skip
    assert h.manager.propose(h.model, 0.95, round=4) is None  # one wave at a time


def test_all_canaries_acked_promotes(h: Harness):
    release = h.manager.propose(h.model, 0.9, round=1)
    assert release is not None
    wave = release.rollouts[X86].wave
    h.fleet.report(wave[0], 1)
    assert h.manager.step() == []
    h.fleet.report(wave[1], 1)
    h.fleet.report("p1", 1)
    changes = h.manager.step()
    assert sorted((c.profile, c.state) for c in changes) == [(RPI, "promoted"), (X86, "promoted")]
    assert h.repo.wave(X86, 1) is None  # re-signed for everyone
    assert h.announced[-1][1]["state"] == "promoted"
    assert h.announced[-1][1]["wave"] is None
    assert h.manager.status()["serving"] == {RPI: 1, X86: 1}
    assert h.manager.step() == []


def test_failures_past_the_threshold_revoke(h: Harness):
    h.manager.propose(h.model, 0.9, round=1)
    for node in ("a1", "a2", "a3", "p1"):
        h.fleet.report(node, 1)
    h.manager.step()
    release = h.manager.propose(h.model, 0.9, round=2)
    assert release is not None
    first, second = release.rollouts[X86].wave
    h.fleet.event(first, "model_rejected", h.clock.now, release=2, reason="gate",
                  detail="latency: p95 9 ms > 5 ms")  # fmt: skip
    h.fleet.event(first, "rollback", h.clock.now, release=2, to_release=1, stage="gate")
    h.fleet.event(second, "model_rejected", h.clock.now, release=1, reason="gate")  # old news
    h.fleet.report("p1", 2)
    changes = h.manager.step()
    assert sorted((c.profile, c.state) for c in changes) == [(RPI, "promoted"), (X86, "revoked")]
    x86 = next(c for c in changes if c.profile == X86)
    assert x86.reason.startswith("1/2 failed: ")
    assert "latency: p95 9 ms" in x86.reason
    assert h.repo.releases(X86) == [1]
    assert h.repo.revoked(X86) == {2: x86.reason}
    assert h.repo.releases(RPI) == [1, 2]
    revoked = [b for p, b in h.announced if p == X86][-1]
    assert revoked == {"release": 2, "version": "r2", "wave": [first, second], "state": "revoked"}
    assert h.manager.status()["serving"] == {X86: 1, RPI: 2}


def test_a_failure_below_the_threshold_waits(tmp_path: Path):
    h = Harness(tmp_path, failure_threshold=0.6, canary_fraction=1.0)
    for node in ("a1", "a2"):
        h.fleet.add(node, X86)
    h.manager.propose(h.model, 0.9, round=1)
    h.fleet.event("a1", "model_rejected", h.clock.now, release=1, reason="tampered")
    assert h.manager.step() == []
    h.fleet.report("a2", 1)
    h.fleet.report("a1", 1)  # a failure is not undone by a later report
    assert h.manager.step() == []
    rollout = h.manager.releases()[0].rollouts[X86]
    assert (rollout.acked, list(rollout.failed)) == (("a2",), ["a1"])


def test_no_verdict_within_the_ack_timeout_revokes(tmp_path: Path):
    h = Harness(tmp_path, ack_timeout_s=60.0)
    h.fleet.add("a1", X86)
    h.manager.propose(h.model, 0.9, round=1)
    h.clock.now += 59.0
    assert h.manager.step() == []
    h.clock.now += 1.0
    [change] = h.manager.step()
    assert (change.state, change.reason) == ("revoked", "ack timeout: 0/1 acked after 60 s "
                                                        "(no ack from a1)")  # fmt: skip
    assert h.repo.latest(X86) is None


def test_quality_gate_against_the_serving_release(tmp_path: Path):
    h = Harness(tmp_path, accuracy_margin=0.02)
    h.fleet.add("a1", X86)
    assert h.manager.propose(h.model, 0.10, round=1) is not None  # the first always passes
    h.fleet.report("a1", 1)
    h.manager.step()
    assert h.manager.propose(h.model, 0.079, round=2) is None
    assert h.compiler.calls == [(X86, "r1")]
    release = h.manager.propose(h.model, 0.081, round=3)
    assert release is not None
    assert release.release == 2


def test_a_compile_failure_does_not_block_other_profiles(h: Harness):
    h.compiler.broken.add(RPI)
    release = h.manager.propose(h.model, 0.9, round=1)
    assert release is not None
    assert release.rollouts[RPI].state == "failed"
    assert "no candidate of model.onnx fits rpi5" in (release.rollouts[RPI].detail or "")
    assert release.rollouts[X86].state == "canary"
    assert h.repo.latest(RPI) is None
    assert [p for p, _ in h.announced] == [X86]
    for node in release.rollouts[X86].wave:
        h.fleet.report(node, 1)
    assert [(c.profile, c.state) for c in h.manager.step()] == [(X86, "promoted")]


def test_an_unknown_profile_is_a_compile_failure(tmp_path: Path):
    h = Harness(tmp_path)
    h.fleet.add("a1", X86)
    h.fleet.add("z1", "no-such-board")
    h.manager = ReleaseManager(h.repo, h.fleet, h.announce, h.config, clock=h.clock)
    release = h.manager.propose(h.model, 0.9, round=1)  # the real compiler: fails fast
    assert release is not None
    assert {p: r.state for p, r in release.rollouts.items()} == {
        X86: "failed",
        "no-such-board": "failed",
    }


def test_state_survives_a_restart(h: Harness):
    release = h.manager.propose(h.model, 0.9, round=1)
    assert release is not None
    restarted = h.restart()
    assert restarted.releases() == (release,)
    assert all(r.announced for r in release.rollouts.values())
    assert restarted.propose(h.model, 0.9, round=2) is None  # still in flight
    for node in (*release.rollouts[X86].wave, "p1"):
        h.fleet.report(node, 1)
    assert len(restarted.step()) == 2
    again = h.restart()
    assert again.status()["serving"] == {RPI: 1, X86: 1}
    assert again.propose(h.model, 0.9, round=2).release == 2  # type: ignore[union-attr]


def test_release_numbers_skip_what_the_repository_already_has(h: Harness):
    h.compiler(h.model, X86, h.tmp / "pre", "r5")
    h.repo.add_release(X86, h.tmp / "pre", 5)
    release = h.manager.propose(h.model, 0.9, round=1)
    assert release is not None
    assert release.release == 6


def test_announce_failures_are_retried(h: Harness):
    failing = {"on": True}

    def flaky(profile: str, body: dict[str, Any]) -> None:
        if failing["on"]:
            raise ConnectionError("broker down")
        h.announced.append((profile, body))

    h.manager = ReleaseManager(h.repo, h.fleet, flaky, h.config, compile_fn=h.compiler,
                               clock=h.clock)  # fmt: skip
    release = h.manager.propose(h.model, 0.9, round=1)
    assert release is not None
    assert not release.rollouts[X86].announced
    assert h.announced == []
    failing["on"] = False
    h.manager.step()
    assert sorted(p for p, _ in h.announced) == [RPI, X86]
    h.manager.step()
    assert len(h.announced) == 2


def test_an_empty_fleet_proposes_nothing(tmp_path: Path):
    h = Harness(tmp_path)
    assert h.manager.propose(h.model, 0.9, round=1) is None
    assert h.compiler.calls == []


def test_a_damaged_state_file_is_an_error(tmp_path: Path):
    (tmp_path / "releases.json").write_text('{"releases": 3}', encoding="utf-8")
    with pytest.raises(ReleaseError, match="not a release manager state file"):
        load_state(tmp_path / "releases.json")


def test_a_crash_before_signing_leaves_a_wave_that_times_out_harmlessly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    h = Harness(tmp_path, ack_timeout_s=10.0)
    h.fleet.add("a1", X86)

    def crash(*_args: Any, **_kwargs: Any) -> list[str]:
        raise KeyboardInterrupt  # the process dies between recording and signing

    monkeypatch.setattr(h.manager.repo, "add_release", crash)
    with pytest.raises(KeyboardInterrupt):
        h.manager.propose(h.model, 0.9, round=1)
    restarted = h.restart()
    assert [r.rollouts[X86].state for r in restarted.releases()] == ["canary"]
    h.clock.now += 10.0
    [change] = restarted.step()
    assert change.state == "revoked"
    assert (h.repo.releases(X86), h.repo.revoked(X86)) == ([], {})
    assert restarted.propose(h.model, 0.9, round=2).release == 2  # type: ignore[union-attr]


def test_a_loop_checkpoint_is_gated_at_the_accuracy_the_loop_recorded(tmp_path: Path):
    h = Harness(tmp_path, accuracy_margin=0.01)
    h.fleet.add("a1", X86)
    first = h.manager.propose_checkpoint(loop_checkpoint(tmp_path / "ckpt", 4, 0.90))
    assert first is not None
    assert (first.release, first.round, first.accuracy) == (1, 4, 0.90)
    h.fleet.report("a1", 1)
    h.manager.step()
    assert h.manager.serving() == h.manager.releases()[0]
    # 0.02 below the serving release, past the margin: refused (read as 0.0, both would pass).
    assert h.manager.propose_checkpoint(loop_checkpoint(tmp_path / "ckpt", 5, 0.88)) is None
    assert h.compiler.calls == [(X86, "r1")]
    within = h.manager.propose_checkpoint(loop_checkpoint(tmp_path / "ckpt", 6, 0.895))
    assert within is not None
    assert (within.release, within.accuracy) == (2, 0.895)


def test_a_checkpoint_that_records_no_accuracy_is_not_proposed_as_zero(tmp_path: Path):
    h = Harness(tmp_path)
    h.fleet.add("a1", X86)
    old = checkpoint_from_state(
        "dp-cnn-tiny",
        (1, 28, 28),
        10,
        {"w": np.zeros(3, np.float32)},
        round_=3,
        provenance={"accuracy": 0.9},
    )  # the old deployed key
    path = save_checkpoint(old, tmp_path / "round-0003.npz")
    with pytest.raises(DataError, match="records no validation accuracy"):
        h.manager.propose_checkpoint(path)
    assert h.manager.releases() == ()
