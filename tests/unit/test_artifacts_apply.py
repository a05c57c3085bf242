"""apply_latest decisions with an in-memory release source, a real store and a fake gate."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from edgeai.artifacts import GateResult, ModelStore, ReleaseInfo, UpdateRejected, apply_latest
from edgeai.artifacts.errors import Reason
from edgeai.profiles import DeviceProfile, load_profile
from tests.unit.test_artifacts_store import make_bundle


class MemorySource:
    """Releases held in local directories; ``fail`` makes the next call raise."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.releases: dict[int, Path] = {}
        self.fail: tuple[str, Reason] | None = None
        self.downloads = 0

    def publish(self, release: int) -> None:
        self.releases[release] = make_bundle(self.root / f"r{release}", f"v{release}")

    def _maybe_fail(self, where: str) -> None:
        if self.fail is not None and self.fail[0] == where:
            raise UpdateRejected(self.fail[1], "test")

    def latest(self, profile: str) -> ReleaseInfo | None:
        self._maybe_fail("latest")
        if not self.releases:
            return None
        newest = max(self.releases)
        return ReleaseInfo(profile, newest, f"v{newest}", ())

    def download(self, release: ReleaseInfo, dest_dir: Path, mirrors: Sequence[str] = ()) -> Path:
        del mirrors  # a memory source has no mirrors
        self.downloads += 1
        self._maybe_fail("download")
        shutil.copytree(self.releases[release.release], dest_dir)
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
    assert source.downloads == 2


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
    assert source.downloads == 2  # never downloaded again
    assert len(events) == 3


def test_an_older_signed_release_is_a_replay(tmp_path: Path, profile: DeviceProfile):
    source, store, events = MemorySource(tmp_path / "src"), ModelStore(tmp_path / "st"), Events()
    source.publish(2)
    apply_latest(source, store, profile, events, gate=passing)
    source.releases = {}
    source.publish(1)
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
