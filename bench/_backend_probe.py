"""Child process of bench_vmap: one run on one side, a timestamp per round, then its stats.

    python -m bench._backend_probe MARKS SIDE EXPERIMENT [dotted=value ...]

SIDE is ``flower`` (Flower's minimal app on Ray: its clients and rounds from the
overrides ``clients=`` and ``rounds=``), ``ray`` or ``vmap`` (``edgeai simulate``'s path).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def mark(path: Path, **extra: object) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps({"t": time.time(), **extra}) + "\n")


def main() -> None:
    marks, side, experiment = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    overrides: dict[str, object] = {}
    for item in sys.argv[4:]:
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value)
    if side == "flower":
        from bench import _flower_minimal  # noqa: PLC0415

        clients, rounds = int(str(overrides["clients"])), int(str(overrides["rounds"]))
        _flower_minimal.run(clients, rounds, lambda: mark(marks))
        return
    # What `edgeai simulate` does: validate, warm caches and boot the backend while importing.
    from edgeai.flower.experiment import load_experiment  # noqa: PLC0415
    from edgeai.simulation.engine import boot  # noqa: PLC0415
    from edgeai.simulation.warm import start_warming  # noqa: PLC0415

    exp = load_experiment(Path(experiment), {**overrides, "simulation.backend": side})
    start_warming(exp)
    boot(exp.simulation, ["edgeai.simulation.runner"])
    from edgeai.simulation.runner import run_experiment  # noqa: PLC0415

    result = run_experiment(exp, on_round=lambda r: mark(marks, accuracy=r.accuracy))
    mark(marks, final=result.rounds[-1].accuracy, epsilon=result.rounds[-1].epsilon)


if __name__ == "__main__":
    main()
