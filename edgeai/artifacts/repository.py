"""The server side of signed model distribution: a TUF repository of bundles.

Built with python-tuf's Metadata API (``tuf/api/metadata.py``; the flow follows python-tuf's
``examples/manual_repo/basic_repo.py``) and securesystemslib's ``CryptoSigner`` (ed25519).
Layout under ``path`` (everything here is public and served)::

    metadata/<v>.root.json     every root version (clients walk them to rotate keys)
    metadata/<v>.snapshot.json, metadata/<v>.targets.json   (consistent snapshots)
    metadata/timestamp.json    the one unversioned file, replaced atomically last
    targets/<profile>/<release>/<sha256>.<file>             bundle files

With ``consistent_snapshot`` on, ngclient asks for ``<v>.<role>.json`` and hash-prefixed
target names (``tuf/ngclient/updater.py``: ``_load_snapshot``, ``download_target``), so a
client never mixes files of two publications.

The private keys live in ``keys_dir`` (``<role>.pem``, mode 0600, directory 0700), which
must not be inside ``path``: a file server bug must never be a key leak. The running
server signs with the targets, snapshot and timestamp keys only; ``root.pem`` is needed
again only to rotate keys and belongs offline from the day the repository is created, and
``targets_key=`` points at a targets key kept elsewhere (removable media, a mounted HSM).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.serialization.json import JSONSerializer

from edgeai.artifacts._bundle import MANIFEST, bundle_mismatches, model_version, read_manifest
from edgeai.artifacts._http import ServeHandle, serve_directory
from edgeai.artifacts._keys import default_keys_dir, migrate_legacy_keys, outside, write_key
from edgeai.artifacts._tuf import (
    CryptoSigner,
    Key,
    Metadata,
    MetaFile,
    Root,
    Signed,
    Signer,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from edgeai.artifacts.errors import ArtifactError
from edgeai.plumbing.files import atomic_write

ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
ONLINE_ROLES = (Snapshot.type, Timestamp.type)
# How long each role's signature stays valid: the online roles are re-signed on every
# publication, so a short timestamp expiry bounds how long a freeze attack can go unnoticed.
EXPIRY: dict[str, timedelta] = {
    Root.type: timedelta(days=365),
    Targets.type: timedelta(days=90),
    Snapshot.type: timedelta(days=7),
    Timestamp.type: timedelta(days=1),
}
_SERIALIZER = JSONSerializer(compact=False)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class ArtifactRepository:
    """A TUF repository holding one signed bundle per ``(profile, release)``.

    Use :meth:`create` once, then :meth:`open`; :meth:`add_release` publishes,
    :meth:`set_wave` widens (or narrows) who may install a release, :meth:`revoke` withdraws one.
    """

    def __init__(
        self,
        path: Path,
        *,
        keys_dir: Path | None = None,
        targets_key: Path | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.path = path
        self.keys_dir = outside(path, keys_dir or default_keys_dir(path))
        self.metadata_dir = path / "metadata"
        self.targets_dir = path / "targets"
        self._targets_key = targets_key or self.keys_dir / "targets.pem"
        self._clock = clock
        self._root = self._load_latest(Root.type)

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        keys_dir: Path | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> ArtifactRepository:
        """Make keys for root, targets, snapshot and timestamp and sign version 1 of each.

        Parameters
        ----------
        path
            An empty or missing directory: the public, served part.
        keys_dir
            An empty or missing directory outside ``path`` for the private keys
            (default ``<path>.keys``).
        clock
            Gives "now" for expiry dates (tests pass one in the past to get expired metadata).
        """
        keys_dir = outside(path, keys_dir or default_keys_dir(path))
        for directory in (path, keys_dir):
            if directory.exists() and any(directory.iterdir()):
                raise ArtifactError(
                    f"{directory}: already exists and is not empty; choose a new path"
                )
        metadata_dir = path / "metadata"
        for directory in (keys_dir, metadata_dir, path / "targets"):
            directory.mkdir(parents=True, exist_ok=True)
        keys_dir.chmod(0o700)
        signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
        now = clock()
        root = Root(expires=now + EXPIRY[Root.type], consistent_snapshot=True)
        for role, signer in signers.items():
            root.add_key(signer.public_key, role)
            write_key(keys_dir / f"{role}.pem", signer)
        targets = Targets(expires=now + EXPIRY[Targets.type])
        snapshot = Snapshot(expires=now + EXPIRY[Snapshot.type])
        timestamp = Timestamp(expires=now + EXPIRY[Timestamp.type])
        for signed in (root, targets, snapshot):
            cls._write(metadata_dir, signed, signers[signed.type])
        cls._write(metadata_dir, timestamp, signers[Timestamp.type])
        return cls(path, keys_dir=keys_dir, clock=clock)

    @classmethod
    def open(
        cls, path: Path, *, keys_dir: Path | None = None, targets_key: Path | None = None
    ) -> ArtifactRepository:
        """Open an existing repository; ``targets_key`` if that key is kept elsewhere.

        Keys found inside ``path`` (the layout before they moved out) are moved to
        ``keys_dir`` first, with a warning to rotate them.
        """
        if not (path / "metadata" / "1.root.json").is_file():
            raise ArtifactError(f"{path}: not an artifact repository (no metadata/1.root.json)")
        keys_dir = outside(path, keys_dir or default_keys_dir(path))
        migrate_legacy_keys(path, keys_dir)
        return cls(path, keys_dir=keys_dir, targets_key=targets_key)

    @property
    def root_path(self) -> Path:
        """The first root metadata: ship it with every device as its pinned trust anchor."""
        return self.metadata_dir / "1.root.json"

    # -- metadata I/O --------------------------------------------------------------------

    @staticmethod
    def _write(metadata_dir: Path, signed: Signed, signer: Signer) -> None:
        md: Metadata[Any] = Metadata(signed)
        md.sign(signer)
        name = "timestamp.json" if signed.type == Timestamp.type else None
        name = name or f"{signed.version}.{signed.type}.json"
        atomic_write(metadata_dir / name, md.to_bytes(_SERIALIZER))

    def _latest_version(self, role: str) -> int:
        versions = [
            int(p.name.split(".", 1)[0])
            for p in self.metadata_dir.glob(f"*.{role}.json")
            if p.name.split(".", 1)[0].isdigit()
        ]
        if not versions:
            raise ArtifactError(f"{self.metadata_dir}: no {role} metadata")
        return max(versions)

    def _load_latest(self, role: str) -> Metadata[Any]:
        if role == Timestamp.type:
            return Metadata.from_file(str(self.metadata_dir / "timestamp.json"))
        version = self._latest_version(role)
        return Metadata.from_file(str(self.metadata_dir / f"{version}.{role}.json"))

    def _signer(self, role: str) -> Signer:
        path = self._targets_key if role == Targets.type else self.keys_dir / f"{role}.pem"
        keyids = self._root.signed.roles[role].keyids
        key: Key = self._root.signed.keys[keyids[0]]
        try:
            return CryptoSigner.from_priv_key_uri(f"file2:{path}", key)
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path}: cannot load the {role} signing key ({exc})") from exc

    # -- publishing ----------------------------------------------------------------------

    def _targets(self) -> Targets:
        signed = self._load_latest(Targets.type).signed
        if not isinstance(signed, Targets):
            raise ArtifactError("targets metadata has the wrong type")
        return signed

    def releases(self, profile: str) -> list[int]:
        """Return the releases signed for ``profile`` (revoked ones excluded), oldest first."""
        return sorted(_by_release(self._targets(), profile))

    def latest(self, profile: str) -> int | None:
        """Return the newest release signed for ``profile``, or None."""
        releases = self.releases(profile)
        return releases[-1] if releases else None

    def wave(self, profile: str, release: int) -> list[str] | None:
        """Return the nodes a signed release is limited to, or None when it is for everyone."""
        infos = _by_release(self._targets(), profile).get(release)
        if not infos:
            raise ArtifactError(f"release {release} for {profile} is not signed")
        wave = infos[0].custom.get("wave")
        return None if wave is None else list(wave["nodes"])

    def revoked(self, profile: str) -> dict[int, str]:
        """Return the releases revoked for ``profile`` with the reason given."""
        return {
            int(entry["release"]): str(entry["reason"])
            for entry in _revocations(self._targets())
            if entry.get("profile") == profile
        }

    def add_release(
        self,
        profile: str,
        bundle_dir: Path,
        release: int,
        wave_nodes: Sequence[str] | None = None,
        *,
        wave_id: str = "canary",
    ) -> list[str]:
        """Sign every file of a bundle as a target and publish a new snapshot and timestamp.

        Parameters
        ----------
        profile
            The device profile the bundle was compiled for (must match its manifest).
        bundle_dir
            A bundle whose files match its manifest's sha256s.
        release
            A number greater than every release ever published for ``profile`` (revoked
            ones included: a device may remember a revoked number as bad).
        wave_nodes
            The only nodes that may install it (signed, so no announcement can widen the
            wave); None for every node.
        wave_id
            A name for the wave, recorded with it.

        Returns
        -------
        list of str
            The target paths, ``<profile>/<release>/<file>``.
        """
        problems = bundle_mismatches(bundle_dir)
        if problems:
            raise ArtifactError(f"{bundle_dir}: refusing to sign: {'; '.join(problems)}")
        manifest = read_manifest(bundle_dir)
        if manifest.get("profile") != profile:
            raise ArtifactError(
                f"{bundle_dir}: compiled for {manifest.get('profile')!r}, not {profile!r}"
            )
        newest = max([*self.releases(profile), *self.revoked(profile)], default=None)
        if release < 1 or (newest is not None and release <= newest):
            raise ArtifactError(
                f"release {release} for {profile}: must be a positive number greater than "
                f"the latest published or revoked ({newest})"
            )
        custom = {
            "release": release,
            "model_version": model_version(manifest),
            "profile": profile,
            "wave": _wave(wave_id, wave_nodes),
        }
        targets = self._targets()
        paths: list[str] = []
        for name in sorted({MANIFEST, *manifest["files"]}):
            target_path = f"{profile}/{release}/{name}"
            info = TargetFile.from_file(target_path, str(bundle_dir / name), ["sha256"])
            info.unrecognized_fields["custom"] = dict(custom)
            dest = self.targets_dir / profile / str(release) / f"{info.hashes['sha256']}.{name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle_dir / name, dest)
            targets.targets[target_path] = info
            paths.append(target_path)
        self._publish(targets)
        return paths

    def set_wave(
        self, profile: str, release: int, nodes: Sequence[str] | None, *, wave_id: str = "wave"
    ) -> None:
        """Re-sign a release for another set of nodes; ``nodes=None`` promotes it to everyone.

        Publishes new targets, snapshot and timestamp metadata.
        """
        targets = self._targets()
        infos = _by_release(targets, profile).get(release)
        if not infos:
            raise ArtifactError(f"release {release} for {profile} is not signed; cannot set wave")
        for info in infos:
            info.unrecognized_fields["custom"] = {
                **info.custom,
                "wave": _wave(wave_id, nodes),
            }
        self._publish(targets)

    def revoke(self, profile: str, release: int, reason: str) -> None:
        """Withdraw a release: unsign its targets and record why, signed, for the devices.

        ``latest(profile)`` is the previous signed release again. Devices running the
        revoked release roll back to it (the revocation list is signed, so this is not a
        replay). The files stay on disk for inspection but are no longer signed.
        """
        targets = self._targets()
        infos = _by_release(targets, profile).get(release)
        if not infos:
            raise ArtifactError(f"release {release} for {profile} is not signed; cannot revoke")
        for info in infos:
            del targets.targets[info.path]
        entry = {
            "profile": profile,
            "release": release,
            "model_version": str(infos[0].custom.get("model_version", "")),
            "reason": reason,
            "revoked_at": self._clock().isoformat(),
        }
        custom = dict(targets.unrecognized_fields.get("custom") or {})
        custom["revoked"] = [*_revocations(targets), entry]
        targets.unrecognized_fields["custom"] = custom
        self._publish(targets)

    def _publish(self, targets: Targets) -> None:
        # Order matters to concurrent clients: targets, then snapshot, then the timestamp
        # that points at them, so nothing is referenced before it exists.
        now = self._clock()
        snapshot_md = self._load_latest(Snapshot.type)
        timestamp_md = self._load_latest(Timestamp.type)
        targets.version += 1
        targets.expires = now + EXPIRY[Targets.type]
        self._write(self.metadata_dir, targets, self._signer(Targets.type))
        snapshot = snapshot_md.signed
        timestamp = timestamp_md.signed
        if not isinstance(snapshot, Snapshot) or not isinstance(timestamp, Timestamp):
            raise ArtifactError("snapshot or timestamp metadata has the wrong type")
        snapshot.meta["targets.json"] = MetaFile(version=targets.version)
        snapshot.version += 1
        snapshot.expires = now + EXPIRY[Snapshot.type]
        self._write(self.metadata_dir, snapshot, self._signer(Snapshot.type))
        timestamp.snapshot_meta = MetaFile(version=snapshot.version)
        timestamp.version += 1
        timestamp.expires = now + EXPIRY[Timestamp.type]
        self._write(self.metadata_dir, timestamp, self._signer(Timestamp.type))


def _wave(wave_id: str, nodes: Sequence[str] | None) -> dict[str, Any] | None:
    if nodes is None:
        return None
    names = sorted(set(nodes))
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ArtifactError(f"wave {wave_id!r}: needs one or more node names, got {nodes!r}")
    return {"id": wave_id, "nodes": names}


def _by_release(targets: Targets, profile: str) -> dict[int, list[TargetFile]]:
    found: dict[int, list[TargetFile]] = {}
    for info in targets.targets.values():
        if isinstance(info.custom, dict) and info.custom.get("profile") == profile:
            found.setdefault(int(info.custom["release"]), []).append(info)
    return found


def _revocations(targets: Targets) -> list[dict[str, Any]]:
    """Return the signed revocation list, the targets' top-level ``custom.revoked``.

    TUF keeps unknown fields of signed metadata (``Signed.unrecognized_fields`` in
    ``tuf/api/_payload.py``), so the list is signed with the targets it amends.
    """
    custom = targets.unrecognized_fields.get("custom")
    revoked = custom.get("revoked") if isinstance(custom, dict) else None
    return [dict(e) for e in revoked] if isinstance(revoked, list) else []


def serve(path: Path, host: str = "127.0.0.1", port: int = 0) -> ServeHandle:
    """Serve a repository's ``metadata/`` and ``targets/`` over HTTP, nothing else.

    Returns a handle with ``.url`` (the repository URL devices are configured with),
    ``.requests`` (paths asked for) and ``.close()``.
    """
    return serve_directory(path, host, port, allowed=("metadata", "targets"))
