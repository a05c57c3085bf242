"""SecAgg+ overhead per round: distributed DP vs plain FedAvg and trusted client-level DP.

    python -m bench.bench_secaggplus [--rounds 6] [--experiment PATH]

Three runs of the same experiment through ``edgeai``'s own round loop and ClientApp on
Flower's simulation engine (Ray, 2 CPUs), default
``simulations/privacy/client-level/distributed-10-eps3.toml`` (ScatterNet + linear, 10
devices, all in every round, real training): ``[central_privacy]`` off (plain FedAvg),
``mode = "trusted"`` (the server adds the noise) and ``mode = "distributed"`` (SecAgg+'s
four stages: keys, key shares, masked vectors, unmasking). Bytes are every message the
server sent and received, protobuf-encoded, counted by one recording grid for all three;
seconds are a round's wall time (training, the protocol, evaluation), median of the rounds
after the first (which starts the actors).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid

from edgeai.flower.experiment import load_experiment
from edgeai.flower.secagg import RecordingGrid, ServerView
from edgeai.simulation.runner import run_experiment

DEFAULT = Path("simulations/privacy/client-level/distributed-10-eps3.toml")
MODES: dict[str, dict[str, Any]] = {
    "plain FedAvg": {"central_privacy.enabled": False, "central_privacy.mode": "trusted"},
    "trusted DP": {"central_privacy.mode": "trusted"},
    "SecAgg+ DP": {"central_privacy.mode": "distributed"},
}


def run(path: Path, rounds: int, overrides: dict[str, Any]) -> tuple[float, float, list[float]]:
    """One run: bytes per round (both ways), median steady seconds per round, all seconds."""
    if overrides.get("central_privacy.enabled") is False:
        overrides = {**overrides, "central_privacy.target_epsilon": None}
    exp = load_experiment(path, {"federation.rounds": rounds, **overrides})
    view = ServerView()

    def record(grid: Grid) -> Grid:
        return RecordingGrid(grid, view)

    result = run_experiment(exp, wrap_grid=record)
    seconds = [r.seconds for r in result.rounds]
    return (view.bytes_down + view.bytes_up) / rounds, statistics.median(seconds[1:]), seconds


def main() -> None:
    """Run the three, print bytes and seconds per round and the ratios to plain FedAvg."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--experiment", type=Path, default=DEFAULT)
    args = parser.parse_args()
    rows = {name: run(args.experiment, args.rounds, o) for name, o in MODES.items()}
    print(f"{args.experiment}, {args.rounds} rounds")
    print(f"{'':14} {'bytes/round':>12} {'s/round':>8} {'x bytes':>8} {'x s':>6}  all rounds (s)")
    base_bytes, base_s, _ = rows["plain FedAvg"]
    for name, (nbytes, med, seconds) in rows.items():
        every = " ".join(f"{s:.2f}" for s in seconds)
        print(
            f"{name:14} {nbytes:12,.0f} {med:8.3f} {nbytes / base_bytes:8.2f} "
            f"{med / base_s:6.2f}  {every}"
        )


if __name__ == "__main__":
    main()
