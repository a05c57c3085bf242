"""A staged release end to end: the real tiny model compiled for two profiles, a real TUF
repository served over HTTP on 127.0.0.1, and three device nodes with real updaters and
model stores (no agent daemon: the test plays the telemetry collector's part).

Each node talks to its own HTTP server over the same repository, so each server's request
log is exactly what that node fetched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edgeai.artifacts import (
    ArtifactRepository,
    BundleUpdater,
    ModelStore,
    Outcome,
    ServeHandle,
    UpdaterConfig,
    apply_latest,
    serve,
)
from edgeai.plumbing.files import sha256_file
from edgeai.profiles import DeviceProfile, load_profile
from edgeai.server.collector import FleetEvent, NodeState
from edgeai.server.releases import CompileSettings, ReleaseConfig, ReleaseManager

pytestmark = pytest.mark.integration

X86, RPI = "x86-64-avx2", "rpi5"


@dataclass
class Node:
    """A device: its profile, store, updater and the server only it talks to."""

    name: str
    profile: DeviceProfile
    store: ModelStore
    updater: BundleUpdater
    server: ServeHandle
    events: list[FleetEvent] = field(default_factory=list)
    gate_profile: DeviceProfile | None = None  # a stricter copy to make the gate fail

    def check(self) -> Outcome:
        def record(kind: str, fields: dict[str, Any]) -> None:
            self.events.append(FleetEvent(self.name, kind, time.time(), fields))

        profile = self.gate_profile or self.profile
        return apply_latest(self.updater, self.store, profile, record, node=self.name)

    def fetched(self, profile: str, release: int) -> list[str]:
        return [p for p in self.server.requests if f"/targets/{profile}/{release}/" in p]


class Fleet:
    """The FleetView the collector would build from the nodes' status and events."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.members = {n.name: n for n in nodes}

    def nodes(self) -> Sequence[NodeState]:
        states = []
        for name, node in sorted(self.members.items()):
            active = node.store.active()
            release = active.release if active else None
            states.append(NodeState(name, node.profile.name, online=True, release=release))
        return states

    def events(self, since: float = 0.0, kinds: Sequence[str] = ()) -> Sequence[FleetEvent]:
        found = [e for n in self.members.values() for e in n.events]
        return sorted(
            (e for e in found if e.ts >= since and (not kinds or e.kind in kinds)),
            key=lambda e: e.ts,
        )


@pytest.fixture
def world(tmp_path: Path, tiny_model: tuple[Path, Path]) -> Iterator[dict[str, Any]]:
    repo = ArtifactRepository.create(tmp_path / "repo")
    nodes: list[Node] = []
    try:
        for name, profile in (("x86-a", X86), ("x86-b", X86), ("pi-a", RPI)):
            server = serve(repo.path)
            config = UpdaterConfig(repository_url=server.url, trusted_root=repo.root_path,
                                   cache_dir=tmp_path / name / "tuf")  # fmt: skip
            nodes.append(Node(name, load_profile(profile), ModelStore(tmp_path / name / "st"),
                              BundleUpdater(config), server))  # fmt: skip
        announced: list[tuple[str, dict[str, Any]]] = []
        fast = CompileSettings(calibration_samples=128, eval_samples=400, latency_repeats=20)
        config = ReleaseConfig(state_dir=tmp_path / "releases", calibration=tiny_model[1],
                               compile_options=fast)  # fmt: skip
        manager = ReleaseManager(repo, Fleet(nodes), lambda p, b: announced.append((p, b)),
                                 config)  # fmt: skip
        yield {"repo": repo, "nodes": {n.name: n for n in nodes}, "manager": manager,
               "announced": announced, "model": tiny_model[0]}  # fmt: skip
    finally:
        for node in nodes:
            node.server.close()


def serves(node: Node, repo: ArtifactRepository, release: int) -> bool:
    """True when the node's active slot holds the files signed for ``release``."""
    active = node.store.active()
    if active is None or active.release != release:
        return False
    stored = repo.targets_dir / node.profile.name / str(release)
    return all(
        sha256_file(active.path / f.name.split(".", 1)[1]) == f.name.split(".", 1)[0]
        for f in stored.iterdir()
    )


def test_canary_promote_then_a_failing_canary_is_revoked(world: dict[str, Any]):
    repo, manager, nodes = world["repo"], world["manager"], world["nodes"]
    x86a, x86b, pi = nodes["x86-a"], nodes["x86-b"], nodes["pi-a"]

    # Release 1: one canary of the two x86 nodes, the only rpi5 node.
    first = manager.propose(world["model"], 0.9, round=1)
    assert first is not None
    assert {p: r.state for p, r in first.rollouts.items()} == {X86: "canary", RPI: "canary"}
    [canary_name] = first.rollouts[X86].wave
    canary, other = (x86a, x86b) if canary_name == "x86-a" else (x86b, x86a)
    assert first.rollouts[RPI].wave == ("pi-a",)
    assert canary.check().status == "applied"
    out = other.check()
    assert (out.status, out.release) == ("not_in_wave", 1)
    assert other.fetched(X86, 1) == []
    assert pi.check().status == "applied"
    assert sorted((c.profile, c.state) for c in manager.step()) == [
        (RPI, "promoted"),
        (X86, "promoted"),
    ]
    assert other.check().status == "applied"
    assert all(serves(n, repo, 1) for n in nodes.values())

    # Release 2: the x86 canary's gate fails (a latency budget no model can meet).
    second = manager.propose(world["model"], 0.9, round=2)
    assert second is not None
    [canary_name] = second.rollouts[X86].wave
    canary, other = (x86a, x86b) if canary_name == "x86-a" else (x86b, x86a)
    impossible = canary.profile.budgets.model_copy(update={"p95_latency_ms_batch1": 1e-6})
    canary.gate_profile = canary.profile.model_copy(update={"budgets": impossible})
    out = canary.check()
    assert (out.status, out.reason) == ("rejected", "gate")
    assert (other.check().status, pi.check().status) == ("not_in_wave", "applied")
    changes = {c.profile: c for c in manager.step()}
    assert (changes[X86].state, changes[RPI].state) == ("revoked", "promoted")
    assert "model_rejected (gate): latency" in changes[X86].reason
    assert sorted(world["announced"][-2:], key=lambda a: a[0]) == [
        (RPI, {"release": 2, "version": "r2", "wave": None, "state": "promoted"}),
        (X86, {"release": 2, "version": "r2", "wave": [canary.name], "state": "revoked"}),
    ]

    # After the revocation nobody else gets release 2 for x86, and the canary keeps 1.
    canary_fetches = len(canary.fetched(X86, 2))
    assert canary_fetches == 3  # manifest, model, golden: once, for the gate
    for node in (canary, other, pi):
        assert node.check().status == "current"
    assert other.fetched(X86, 2) == []
    assert len(canary.fetched(X86, 2)) == canary_fetches
    assert serves(canary, repo, 1)
    assert serves(other, repo, 1)
    assert serves(pi, repo, 2)
    assert manager.status()["serving"] == {X86: 1, RPI: 2}

    # A revocation after promotion: the rpi5 node rolls back to its kept slot.
    repo.revoke(RPI, 2, "operator: withdrawn")
    out = pi.check()
    assert (out.status, out.release, out.reason) == ("rolled_back", 1, "revoked")
    assert pi.events[-1].kind == "rollback"
    expected = {"release": 2, "version": "r2", "to_release": 1, "stage": "revoked",
                "reason": "operator: withdrawn"}  # fmt: skip
    assert pi.events[-1].fields == expected
    assert len(pi.fetched(RPI, 1)) == 3  # the slot was reused: nothing fetched again
    assert serves(pi, repo, 1)
