"""Find and read device profiles: ``device_profiles/NAME.yaml``."""

from __future__ import annotations

import os
from pathlib import Path

from edgeai.configfile import load
from edgeai.errors import ConfigError, UnknownNameError
from edgeai.profiles.schema import DeviceProfile

ENV_VAR = "EDGEAI_PROFILES_DIR"
_SUFFIXES = (".yaml", ".yml")


def profiles_dir() -> Path:
    """Return the directory that holds the device profiles.

    Returns
    -------
    Path
        ``$EDGEAI_PROFILES_DIR`` when set; else ``device_profiles/`` at the root of the
        source tree this package was imported from (a checkout or an editable install);
        else the copy a wheel carries inside the package (``edgeai/_device_profiles``).
    """
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    package = Path(__file__).resolve().parents[1]
    source = package.parent / "device_profiles"
    return source if source.is_dir() else package / "_device_profiles"


def _files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise ConfigError(
            f"{directory}: no device profile directory; set {ENV_VAR} to the folder that "
            "holds the NAME.yaml profiles"
        )
    return sorted(p for p in directory.iterdir() if p.suffix in _SUFFIXES and p.is_file())


def profile_names() -> list[str]:
    """Return the names of the profiles in :func:`profiles_dir`, sorted."""
    return [p.stem for p in _files(profiles_dir())]


def _read(path: Path) -> DeviceProfile:
    profile = load(DeviceProfile, path)
    if profile.name != path.stem:
        raise ConfigError(
            f"{path}: 1 invalid field(s)\n  name = {profile.name!r}: must equal the file name "
            f"(rename the file to {profile.name}{path.suffix} or set name: {path.stem})"
        )
    return profile


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """Read and validate one device profile.

    Parameters
    ----------
    name_or_path
        A profile name (``rpi5``), looked up in :func:`profiles_dir`, or the path of a
        ``.yaml`` file.

    Returns
    -------
    DeviceProfile
        The validated, immutable profile.

    Raises
    ------
    UnknownNameError
        No profile of that name exists; the message lists the known ones.
    ConfigError
        The file is not valid YAML or breaks a rule; the message names the field and fix.
    """
    path = Path(name_or_path)
    if path.suffix in _SUFFIXES or len(path.parts) > 1:
        if not path.is_file():
            raise ConfigError(f"{path}: no such file")
        return _read(path)
    directory = profiles_dir()
    for suffix in _SUFFIXES:
        candidate = directory / f"{name_or_path}{suffix}"
        if candidate.is_file():
            return _read(candidate)
    raise UnknownNameError("device profile", str(name_or_path), profile_names())


def list_profiles() -> list[DeviceProfile]:
    """Read and validate every profile in :func:`profiles_dir`, sorted by name.

    Returns
    -------
    list[DeviceProfile]
        One validated profile per ``.yaml`` file.
    """
    return [_read(path) for path in _files(profiles_dir())]
