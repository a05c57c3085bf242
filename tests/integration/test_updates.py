"""Signed updates end to end: real TUF metadata over HTTP on 127.0.0.1, the real tiny bundle.

Covers the happy path, tampering, a wrong signing key, replayed metadata, a gate failure,
size and time limits, LAN mirrors, and SIGKILL of a real agent process mid-download and
mid-swap followed by recovery.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
    serve_mirror,
)
from edgeai.artifacts._bundle import bundle_mismatches
from edgeai.artifacts._tuf import CryptoSigner, Metadata
from edgeai.plumbing.files import sha256_file
from edgeai.profiles import DeviceProfile, load_profile
from tests.bundles import bundle_variant
from tests.http import throttled

pytestmark = pytest.mark.integration

PROFILE = "x86-64-avx2"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundles(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("variants")
    return {
        "r1": bundle_variant(tiny_bundle, base / "r1", "r1"),
        "r2": bundle_variant(tiny_bundle, base / "r2", "r2"),
        "bad": bundle_variant(tiny_bundle, base / "bad", "bad", golden_shift=1.0),
    }


@pytest.fixture
def profile() -> DeviceProfile:
    return load_profile(PROFILE)


@pytest.fixture
def repo(tmp_path: Path, bundles: dict[str, Path]) -> ArtifactRepository:
    repo = ArtifactRepository.create(tmp_path / "repo")
    repo.add_release(PROFILE, bundles["r1"], 1)
    return repo


@pytest.fixture
def server(repo: ArtifactRepository) -> Iterator[ServeHandle]:
    with serve(repo.path) as handle:
        yield handle


@dataclass
class Env:
    """One test's repository, its server, the device profile and the release bundles."""

    tmp: Path
    repo: ArtifactRepository
    server: ServeHandle
    profile: DeviceProfile
    bundles: dict[str, Path]


@pytest.fixture
def env(
    tmp_path: Path,
    repo: ArtifactRepository,
    server: ServeHandle,
    profile: DeviceProfile,
    bundles: dict[str, Path],
) -> Env:
    return Env(tmp_path, repo, server, profile, bundles)


class Events(list[tuple[str, dict[str, Any]]]):
    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        self.append((kind, fields))

    def kinds(self) -> list[str]:
        return [k for k, _ in self]


def device(tmp_path: Path, repo: ArtifactRepository, url: str, **limits: Any) -> BundleUpdater:
    config = UpdaterConfig(repository_url=url, trusted_root=repo.root_path,
                           cache_dir=tmp_path / "device-cache", **limits)  # fmt: skip
    return BundleUpdater(config)


def serves(store: ModelStore, bundle: Path) -> bool:
    """True when the store's active slot holds exactly ``bundle``'s files (by sha256)."""
    active = store.active()
    if active is None or bundle_mismatches(active.path):
        return False
    names = ["manifest.json", *json.loads((bundle / "manifest.json").read_text())["files"]]
    return all(sha256_file(active.path / n) == sha256_file(bundle / n) for n in names)


def apply(updater: BundleUpdater, store: ModelStore, profile: DeviceProfile, events: Events,
          **kwargs: Any) -> Outcome:  # fmt: skip
    return apply_latest(updater, store, profile, events, **kwargs)


def test_release_1_then_2_applied(tmp_path, repo, server, profile, bundles):
    updater, store, events = (
        device(tmp_path, repo, server.url),
        ModelStore(tmp_path / "st"),
        Events(),
    )
    assert apply(updater, store, profile, events).status == "applied"
    assert serves(store, bundles["r1"])
    repo.add_release(PROFILE, bundles["r2"], 2)
    out = apply(updater, store, profile, events)
    assert (out.status, out.release) == ("applied", 2)
    assert serves(store, bundles["r2"])
    assert apply(updater, store, profile, events).status == "current"
    assert events.kinds() == ["model_applied", "model_applied"]
    assert events[1][1]["measurements"]["max_abs_diff"] <= events[1][1]["measurements"]["atol"]
    assert not any(p.startswith("/keys") for p in server.requests)


def test_keys_are_not_served(repo, server):
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    for path in ("/keys/root.pem", "/keys/", "/", "/metadata/../keys/root.pem"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(server.url + path, timeout=5)  # noqa: S310 (loopback)
        assert info.value.code == 404


def test_tampered_file_is_rejected_and_old_keeps_serving(tmp_path, repo, server, profile, bundles):
    updater, store, events = (
        device(tmp_path, repo, server.url),
        ModelStore(tmp_path / "st"),
        Events(),
    )
    apply(updater, store, profile, events)
    repo.add_release(PROFILE, bundles["r2"], 2)
    served = next((repo.targets_dir / PROFILE / "2").glob("*.model.onnx"))
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit-pattern, same length
    served.write_bytes(bytes(data))
    out = apply(updater, store, profile, events)
    assert (out.status, out.reason) == ("rejected", "tampered")
    assert events.kinds() == ["model_applied", "model_rejected"]
    assert events[1][1]["reason"] == "tampered"
    assert serves(store, bundles["r1"])
    assert store.is_bad(2) is None  # the release is fine; its bytes were not


def test_metadata_signed_with_a_wrong_key(tmp_path, repo, server, profile, bundles):
    updater, store, events = (
        device(tmp_path, repo, server.url),
        ModelStore(tmp_path / "st"),
        Events(),
    )
    apply(updater, store, profile, events)
    stamp = repo.metadata_dir / "timestamp.json"
    forged = Metadata.from_bytes(stamp.read_bytes())
    forged.signed.version += 1
    forged.sign(CryptoSigner.generate_ed25519())
    stamp.write_bytes(forged.to_bytes())
    out = apply(updater, store, profile, events)
    assert (out.status, out.reason) == ("rejected", "bad_signature")
    assert events.kinds()[-1] == "model_rejected"
    assert serves(store, bundles["r1"])


def test_replayed_older_metadata(tmp_path, repo, server, profile, bundles):
    updater, store, events = (
        device(tmp_path, repo, server.url),
        ModelStore(tmp_path / "st"),
        Events(),
    )
    old = {p.name: p.read_bytes() for p in repo.metadata_dir.iterdir()}
    repo.add_release(PROFILE, bundles["r2"], 2)
    assert apply(updater, store, profile, events).release == 2
    for name, data in old.items():  # a malicious server offers yesterday's signed state
        (repo.metadata_dir / name).write_bytes(data)
    out = apply(updater, store, profile, events)
    assert (out.status, out.reason) == ("rejected", "replay")
    assert serves(store, bundles["r2"])


def test_gate_failure_is_marked_bad_rolled_back_and_not_retried(
    tmp_path, repo, server, profile, bundles
):
    updater, store, events = (
        device(tmp_path, repo, server.url),
        ModelStore(tmp_path / "st"),
        Events(),
    )
    apply(updater, store, profile, events)
    repo.add_release(PROFILE, bundles["bad"], 2)  # validly signed, wrong golden outputs
    out = apply(updater, store, profile, events)
    assert (out.status, out.reason) == ("rejected", "gate")
    assert events.kinds() == ["model_applied", "model_rejected", "rollback"]
    assert "golden: max abs diff" in events[1][1]["detail"]
    assert serves(store, bundles["r1"])
    fetched = sum("/targets/" in p for p in server.requests)
    again = apply(updater, store, profile, events)
    assert again.status == "skipped"
    assert sum("/targets/" in p for p in server.requests) == fetched
    assert len(events) == 3


def test_size_limit(tmp_path, repo, server, profile):
    updater = device(tmp_path, repo, server.url, max_bundle_bytes=10_000)
    store, events = ModelStore(tmp_path / "st"), Events()
    out = apply(updater, store, profile, events)
    assert (out.status, out.reason) == ("rejected", "too_large")
    assert not any("/targets/" in p for p in server.requests)


def test_download_past_the_deadline(tmp_path, repo, profile, bundles):
    with throttled(repo.path) as slow:
        updater = device(tmp_path, repo, slow.url, download_deadline_s=0.3)
        store, events = ModelStore(tmp_path / "st"), Events()
        started = time.monotonic()
        out = apply(updater, store, profile, events)
        took = time.monotonic() - started
    assert (out.status, out.reason) == ("unavailable", "timeout")
    assert took < 5.0
    assert store.active() is None
    assert not list((tmp_path / "st").glob("scratch/*"))


@pytest.fixture
def peer(tmp_path: Path, bundles: dict[str, Path]) -> Iterator[tuple[Path, ServeHandle]]:
    """A LAN peer that already runs release 2 and serves its active slot as a mirror."""
    store = ModelStore(tmp_path / "peer")
    active = store.commit(store.stage(bundles["r2"], 2))
    with serve_mirror(active.path) as mirror:
        yield active.path, mirror


def test_lan_mirror_is_used(env, peer):
    tmp_path, repo, server, profile, bundles = (
        env.tmp,
        env.repo,
        env.server,
        env.profile,
        env.bundles,
    )
    repo.add_release(PROFILE, bundles["r2"], 2)
    _, mirror = peer
    updater, store, events = (
        device(tmp_path, repo, server.url),
        ModelStore(tmp_path / "st"),
        Events(),
    )
    out = apply(updater, store, profile, events, mirrors=[mirror.url])
    assert (out.status, out.release) == ("applied", 2)
    assert len(mirror.requests) == 3
    assert not any("/targets/" in p for p in server.requests)
    assert serves(store, bundles["r2"])


def test_tampered_mirror_falls_back_to_the_server(env, peer):
    tmp_path, repo, server, profile, bundles = (
        env.tmp,
        env.repo,
        env.server,
        env.profile,
        env.bundles,
    )
    repo.add_release(PROFILE, bundles["r2"], 2)
    slot, mirror = peer
    (slot / "model.onnx").write_bytes(b"\0" * (slot / "model.onnx").stat().st_size)
    updater, store, events = (
        device(tmp_path, repo, server.url),
        ModelStore(tmp_path / "st"),
        Events(),
    )
    out = apply(updater, store, profile, events, mirrors=[mirror.url])
    assert (out.status, out.release) == ("applied", 2)
    assert len(mirror.requests) == 3
    assert [p.rsplit(".", 2)[-2:] for p in server.requests if "/targets/" in p] == [
        ["model", "onnx"]
    ]
    assert serves(store, bundles["r2"])


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"agent exited {proc.returncode} before the pause point:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"agent did not reach the pause point within {timeout} s")
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("phase", "expect"),
    [("download", "r1"), ("stage", "r1"), ("commit-before", "r1"), ("commit-after", "r2")],
)
def test_kill_9_mid_update(env, phase, expect):
    tmp_path, repo, server, profile, bundles = (
        env.tmp,
        env.repo,
        env.server,
        env.profile,
        env.bundles,
    )
    updater, store, events = (
        device(tmp_path, repo, server.url),
        ModelStore(tmp_path / "st"),
        Events(),
    )
    apply(updater, store, profile, events)  # release 1 is active
    repo.add_release(PROFILE, bundles["r2"], 2)
    marker = tmp_path / "paused"
    env = {**os.environ, "EDGEAI_TEST_PAUSE_AT": phase, "EDGEAI_TEST_PAUSE_FILE": str(marker)}
    args = [server.url, str(repo.root_path), str(tmp_path / "device-cache"), str(tmp_path / "st")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.update_agent", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(marker, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    restarted = ModelStore(tmp_path / "st")
    active = restarted.recover()
    assert active is not None
    assert serves(restarted, bundles[expect]), f"after kill at {phase}: not exactly {expect}"
    assert not list((tmp_path / "st" / "slots").glob(".*"))
    assert not (tmp_path / "st" / "scratch").exists()  # no half download left
    out = apply(updater, restarted, profile, events)  # and the update then completes
    assert out.status == ("current" if expect == "r2" else "applied")
    assert serves(restarted, bundles["r2"])


def test_agent_script_applies_without_hooks(tmp_path, repo, server):
    args = [server.url, str(repo.root_path), str(tmp_path / "cache"), str(tmp_path / "st")]
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.update_agent", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert report["outcome"]["status"] == "applied"
    assert report["events"] == ["model_applied"]
