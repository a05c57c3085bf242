"""Read a bundle's manifest and check it and every file it lists, without running anything.

Two levels, both used by every entry point that takes a bundle (``agent serve``, the
agent's factory bundle, the model store, the repository, the on-device gate):

- :func:`bundle_mismatches`: the bundle's integrity. The manifest is a regular file of
  sane size with a ``model`` and a ``files`` table; every ``files`` entry is a plain name
  (no ``/``, no ``..``, no leading dot), a regular file inside the bundle (a symlink may
  point only to another file of the same bundle) whose sha256 is the manifest's.
- :func:`servable_problems`: what serving needs on top: ``model.onnx`` and the golden
  file are covered by ``files``, the golden spec and first input are well formed, and the
  manifest names the device's profile.

The golden outputs themselves are checked by running the model
(:func:`edgeai.artifacts.gate.verify_bundle`). Nothing here is signed: a manifest
rewritten together with the files it lists is self-consistent. Only TUF (``agent run``'s
update path) tells an operator's bundle from an attacker's.
"""

from __future__ import annotations

import json
import math
import re
import stat
from pathlib import Path
from typing import Any

from edgeai.artifacts.errors import ArtifactError
from edgeai.plumbing.files import sha256_file

MANIFEST = "manifest.json"
MODEL = "model.onnx"
MANIFEST_VERSION = 1  # edgeai.compile.bundle.MANIFEST_VERSION (no torch-side import here)
MAX_MANIFEST_BYTES = 4 << 20  # a compiled bundle's manifest is a few KiB
_CHUNK = 1 << 20
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class InvalidBundle(ArtifactError):  # noqa: N818  (reads as what it reports)
    """A bundle failed verification; ``problems`` lists each thing wrong, file first."""

    def __init__(self, bundle: Path, problems: list[str] | tuple[str, ...]) -> None:
        self.bundle = bundle
        self.problems = tuple(problems)
        # Problems from read_manifest carry the full path; say the bundle's only once.
        short = (p.removeprefix(f"{bundle}: ").removeprefix(f"{bundle}/") for p in self.problems)
        super().__init__(f"{bundle}: {'; '.join(short)}")


def _regular_inside(bundle: Path, name: str) -> str | None:
    """Return why ``bundle/name`` is not a regular file inside the bundle, or None."""
    path = bundle / name
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            target = path.resolve(strict=True)
            if target.parent != bundle.resolve(strict=True):
                return f"symlink to {target}, outside the bundle"
            info = target.stat()
    except OSError as exc:  # missing, dangling link, link loop, permission
        return f"unreadable ({exc.strerror or exc})"
    if not stat.S_ISREG(info.st_mode):  # a FIFO or device would block or never end
        return "not a regular file"
    return None


def read_manifest(bundle: Path) -> dict[str, Any]:
    """Return the bundle's manifest; :class:`ArtifactError` if missing or malformed.

    The ``model`` table and a non-empty ``files`` table of plain names to sha256 hex
    digests are required; other fields are checked by :func:`servable_problems`.
    """
    path = bundle / MANIFEST
    if not bundle.is_dir():
        what = "not a directory" if bundle.exists() else "no such directory"
        raise ArtifactError(f"{bundle}: not a bundle directory ({what})")
    if not path.exists() and not path.is_symlink():
        raise ArtifactError(f"{bundle}: not a bundle directory (no {MANIFEST} in it)")
    why = _regular_inside(bundle, MANIFEST)
    if why is not None:
        raise ArtifactError(f"{path}: {why}")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes; not a manifest")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest ({exc})") from exc
    files = manifest.get("files") if isinstance(manifest, dict) else None
    model = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files or not isinstance(model, dict):
        raise ArtifactError(f"{path}: manifest needs 'model' and a non-empty 'files' table")
    for name, digest in files.items():
        if not _PLAIN_NAME.match(name):
            raise ArtifactError(
                f"{path}: files entry {name!r} is not a plain file name inside the bundle "
                "(no '/', '..' or leading '.')"
            )
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise ArtifactError(f"{path}: files entry {name!r}: {digest!r} is not a sha256 hex")
    return dict(manifest)


def bundle_mismatches(bundle: Path) -> list[str]:
    """Return what is wrong with a bundle's files (empty when every sha256 matches).

    A file the manifest lists that is missing, unreadable, not a regular file inside the
    bundle, or different is one entry each, named first; an unusable manifest is one entry.
    Never raises for a damaged bundle.
    """
    try:
        manifest = read_manifest(bundle)
    except ArtifactError as exc:
        return [str(exc)]
    problems: list[str] = []
    for name, want in sorted(manifest["files"].items()):
        why = _regular_inside(bundle, name)
        if why is not None:
            problems.append(f"{name}: {why}")
            continue
        try:
            got = sha256_file(bundle / name)
        except OSError as exc:
            problems.append(f"{name}: unreadable ({exc.strerror or exc})")
            continue
        if got != want:
            problems.append(
                f"{name}: sha256 {got[:12]}… != manifest {want[:12]}… "
                "(the file changed after the manifest was written)"
            )
    return problems


def _golden_spec_problems(manifest: dict[str, Any]) -> list[str]:
    spec = manifest.get("golden")
    if not isinstance(spec, dict):
        return [f"{MANIFEST}: no 'golden' table (golden inputs and outputs are required)"]
    problems = [
        f"{MANIFEST}: golden.{key} must be a string"
        for key in ("file", "input_key", "output_key")
        if not isinstance(spec.get(key), str)
    ]
    atol = spec.get("atol")
    if isinstance(atol, bool) or not isinstance(atol, int | float) or not 0 < atol < math.inf:
        problems.append(f"{MANIFEST}: golden.atol {atol!r} must be a finite number > 0")
    golden_file = spec.get("file")
    if isinstance(golden_file, str) and golden_file not in manifest["files"]:
        problems.append(f"{MANIFEST}: golden file {golden_file!r} is not covered by 'files'")
    inputs = manifest.get("inputs")
    if not (isinstance(inputs, list) and inputs and isinstance(inputs[0], dict)) or not (
        isinstance(inputs[0].get("name"), str)
    ):
        problems.append(f"{MANIFEST}: 'inputs' must list the model's inputs with their names")
    return problems


def servable_problems(manifest: dict[str, Any], profile: str) -> list[str]:
    """Return what keeps an intact bundle from being served on ``profile`` (empty: fine).

    ``manifest`` comes from :func:`read_manifest`. Checks that ``model.onnx`` and the
    golden file are covered by sha256s, the golden spec and inputs are well formed, and the
    bundle was compiled for ``profile``.
    """
    problems: list[str] = []
    version = manifest.get("manifest_version", MANIFEST_VERSION)
    if version != MANIFEST_VERSION:
        problems.append(
            f"{MANIFEST}: manifest_version {version!r}; this edgeai reads {MANIFEST_VERSION} "
            "(recompile the bundle with this edgeai, or upgrade the device)"
        )
    if MODEL not in manifest["files"]:
        problems.append(f"{MANIFEST}: {MODEL} is not covered by 'files' (no sha256 for it)")
    problems += _golden_spec_problems(manifest)
    compiled_for = manifest.get("profile")
    if compiled_for != profile:
        problems.append(
            f"{MANIFEST}: compiled for profile {compiled_for!r}, this device is {profile!r} "
            f"(serve the bundle compiled for {profile!r}, or pass the profile it was built for)"
        )
    return problems


def model_version(manifest: dict[str, Any]) -> str:
    """Return the manifest's model version as text."""
    return str(manifest["model"].get("version", ""))
