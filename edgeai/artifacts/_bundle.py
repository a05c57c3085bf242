"""Read a bundle's manifest and check every file it lists against its sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from edgeai.artifacts.errors import ArtifactError

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(bundle: Path) -> dict[str, Any]:
    """Return the bundle's manifest; :class:`ArtifactError` if missing or malformed."""
    path = bundle / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest ({exc})") from exc
    files = manifest.get("files") if isinstance(manifest, dict) else None
    model = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files or not isinstance(model, dict):
        raise ArtifactError(f"{path}: manifest needs 'model' and a non-empty 'files' table")
    return dict(manifest)


def bundle_mismatches(bundle: Path) -> list[str]:
    """Return what is wrong with a bundle's files (empty when every sha256 matches).

    A file the manifest lists that is missing, unreadable or different is one entry each;
    an unreadable manifest is one entry. Never raises for a damaged bundle.
    """
    try:
        manifest = read_manifest(bundle)
    except ArtifactError as exc:
        return [str(exc)]
    problems: list[str] = []
    for name, want in sorted(manifest["files"].items()):
        path = bundle / name
        if Path(name).name != name:  # a manifest must not point outside its bundle
            problems.append(f"{name}: not a plain file name")
            continue
        try:
            got = sha256_file(path)
        except OSError as exc:
            problems.append(f"{name}: unreadable ({exc.strerror or exc})")
            continue
        if got != want:
            problems.append(f"{name}: sha256 {got[:12]}… != manifest {str(want)[:12]}…")
    return problems


def model_version(manifest: dict[str, Any]) -> str:
    """Return the manifest's model version as text."""
    return str(manifest["model"].get("version", ""))
