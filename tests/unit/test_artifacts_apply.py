"""apply_latest decisions with an in-memory release source, a real store and a fake gate."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from edgeai.artifacts import (
    GateResult,
    ModelStore,
    ReleaseInfo,
    SignedReleases,
    UpdateRejected,
    apply_latest,
)
from edgeai.artifacts.errors import Reason
from edgeai.profiles import DeviceProfile, load_profile
from tests.unit.test_artifacts_store import make_bundle


class MemorySource:
    """Releases held in local directories; ``fail`` makes the next call raise.

    ``published`` maps release -> bundle, ``waves`` release -> nodes (absent: everyone),
    ``revocations`` release -> reason (the release is then no longer listed).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.published: dict[int, Path] = {}
        self.waves: dict[int, tuple[str, ...]] = {}
        self.revocations: dict[int, str] = {}
        self.fail: tuple[str, Reason] | None = None
        self.downloads: list[int] = []

    def publish(self, release: int, wave: tuple[str, ...] | None = None) -> None:
        path = self.root / f"r{release}"
        if not path.exists():
            make_bundle(path, f"v{release}")
        self.published[release] = path
        if wave is not None:
            self.waves[release] = wave

    def revoke(self, release: int, reason: str) -> None:
        del self.published[release]
        self.revocations[release] = reason

    def _maybe_fail(self, where: str) -> None:
        if self.fail is not None and self.fail[0] == where:
            raise UpdateRejected(self.fail[1], "test")

    def releases(self, profile: str) -> SignedReleases:
        self._maybe_fail("latest")
        infos = tuple(
            ReleaseInfo(profile, r, f"v{r}", (), self.waves.get(r)) for r in sorted(self.published)
        )
        return SignedReleases(profile, infos, dict(self.revocations))

    def download(self, release: ReleaseInfo, dest_dir: Path, mirrors: Sequence[str] = ()) -> Path:
        del mirrors  # a memory source has no mirrors
        self.downloads.append(release.release)
        self._maybe_fail("download")
        shutil.copytree(self.published[release.release], dest_dir)
        return dest_dir


class Events(list[tuple[str, dict[str, Any]]]):
    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        self.append((kind, fields))

    def kinds(self) -> list[str]:
        return [k for k, _ in self]


@pytest.fixture
def profile() -> DeviceProfile:
    return load_profile("x86-64-avx2")


def passing(_bundle: Path, _profile: DeviceProfile) -> GateResult:
    return GateResult(True, (), {"p95_ms": 1.0})


def failing(_bundle: Path, _profile: DeviceProfile) -> GateResult:
    return GateResult(False, ("latency: p95 9 ms at batch 1 > budget 5 ms",), {"p95_ms": 9.0})


def test_applies_new_releases_in_turn(tmp_path: Path, profile: DeviceProfile):
    source, store, events = MemorySource(tmp_path / "src"), ModelStore(tmp_path / "st"), Events()
    assert apply_latest(source, store, profile, events, gate=passing).status == "none"
    source.publish(1)
    out = apply_latest(source, store, profile, events, gate=passing)
    assert (out.status, out.release, out.version) == ("applied", 1, "v1")
    assert apply_latest(source, store, profile, events, gate=passing).status == "current"
    source.publish(2)
    assert apply_latest(source, store, profile, events, gate=passing).status == "applied"
    active = store.active()
    assert active is not None
    assert (active.path / "model.onnx").read_bytes() == b"model v2"
    assert events.kinds() == ["model_applied", "model_applied"]
    assert events[1][1]["previous"] == 1
    assert source.downloads == [1, 2]


def test_gate_failure_marks_bad_keeps_old_and_is_not_retried(
    tmp_path: Path, profile: DeviceProfile
):
    source, store, events = MemorySource(tmp_path / "src"), ModelStore(tmp_path / "st"), Events()
    source.publish(1)
    apply_latest(source, store, profile, events, gate=passing)
    source.publish(2)
    out = apply_latest(source, store, profile, events, gate=failing)
    assert (out.status, out.reason) == ("rejected", "gate")
    assert events.kinds() == ["model_applied", "model_rejected", "rollback"]
    assert events[1][1]["reason"] == "gate"
    assert events[2][1]["to_release"] == 1
    active = store.active()
    assert active is not None
    assert active.release == 1
    again = apply_latest(source, store, profile, events, gate=passing)
    assert again.status == "skipped"
    assert again.reason is not None
    assert again.reason.startswith("known_bad: gate: latency")
    assert source.downloads == [1, 2]  # never downloaded again
    assert len(events) == 3


def test_an_older_signed_release_is_a_replay(tmp_path: Path, profile: DeviceProfile):
    source, store, events = MemorySource(tmp_path / "src"), ModelStore(tmp_path / "st"), Events()
    source.publish(2)
    apply_latest(source, store, profile, events, gate=passing)
    source.published = {}
    source.publish(1)  # older, and release 2 is not revoked: an unsigned rollback
    out = apply_latest(source, store, profile, events, gate=passing)
    assert (out.status, out.reason) == ("rejected", "replay")
    assert events.kinds() == ["model_applied", "model_rejected"]


@pytest.mark.parametrize(("where", "reason"), [("latest", "bad_signature"),
                                               ("download", "tampered")])  # fmt: skip
def test_security_rejections_are_reported(
    tmp_path: Path, profile: DeviceProfile, where: str, reason: Reason
):
    source, store, events = MemorySource(tmp_path / "src"), ModelStore(tmp_path / "st"), Events()
    source.publish(1)
    source.fail = (where, reason)
    out = apply_latest(source, store, profile, events, gate=passing)
    assert (out.status, out.reason) == ("rejected", reason)
    assert events.kinds() == ["model_rejected"]
    assert store.active() is None
    assert store.is_bad(1) is None  # the signed release may still be fine: retry later
    assert not list((tmp_path / "st").glob("scratch/*"))


def test_unreachable_is_retried_silently(tmp_path: Path, profile: DeviceProfile):
    source, store, events = MemorySource(tmp_path / "src"), ModelStore(tmp_path / "st"), Events()
    source.publish(1)
    source.fail = ("latest", "unreachable")
    out = apply_latest(source, store, profile, events, gate=passing)
    assert (out.status, out.reason) == ("unavailable", "unreachable")
    assert events == []
    source.fail = None
    assert apply_latest(source, store, profile, events, gate=passing).status == "applied"


def test_activation_failure_rolls_back(tmp_path: Path, profile: DeviceProfile):
    source, store, events = MemorySource(tmp_path / "src"), ModelStore(tmp_path / "st"), Events()
    source.publish(1)
    apply_latest(source, store, profile, events, gate=passing)
    source.publish(2)

    def refuse(path: Path) -> None:
        raise RuntimeError(f"cannot serve {path.name}")

    out = apply_latest(source, store, profile, events, gate=passing, activate=refuse)
    assert (out.status, out.reason) == ("rejected", "activate")
    active = store.active()
    assert active is not None
    assert active.release == 1
    assert events.kinds()[-2:] == ["model_rejected", "rollback"]
    assert store.is_bad(2) is not None


def test_a_wave_that_leaves_the_node_out_is_not_installed(tmp_path: Path, profile: DeviceProfile):
    source, events = MemorySource(tmp_path / "src"), Events()
    source.publish(1)
    canary, other = ModelStore(tmp_path / "c"), ModelStore(tmp_path / "o")
    for store, node in ((canary, "canary"), (other, "other")):
        assert apply_latest(source, store, profile, events, gate=passing, node=node).release == 1
    source.publish(2, wave=("canary",))
    out = apply_latest(source, other, profile, events, gate=passing, node="other")
    assert (out.status, out.release) == ("not_in_wave", 2)
    assert apply_latest(source, other, profile, events, gate=passing).status == "not_in_wave"
    assert source.downloads == [1, 1]
    out = apply_latest(source, canary, profile, events, gate=passing, node="canary")
    assert (out.status, out.release) == ("applied", 2)
    assert events.kinds() == ["model_applied"] * 3  # not_in_wave is silent
    source.waves.pop(2)  # promoted to everyone
    assert apply_latest(source, other, profile, events, gate=passing, node="other").release == 2


def test_a_new_node_outside_the_wave_gets_the_release_before(
    tmp_path: Path, profile: DeviceProfile
):
    source, store, events = MemorySource(tmp_path / "src"), ModelStore(tmp_path / "st"), Events()
    source.publish(1)
    source.publish(2, wave=("canary",))
    out = apply_latest(source, store, profile, events, gate=passing, node="newcomer")
    assert (out.status, out.release) == ("applied", 1)
    out = apply_latest(source, store, profile, events, gate=passing, node="newcomer")
    assert (out.status, out.release) == ("not_in_wave", 2)
    source.published.pop(1)
    fresh = ModelStore(tmp_path / "fresh")
    out = apply_latest(source, fresh, profile, events, gate=passing, node="newcomer")
    assert (out.status, out.release) == ("not_in_wave", 2)
    assert fresh.active() is None


def test_revocation_rolls_back_to_the_previous_slot(tmp_path: Path, profile: DeviceProfile):
    source, store, events = MemorySource(tmp_path / "src"), ModelStore(tmp_path / "st"), Events()
    source.publish(1)
    apply_latest(source, store, profile, events, gate=passing)
    source.publish(2)
    apply_latest(source, store, profile, events, gate=passing)
    source.revoke(2, "canary failures")
    activated: list[Path] = []
    out = apply_latest(source, store, profile, events, gate=passing, activate=activated.append)
    assert (out.status, out.release, out.reason) == ("rolled_back", 1, "revoked")
    assert source.downloads == [1, 2]  # the kept slot, not a download
    active = store.active()
    assert active is not None
    assert (active.release, (active.path / "model.onnx").read_bytes()) == (1, b"model v1")
    assert activated == [active.path]
    expected = {"release": 2, "version": "v2", "to_release": 1, "stage": "revoked",
                "reason": "canary failures"}  # fmt: skip
    assert events[-1] == ("rollback", expected)
    assert store.is_bad(2) == "revoked: canary failures"
    assert apply_latest(source, store, profile, events, gate=passing).status == "current"
    source.publish(3)
    assert apply_latest(source, store, profile, events, gate=passing).release == 3


def test_revocation_downloads_the_release_when_no_slot_holds_it(
    tmp_path: Path, profile: DeviceProfile
):
    source, store, events = MemorySource(tmp_path / "src"), ModelStore(tmp_path / "st"), Events()
    for release in (1, 2, 3):
        source.publish(release)
        apply_latest(source, store, profile, events, gate=passing)
    source.revoke(3, "bad")
    source.revoke(2, "bad too")  # the previous slot holds 2: not a signed release any more
    out = apply_latest(source, store, profile, events, gate=passing)
    assert (out.status, out.release) == ("rolled_back", 1)
    assert source.downloads == [1, 2, 3, 1]
    assert events.kinds()[-2:] == ["model_applied", "rollback"]
    assert events[-1][1]["to_release"] == 1
    active = store.active()
    assert active is not None
    assert (active.path / "model.onnx").read_bytes() == b"model v1"


def test_revocation_with_a_damaged_previous_slot_downloads(tmp_path: Path, profile: DeviceProfile):
    source, store, events = MemorySource(tmp_path / "src"), ModelStore(tmp_path / "st"), Events()
    for release in (1, 2):
        source.publish(release)
        apply_latest(source, store, profile, events, gate=passing)
    previous = store.previous()
    assert previous is not None
    (previous.path / "model.onnx").write_bytes(b"rotten")
    source.revoke(2, "bad")
    out = apply_latest(source, store, profile, events, gate=passing)
    assert (out.status, out.release) == ("rolled_back", 1)
    assert source.downloads[-1] == 1
    active = store.active()
    assert active is not None
    assert (active.path / "model.onnx").read_bytes() == b"model v1"


def test_revocation_with_nothing_left_keeps_serving(tmp_path: Path, profile: DeviceProfile):
    source, store, events = MemorySource(tmp_path / "src"), ModelStore(tmp_path / "st"), Events()
    source.publish(1)
    apply_latest(source, store, profile, events, gate=passing)
    source.revoke(1, "withdrawn")
    out = apply_latest(source, store, profile, events, gate=passing)
    assert (out.status, out.release, out.reason) == ("revoked", 1, "withdrawn")
    assert store.is_bad(1) == "revoked: withdrawn"
    assert events.kinds() == ["model_applied"]
    source.publish(2)  # a newer release later: an ordinary update, not a rollback
    out = apply_latest(source, store, profile, events, gate=passing)
    assert (out.status, out.release) == ("applied", 2)
    assert events.kinds() == ["model_applied", "model_applied"]


def test_a_revocation_of_another_release_is_not_a_rollback(tmp_path: Path, profile: DeviceProfile):
    source, store, events = MemorySource(tmp_path / "src"), ModelStore(tmp_path / "st"), Events()
    source.publish(1)
    source.publish(2, wave=("canary",))
    apply_latest(source, store, profile, events, gate=passing, node="other")
    source.revoke(2, "canary failed")
    out = apply_latest(source, store, profile, events, gate=passing, node="other")
    assert (out.status, out.release) == ("current", 1)
    assert events.kinds() == ["model_applied"]
