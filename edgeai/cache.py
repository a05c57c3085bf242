"""edgeai's on-disk cache of derived values (partitions, calibrated noise).

Everything here can be recomputed; the cache only saves the time.  Entries are written
with ``edgeai.plumbing.files.atomic_write(..., durable=False)``: concurrent simulation
workers never read a torn entry, and a power cut costs at most a recomputation.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """``$EDGEAI_CACHE_DIR/<kind>`` (default ``~/.cache/edgeai/<kind>``)."""
    root = os.environ.get("EDGEAI_CACHE_DIR") or Path.home() / ".cache" / "edgeai"
    return Path(root) / kind


def key_of(*parts: object) -> str:
    """A stable file name for the inputs ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]
