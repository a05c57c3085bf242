"""Child process of bench_startup: runs one side and appends a timestamp per round."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def mark(path: Path) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps({"t": time.time()}) + "\n")


def flower_alone(path: Path, clients: int, rounds: int) -> None:
    from bench import _flower_minimal  # noqa: PLC0415

    _flower_minimal.run(clients, rounds, lambda: mark(path))


def edgeai_side(path: Path, clients: int, rounds: int) -> None:
    # What `edgeai simulate` does: validate, warm caches and boot Ray while importing, run.
    from edgeai.flower.experiment import load_experiment  # noqa: PLC0415
    from edgeai.simulation.engine import boot  # noqa: PLC0415
    from edgeai.simulation.warm import start_warming  # noqa: PLC0415

    exp = load_experiment(
        Path("simulations/quickstart.toml"),
        {"federation.num_clients": clients, "federation.rounds": rounds},
    )
    start_warming(exp)
    boot(exp.simulation, ["edgeai.simulation.runner"])
    from edgeai.simulation.runner import run_experiment  # noqa: PLC0415

    run_experiment(exp, on_round=lambda _r: mark(path))


if __name__ == "__main__":
    out, side, n, r = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    (flower_alone if side == "flower" else edgeai_side)(out, n, r)
