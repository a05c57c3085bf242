"""Start-up to the first round, and seconds per round, ours vs Flower alone.

    python -m bench.bench_startup [--clients 10] [--rounds 4]

Both sides run in a fresh Python process launched by this script, on Flower's
simulation engine (Ray) with the same number of virtual clients:

- **Flower alone**: a minimal ServerApp/ClientApp (FedAvg; each client returns
  the weights it received) — the engine's own floor.
- **edgeai**: ``edgeai simulate`` on simulations/quickstart.toml (data,
  partitions, DP-SGD, reply validation).

Start-up = (end of round 1 - process launch) - a steady round's duration.  Every
launch starts with an empty edgeai cache (no partitions or noise from a previous run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch(args: list[str]) -> tuple[float, list[float]]:
    """Run a probe; return (seconds from launch to end of round 1, round durations)."""
    fd, marks = tempfile.mkstemp(suffix=".jsonl")
    os.close(fd)
    # A cold cache every time: no partitions or calibrated noise from an earlier run.
    cache = tempfile.mkdtemp(prefix="edgeai-bench-cache-")
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "EDGEAI_CACHE_DIR": cache,
    }
    t0 = time.time()
    subprocess.run(
        [sys.executable, "-m", "bench._startup_probe", marks, *args],
        check=True,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ends = [json.loads(line)["t"] for line in Path(marks).read_text().splitlines()]
    Path(marks).unlink()
    shutil.rmtree(cache, ignore_errors=True)
    rounds = [b - a for a, b in itertools.pairwise(ends)]
    return ends[0] - t0, rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for side in ("flower", "edgeai"):
        best = None
        for _ in range(args.repeat):
            first, rounds = launch([side, str(args.clients), str(args.rounds)])
            steady = min(rounds)
            startup = first - steady
            if best is None or startup < best[0]:
                best = (startup, first, steady)
        assert best is not None
        rows.append((side, *best))
    print(f"{args.clients} virtual clients, best of {args.repeat} fresh processes each")
    print(f"{'side':>8} {'start-up s':>11} {'to end of round 1 s':>20} {'steady round s':>15}")
    for side, startup, first, steady in rows:
        print(f"{side:>8} {startup:>11.2f} {first:>20.2f} {steady:>15.2f}")
    print(f"start-up ratio edgeai / Flower alone: {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
