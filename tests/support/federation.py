"""A ``federation.toml`` for a server on loopback: free ports, no TLS, no mDNS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from edgeai.plumbing.processes import free_port


def loopback_federation(
    path: Path, *, state_dir: str, calibration: str, fleet: str, **extra: Any
) -> Path:
    """Write ``path``: SuperLink (insecure), a managed broker, the artifact server and the
    dashboard on free 127.0.0.1 ports; ``extra`` adds or replaces top-level tables."""
    config = {
        "fleet": fleet,
        "state_dir": state_dir,
        "metrics_port": 0,
        "discovery": False,
        "dashboard": {"port": 0},
        "superlink": {
            "host": "127.0.0.1",
            "port": free_port(),
            "database": "superlink.db",
            "insecure": True,
            "node_auth": False,
        },
        "broker": {"manage": True, "host": "127.0.0.1", "port": free_port()},
        "artifacts": {"host": "127.0.0.1", "port": free_port()},
        "releases": {"state_dir": "releases", "calibration": calibration},
        **extra,
    }
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path
