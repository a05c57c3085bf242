"""The device side of signed model distribution: a ``tuf.ngclient.Updater`` per check.

Every byte is verified against metadata signed by keys the pinned root names
(``tuf/ngclient/updater.py``): metadata through ``refresh()``, files through
``download_target()``, which checks length and sha256 whatever the source, so LAN peers
serve as untrusted mirrors. TUF's exceptions become one :class:`UpdateRejected` with a
reason code.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field
from tuf.api import exceptions

from edgeai.artifacts._tuf import FetcherInterface, Metadata, NgConfig, TargetFile, Targets, Updater
from edgeai.artifacts.errors import Reason, UpdateRejected
from edgeai.artifacts.fetch import DeadlineExceeded, DeadlineFetcher, HttpFetcher
from edgeai.configfile import Frozen

log = logging.getLogger(__name__)


class UpdaterConfig(Frozen):
    """Where the repository is, what the device trusts, and the limits of one download."""

    repository_url: str = Field(pattern=r"^https?://")
    trusted_root: Path  # root.json pinned on the device at enrollment
    cache_dir: Path  # verified metadata, kept between checks (rollback protection)
    max_bundle_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    download_deadline_s: float = Field(default=600.0, gt=0)
    socket_timeout_s: float = Field(default=10.0, gt=0)


@dataclass(frozen=True)
class ReleaseInfo:
    """A signed release for one profile and the verified target info of each file."""

    profile: str
    release: int
    model_version: str
    targets: tuple[TargetFile, ...]
    wave: tuple[str, ...] | None = None  # the only nodes that may install it; None: all

    @property
    def total_bytes(self) -> int:
        """Sum of the signed lengths of the release's files."""
        return sum(t.length for t in self.targets)

    def admits(self, node: str | None) -> bool:
        """True when ``node`` may install this release (no wave, or named in it)."""
        return self.wave is None or (node is not None and node in self.wave)


@dataclass(frozen=True)
class SignedReleases:
    """What the signed metadata says about one profile: its releases and its revocations."""

    profile: str
    releases: tuple[ReleaseInfo, ...] = ()  # oldest first
    revoked: Mapping[int, str] = field(default_factory=dict)  # release -> reason

    def newest(self) -> ReleaseInfo | None:
        """The newest signed release, whoever its wave is for."""
        return self.releases[-1] if self.releases else None

    def for_node(self, node: str | None) -> ReleaseInfo | None:
        """The newest signed release whose wave admits ``node``."""
        return next((r for r in reversed(self.releases) if r.admits(node)), None)

    def get(self, release: int) -> ReleaseInfo | None:
        """The signed release numbered ``release``, if it is still signed."""
        return next((r for r in self.releases if r.release == release), None)


def rejection(exc: Exception) -> UpdateRejected:
    """Translate a python-tuf exception into an :class:`UpdateRejected` with a reason."""
    reason: Reason
    if isinstance(exc, exceptions.UnsignedMetadataError):
        reason = "bad_signature"
    elif isinstance(exc, exceptions.BadVersionNumberError):
        reason = "replay"
    elif isinstance(exc, exceptions.ExpiredMetadataError):
        reason = "expired"
    elif isinstance(exc, exceptions.SlowRetrievalError):  # includes DeadlineExceeded
        reason = "timeout"
    elif isinstance(
        exc, exceptions.LengthOrHashMismatchError | exceptions.DownloadLengthMismatchError
    ):
        reason = "tampered"
    elif isinstance(exc, exceptions.RepositoryError):
        reason = "tampered"  # malformed or inconsistent metadata
    else:
        reason = "unreachable"
    return UpdateRejected(reason, f"{type(exc).__name__}: {exc}")


_TUF_ERRORS = (exceptions.RepositoryError, exceptions.DownloadError)


class BundleUpdater:
    """Find and download signed bundles for this device.

    Parameters
    ----------
    config
        Repository URL, pinned root, cache, limits.
    fetcher
        The HTTP transport (``HttpFetcher`` by default); the download deadline wraps it.
    clock
        Monotonic seconds, for the deadline.
    """

    def __init__(
        self,
        config: UpdaterConfig,
        fetcher: FetcherInterface | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        inner = fetcher or HttpFetcher(config.socket_timeout_s)
        self._fetcher = DeadlineFetcher(inner) if clock is None else DeadlineFetcher(inner, clock)
        self._metadata_dir = config.cache_dir / "metadata"
        self._metadata_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._root = config.trusted_root.read_bytes()
        except OSError as exc:
            raise UpdateRejected("bad_signature", f"{config.trusted_root}: {exc}") from exc
        base = config.repository_url.rstrip("/")
        self._metadata_url = f"{base}/metadata/"
        self.targets_url = f"{base}/targets/"

    def _updater(self) -> Updater:
        # ngclient allows one refresh() per Updater; a fresh one per check also re-reads
        # the cached metadata, which is what makes rollback across restarts detectable.
        try:
            return Updater(
                str(self._metadata_dir),
                self._metadata_url,
                target_base_url=self.targets_url,
                fetcher=self._fetcher,
                config=NgConfig(app_user_agent="edgeai"),
                bootstrap=self._root,
            )
        except (*_TUF_ERRORS, ValueError) as exc:
            raise UpdateRejected("bad_signature", f"pinned root unusable: {exc}") from exc

    def latest(self, profile: str) -> ReleaseInfo | None:
        """Refresh the signed metadata and return the newest release for ``profile``.

        Raises
        ------
        UpdateRejected
            As :meth:`releases`.
        """
        return self.releases(profile).newest()

    def releases(self, profile: str) -> SignedReleases:
        """Refresh the signed metadata and return every release and revocation for ``profile``.

        Raises
        ------
        UpdateRejected
            Metadata failed verification (tampered, bad_signature, replay, expired) or
            could not be fetched (timeout, unreachable).
        """
        updater = self._updater()
        try:
            with self._fetcher.deadline(self.config.download_deadline_s):
                updater.refresh()
            # refresh() persists targets.json only after verifying it; list it from there,
            # then take each file's info from the trusted set through get_targetinfo().
            cached: Metadata[Targets] = Metadata.from_file(str(self._metadata_dir / "targets.json"))
            grouped = _group(cached.signed.targets.values(), profile)
            found: list[ReleaseInfo] = []
            for release, (version, wave, paths) in sorted(grouped.items()):
                infos = tuple(updater.get_targetinfo(p) for p in paths)
                verified = tuple(i for i in infos if i is not None)
                if len(verified) != len(paths):
                    raise UpdateRejected(
                        "tampered", f"release {release}: targets changed while reading"
                    )
                found.append(ReleaseInfo(profile, release, version, verified, wave))
        except _TUF_ERRORS as exc:
            raise rejection(exc) from exc
        except OSError as exc:
            raise UpdateRejected("unreachable", f"metadata cache: {exc}") from exc
        return SignedReleases(profile, tuple(found), _revoked(cached.signed, profile))

    def download(self, release: ReleaseInfo, dest_dir: Path, mirrors: Sequence[str] = ()) -> Path:
        """Download and verify every file of ``release`` into ``dest_dir`` (must not exist).

        Each file is tried from each mirror in turn, then from the server; a mirror's bad
        or missing file only moves on to the next source. The files land in a temporary
        sibling directory renamed to ``dest_dir`` when all are verified.

        Raises
        ------
        UpdateRejected
            ``too_large`` before any byte, ``timeout`` past the deadline, or the server's
            own failure (``tampered``, ``unreachable``...).
        """
        if release.total_bytes > self.config.max_bundle_bytes:
            raise UpdateRejected(
                "too_large",
                f"release {release.release} is {release.total_bytes} bytes; this device "
                f"accepts at most {self.config.max_bundle_bytes} (max_bundle_bytes)",
            )
        dest_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{dest_dir.name}.", suffix=".partial", dir=dest_dir.parent)
        )
        updater = self._updater()
        sources = [*(m.rstrip("/") + "/" for m in mirrors), self.targets_url]
        try:
            with self._fetcher.deadline(self.config.download_deadline_s):
                for info in release.targets:
                    self._download_one(updater, info, tmp, sources)
            # No fsync: downloads land in the store's scratch, wiped at start-up; durability
            # comes from ModelStore.stage, which fsyncs its copy before the slot rename.
            tmp.replace(dest_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest_dir

    def _download_one(
        self, updater: Updater, info: TargetFile, tmp: Path, sources: list[str]
    ) -> None:
        name = info.path.rsplit("/", 1)[-1]
        for source in sources:
            try:
                updater.download_target(info, str(tmp / name), target_base_url=source)
            except DeadlineExceeded as exc:
                raise rejection(exc) from exc
            except (*_TUF_ERRORS, OSError) as exc:
                if source == self.targets_url:
                    raise (
                        rejection(exc)
                        if not isinstance(exc, OSError)
                        else UpdateRejected("unreachable", f"{info.path}: {exc}")
                    ) from exc
                log.warning(
                    "mirror %s failed for %s (%s); trying the next source", source, info.path, exc
                )
                continue
            return


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _wave_nodes(custom: dict[str, Any]) -> tuple[bool, tuple[str, ...] | None]:
    """Return (well formed, nodes) for a target's signed ``custom.wave``."""
    wave = custom.get("wave")
    if wave is None:
        return True, None
    nodes = wave.get("nodes") if isinstance(wave, dict) else None
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        return False, None
    return True, tuple(nodes)


def _group(targets: Any, profile: str) -> dict[int, tuple[str, tuple[str, ...] | None, list[str]]]:
    """Return {release: (model_version, wave, target paths)} of ``profile``'s targets.

    A release with a malformed wave is left out rather than treated as "everyone": a wave
    only ever narrows who installs a release.
    """
    releases: dict[int, tuple[str, tuple[str, ...] | None, list[str]]] = {}
    malformed: set[int] = set()
    for info in targets:
        custom = info.custom
        if not isinstance(custom, dict) or custom.get("profile") != profile:
            continue
        release = _int(custom.get("release"))
        if release is None:
            log.warning("target %s: custom.release is not an integer; ignored", info.path)
            continue
        ok, wave = _wave_nodes(custom)
        if not ok:
            log.warning("target %s: custom.wave is malformed; release ignored", info.path)
            malformed.add(release)
        version = str(custom.get("model_version", ""))
        releases.setdefault(release, (version, wave, []))[2].append(info.path)
    return {r: (v, w, sorted(p)) for r, (v, w, p) in releases.items() if r not in malformed}


def _revoked(targets: Targets, profile: str) -> dict[int, str]:
    """The signed revocation list (targets' ``custom.revoked``) for ``profile``."""
    custom = targets.unrecognized_fields.get("custom")
    entries = custom.get("revoked") if isinstance(custom, dict) else None
    revoked: dict[int, str] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("profile") != profile:
            continue
        release = _int(entry.get("release"))
        if release is not None:
            revoked[release] = str(entry.get("reason", ""))
    return revoked
