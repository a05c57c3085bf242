"""Where the repository's private keys live: never inside the served directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edgeai.artifacts._tuf import CryptoSigner
from edgeai.artifacts.errors import ArtifactError
from edgeai.plumbing.files import fsync_dir

log = logging.getLogger(__name__)


def default_keys_dir(path: Path) -> Path:
    """Where a repository at ``path`` keeps its keys unless told: ``<path>.keys`` beside it."""
    return path.with_name(f"{path.name}.keys")


def outside(path: Path, keys_dir: Path) -> Path:
    """Return ``keys_dir``; raise when it lies inside the served ``path``."""
    if keys_dir.resolve().is_relative_to(path.resolve()):
        raise ArtifactError(
            f"{keys_dir}: the signing keys must not be inside the served repository {path}; "
            "choose a keys directory outside it"
        )
    return keys_dir


def migrate_legacy_keys(path: Path, keys_dir: Path) -> None:
    """Move ``path/keys`` (the old layout) to ``keys_dir``, warning that they need rotating."""
    # Repositories made before the keys moved out kept them in <path>/keys/, which a
    # traversal bug in the file server exposed: move them out, and say they need rotating.
    legacy = path / "keys"
    if not legacy.is_dir():
        return
    if keys_dir.exists():
        raise ArtifactError(
            f"{legacy}: keys inside the served repository and also {keys_dir}; keep one "
            f"(move {legacy} out of {path})"
        )
    keys_dir.parent.mkdir(parents=True, exist_ok=True)
    legacy.rename(keys_dir)
    fsync_dir(keys_dir.parent)
    fsync_dir(path)
    log.warning(
        "moved the signing keys from %s to %s, outside the served repository; they may "
        "have been exposed before: rotate them (docs/SECURITY.md)",
        legacy,
        keys_dir,
    )


def write_key(path: Path, signer: CryptoSigner) -> None:
    """Write a private key readable by its owner only, durably; never overwrite one."""
    # O_EXCL rather than atomic_write: a rename would replace an existing key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(signer.private_bytes)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_dir(path.parent)
