"""Serve a bundle with `edgeai agent serve` and ask it with the stock tritonclient."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

EDGEAI = Path(sys.executable).with_name("edgeai")
PROBE = Path(__file__).resolve().parents[1] / "integration" / "triton_probe.py"
LISTENING = re.compile(r"grpc=([\d.]+:\d+) http=http://([\d.]+):(\d+)")


def compile_cli(model: Path, profile: str, calibration: Path, out: Path) -> dict[str, Any]:
    """``edgeai compile`` as a user runs it; the bundle's manifest."""
    argv = [str(EDGEAI), "compile", str(model), "--profile", profile,
            "--calibration", str(calibration), "--out", str(out)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    manifest: dict[str, Any] = json.loads((out / "manifest.json").read_text())
    return manifest


def serve_and_probe(bundle: Path, profile: str, x: np.ndarray, tmp_path: Path) -> dict[str, Any]:
    """Serve ``bundle`` as ``profile`` on free loopback ports; the probe's answers for ``x``."""
    name = json.loads((bundle / "manifest.json").read_text())["model"]["name"]
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        cmd = [str(EDGEAI), "agent", "serve", str(bundle), "--grpc-port", "0", "--http-port", "0"]
        # This host stands in for the device: serve the bundle as the profile it was built for.
        proc = subprocess.Popen([*cmd, "--profile", profile], stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (match := LISTENING.search(log.read_text(errors="replace"))):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        np.savez(tmp_path / "x.npz", x=x)
        probe = [
            sys.executable, str(PROBE), match.group(1), f"127.0.0.1:{match.group(3)}", name,
            str(tmp_path / "x.npz"),
        ]  # fmt: skip
        answer = subprocess.run(probe, capture_output=True, check=True, timeout=120)
        served: dict[str, Any] = json.loads(answer.stdout)
        return served
    finally:
        proc.terminate()
        proc.wait(30)
