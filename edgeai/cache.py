"""edgeai's on-disk cache of derived values (partitions, calibrated noise).

Everything here can be recomputed; the cache only saves the time.  Writes are
atomic, so concurrent simulation workers never read a torn entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """``$EDGEAI_CACHE_DIR/<kind>`` (default ``~/.cache/edgeai/<kind>``)."""
    root = os.environ.get("EDGEAI_CACHE_DIR") or Path.home() / ".cache" / "edgeai"
    return Path(root) / kind


def key_of(*parts: object) -> str:
    """A stable file name for the inputs ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    Path(tmp).replace(path)
