"""Run `edgeai simulate` as a user does, for the tests of what it refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EDGEAI = Path(sys.executable).with_name("edgeai")


def simulate_cli(exp: Path, out: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``edgeai simulate EXP --out OUT``; its exit code and output, never raising."""
    return subprocess.run(
        [str(EDGEAI), "simulate", str(exp), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
