"""Repository and TUF client over an in-memory transport: signing, limits, error reasons."""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api import exceptions

from edgeai.artifacts import (
    ArtifactError,
    ArtifactRepository,
    BundleUpdater,
    UpdaterConfig,
    UpdateRejected,
)
from edgeai.artifacts._tuf import CryptoSigner, FetcherInterface, Metadata
from edgeai.artifacts.updater import rejection

PROFILE = "x86-64-avx2"
URL = "http://repo.invalid"


def make_bundle(path: Path, tag: str, profile: str = PROFILE, size: int = 100) -> Path:
    path.mkdir(parents=True)
    files = {"model.onnx": tag.encode() * size, "golden.npz": f"golden {tag}".encode()}
    for name, data in files.items():
        (path / name).write_bytes(data)
    manifest = {
        "model": {"name": "m", "version": tag},
        "profile": profile,
        "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()},
    }
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return path


class DirFetcher(FetcherInterface):
    """Serves ``http://<host>/<path>`` from a directory per host, in 10-byte chunks."""

    def __init__(self, hosts: dict[str, Path]) -> None:
        self.hosts = hosts
        self.log: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        host, _, rest = url.removeprefix("http://").partition("/")
        path = self.hosts[host] / rest
        if not path.is_file():
            raise exceptions.DownloadHTTPError(f"{url}: 404", 404)
        self.log.append(url)
        data = path.read_bytes()
        return iter([data[i : i + 10] for i in range(0, len(data), 10)])


@pytest.fixture
def repo(tmp_path: Path) -> ArtifactRepository:
    repo = ArtifactRepository.create(tmp_path / "repo")
    repo.add_release(PROFILE, make_bundle(tmp_path / "b1", "v1"), 1)
    return repo


def device(
    tmp_path: Path, repo: ArtifactRepository, **limits: float
) -> tuple[BundleUpdater, DirFetcher]:
    fetcher = DirFetcher({"repo.invalid": repo.path})
    config = UpdaterConfig(repository_url=URL, trusted_root=repo.root_path,
                           cache_dir=tmp_path / "cache", **limits)  # type: ignore[arg-type]  # fmt: skip
    return BundleUpdater(config, fetcher), fetcher


def test_keys_are_private_and_never_under_metadata(repo: ArtifactRepository):
    assert stat.S_IMODE(repo.keys_dir.stat().st_mode) == 0o700
    for role in ("root", "targets", "snapshot", "timestamp"):
        assert stat.S_IMODE((repo.keys_dir / f"{role}.pem").stat().st_mode) == 0o600
    assert not list(repo.metadata_dir.glob("*.pem"))


def test_add_release_signs_targets_with_custom_data(tmp_path: Path, repo: ArtifactRepository):
    paths = repo.add_release(PROFILE, make_bundle(tmp_path / "b2", "v2"), 2)
    assert paths == [f"{PROFILE}/2/{n}" for n in ("golden.npz", "manifest.json", "model.onnx")]
    assert repo.releases(PROFILE) == [1, 2]
    assert repo.latest("rpi4") is None
    targets = Metadata.from_file(str(repo.metadata_dir / "3.targets.json")).signed
    assert targets.targets[paths[2]].custom == {"release": 2, "model_version": "v2",
                                                "profile": PROFILE, "wave": None}  # fmt: skip
    timestamp = Metadata.from_file(str(repo.metadata_dir / "timestamp.json")).signed
    assert timestamp.version == 3


def test_add_release_refusals(tmp_path: Path, repo: ArtifactRepository):
    with pytest.raises(ArtifactError, match="greater than"):
        repo.add_release(PROFILE, make_bundle(tmp_path / "b", "vx"), 1)
    with pytest.raises(ArtifactError, match="compiled for 'rpi4'"):
        repo.add_release(PROFILE, make_bundle(tmp_path / "c", "vx", profile="rpi4"), 5)
    bad = make_bundle(tmp_path / "d", "vx")
    (bad / "model.onnx").write_bytes(b"changed")
    with pytest.raises(ArtifactError, match="refusing to sign"):
        repo.add_release(PROFILE, bad, 5)


def test_targets_key_can_live_offline(tmp_path: Path, repo: ArtifactRepository):
    offline = tmp_path / "offline-targets.pem"
    (repo.keys_dir / "targets.pem").rename(offline)
    with pytest.raises(ArtifactError, match="targets signing key"):
        ArtifactRepository.open(repo.path).add_release(
            PROFILE, make_bundle(tmp_path / "x", "v2"), 2
        )
    reopened = ArtifactRepository.open(repo.path, targets_key=offline)
    reopened.add_release(PROFILE, make_bundle(tmp_path / "y", "v2"), 2)
    assert reopened.latest(PROFILE) == 2


def test_latest_and_download(tmp_path: Path, repo: ArtifactRepository):
    updater, _ = device(tmp_path, repo)
    release = updater.latest(PROFILE)
    assert release is not None
    assert (release.release, release.model_version) == (1, "v1")
    assert updater.latest("rpi4") is None
    out = updater.download(release, tmp_path / "dl" / "bundle")
    assert (out / "model.onnx").read_bytes() == b"v1" * 100
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["bundle"]


def test_over_the_size_limit_nothing_is_fetched(tmp_path: Path, repo: ArtifactRepository):
    updater, fetcher = device(tmp_path, repo, max_bundle_bytes=100)
    release = updater.latest(PROFILE)
    assert release is not None
    before = len(fetcher.log)
    with pytest.raises(UpdateRejected) as info:
        updater.download(release, tmp_path / "dl")
    assert info.value.reason == "too_large"
    assert len(fetcher.log) == before


def test_past_the_deadline_is_a_timeout(tmp_path: Path, repo: ArtifactRepository):
    now = [0.0]

    class SlowTargets(DirFetcher):
        def _fetch(self, url: str) -> Iterator[bytes]:
            for chunk in super()._fetch(url):
                if "/targets/" in url:
                    now[0] += 1.0  # each 10-byte chunk of a file takes one "second"
                yield chunk

    fetcher = SlowTargets({"repo.invalid": repo.path})
    config = UpdaterConfig(repository_url=URL, trusted_root=repo.root_path,
                           cache_dir=tmp_path / "cache", download_deadline_s=15)  # fmt: skip
    updater = BundleUpdater(config, fetcher, clock=lambda: now[0])
    release = updater.latest(PROFILE)
    assert release is not None
    with pytest.raises(UpdateRejected) as info:
        updater.download(release, tmp_path / "dl" / "b")  # 200-byte model: 20 chunks
    assert info.value.reason == "timeout"
    assert not list((tmp_path / "dl").iterdir())


def test_mirror_first_then_server_when_the_mirror_lies(tmp_path: Path, repo: ArtifactRepository):
    peer = tmp_path / "peer"
    for src in (repo.targets_dir / PROFILE / "1").iterdir():
        dest = peer / "targets" / PROFILE / "1" / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
    fetcher = DirFetcher({"repo.invalid": repo.path, "peer.invalid": peer})
    config = UpdaterConfig(repository_url=URL, trusted_root=repo.root_path,
                           cache_dir=tmp_path / "cache")  # fmt: skip
    updater = BundleUpdater(config, fetcher)
    release = updater.latest(PROFILE)
    assert release is not None
    model = next((peer / "targets" / PROFILE / "1").glob("*.model.onnx"))
    model.write_bytes(b"evil" * 50)  # same length, other bytes
    updater.download(release, tmp_path / "b", mirrors=["http://peer.invalid/targets"])
    assert (tmp_path / "b" / "model.onnx").read_bytes() == b"v1" * 100
    targets = [u for u in fetcher.log if "/targets/" in u]
    assert sum("peer.invalid" in u for u in targets) == 3  # all tried on the peer first
    assert [u for u in targets if "repo.invalid" in u] == [
        u for u in targets if "repo.invalid" in u and "model.onnx" in u
    ]  # only the lying file came from the server


def test_expired_metadata(tmp_path: Path):
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
    repo = ArtifactRepository.create(tmp_path / "repo", clock=lambda: past)
    updater, _ = device(tmp_path, repo)
    with pytest.raises(UpdateRejected) as info:
        updater.latest(PROFILE)
    assert info.value.reason == "expired"


def test_wrong_key_and_rollback_of_metadata(tmp_path: Path, repo: ArtifactRepository):
    updater, _ = device(tmp_path, repo)
    assert updater.latest(PROFILE) is not None  # device now trusts timestamp v2
    stamp = repo.metadata_dir / "timestamp.json"
    good = stamp.read_bytes()
    forged = Metadata.from_bytes(good)
    forged.signed.version += 1
    forged.sign(CryptoSigner.generate_ed25519())
    stamp.write_bytes(forged.to_bytes())
    with pytest.raises(UpdateRejected) as info:
        updater.latest(PROFILE)
    assert info.value.reason == "bad_signature"
    repo.add_release(PROFILE, make_bundle(tmp_path / "b2", "v2"), 2)  # timestamp v3
    new_stamp = stamp.read_bytes()
    release = updater.latest(PROFILE)
    assert release is not None
    assert release.release == 2
    stamp.write_bytes(good)  # replay the older, validly signed timestamp
    with pytest.raises(UpdateRejected) as info:
        updater.latest(PROFILE)
    assert info.value.reason == "replay"
    stamp.write_bytes(new_stamp)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (exceptions.UnsignedMetadataError("x"), "bad_signature"),
        (exceptions.EqualVersionNumberError("x"), "replay"),
        (exceptions.BadVersionNumberError("x"), "replay"),
        (exceptions.ExpiredMetadataError("x"), "expired"),
        (exceptions.LengthOrHashMismatchError("x"), "tampered"),
        (exceptions.DownloadLengthMismatchError("x"), "tampered"),
        (exceptions.RepositoryError("x"), "tampered"),
        (exceptions.SlowRetrievalError("x"), "timeout"),
        (exceptions.DownloadHTTPError("x", 404), "unreachable"),
        (exceptions.DownloadError("x"), "unreachable"),
    ],
)
def test_tuf_errors_map_to_reasons(exc: Exception, reason: str):
    assert rejection(exc).reason == reason


def test_waves_are_signed_and_set_wave_promotes(tmp_path: Path, repo: ArtifactRepository):
    repo.add_release(PROFILE, make_bundle(tmp_path / "b2", "v2"), 2, wave_nodes=["n2", "n1"])
    assert repo.wave(PROFILE, 1) is None
    assert repo.wave(PROFILE, 2) == ["n1", "n2"]
    updater, _ = device(tmp_path, repo)
    signed = updater.releases(PROFILE)
    assert [(r.release, r.wave) for r in signed.releases] == [(1, None), (2, ("n1", "n2"))]
    assert (signed.for_node("n1").release, signed.for_node("n3").release) == (2, 1)  # type: ignore[union-attr]
    assert signed.for_node(None).release == 1  # type: ignore[union-attr]
    repo.set_wave(PROFILE, 2, None)
    assert repo.wave(PROFILE, 2) is None
    assert updater.releases(PROFILE).for_node("n3").release == 2  # type: ignore[union-attr]
    with pytest.raises(ArtifactError, match="node names"):
        repo.set_wave(PROFILE, 2, [])
    with pytest.raises(ArtifactError, match="not signed"):
        repo.set_wave(PROFILE, 9, None)


def test_revoke_unsigns_the_release_and_signs_the_reason(tmp_path: Path, repo: ArtifactRepository):
    repo.add_release(PROFILE, make_bundle(tmp_path / "b2", "v2"), 2)
    updater, _ = device(tmp_path, repo)
    assert updater.latest(PROFILE).release == 2  # type: ignore[union-attr]
    repo.revoke(PROFILE, 2, "3/3 canaries failed")
    assert repo.releases(PROFILE) == [1]
    assert repo.revoked(PROFILE) == {2: "3/3 canaries failed"}
    assert repo.revoked("rpi4") == {}
    signed = updater.releases(PROFILE)  # a newer metadata version: not a replay for TUF
    assert [r.release for r in signed.releases] == [1]
    assert signed.revoked == {2: "3/3 canaries failed"}
    with pytest.raises(ArtifactError, match="greater than the latest published or revoked"):
        repo.add_release(PROFILE, make_bundle(tmp_path / "b2b", "v2b"), 2)
    repo.add_release(PROFILE, make_bundle(tmp_path / "b3", "v3"), 3)
    assert updater.latest(PROFILE).release == 3  # type: ignore[union-attr]
    assert updater.releases(PROFILE).revoked == {2: "3/3 canaries failed"}
    with pytest.raises(ArtifactError, match="not signed"):
        repo.revoke(PROFILE, 2, "again")


def test_a_malformed_wave_hides_the_release(tmp_path: Path, repo: ArtifactRepository):
    repo.add_release(PROFILE, make_bundle(tmp_path / "b2", "v2"), 2, wave_nodes=["n1"])
    targets = repo._targets()
    for info in targets.targets.values():
        if info.custom["release"] == 2:
            info.unrecognized_fields["custom"] = {**info.custom, "wave": {"nodes": "n1"}}
    repo._publish(targets)  # validly signed, but not a list of names
    updater, _ = device(tmp_path, repo)
    assert [r.release for r in updater.releases(PROFILE).releases] == [1]
