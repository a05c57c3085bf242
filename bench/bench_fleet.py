"""Simulated time to 95 % for three fleet mixes and two round deadlines (vmap backend).

    python -m bench.bench_fleet [--rounds 25] [--target 0.95]

FedAvg CNN on the MNIST subset, 100 clients IID, 10 per round, E = 1, B = 10
(``simulations/fedavg-cnn-iid.toml`` at E = 1). Every run uses the same seconds per
training sample on the relative_compute 1.0 device (``--sample-seconds``, default 2 ms;
0 measures this host), so the table compares fleets, not the load of the machine.
Prints per run: simulated minutes and rounds to the target, the fraction of sampled
clients dropped at the deadline, the mean share of clients online, the final accuracy.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from edgeai.flower.experiment import load_experiment
from edgeai.flower.tasks import load_config
from edgeai.simulation.fleet import measure_sample_seconds, time_to
from edgeai.simulation.runner import run_experiment

ROOT = Path(__file__).resolve().parents[1]
MIXES = {
    "rpi4 .5 / rpi5 .3 / orin-nano .2": {"rpi4": 0.5, "rpi5": 0.3, "jetson-orin-nano-8gb": 0.2},
    "rpi4 .5 / x86-64 .5": {"rpi4": 0.5, "x86-64-avx2": 0.5},
    "jetson-nano .5 / orin-nano .5": {"jetson-nano": 0.5, "jetson-orin-nano-8gb": 0.5},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--deadlines", type=float, nargs="+", default=[0.0, 5.0])
    # 2 ms: the FedAvg CNN's ~60 MFLOP of training per sample at ~30 GFLOP/s, a 4-core AVX2
    # desktop (the profiles' 1.0); 0 measures this host, which a shared machine's load skews.
    parser.add_argument("--sample-seconds", type=float, default=2e-3)
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    logging.getLogger("edgeai.flower.strategy").setLevel(logging.ERROR)  # one line per drop
    base = load_experiment(
        ROOT / "simulations" / "fedavg-cnn-iid.toml",
        {"federation.rounds": args.rounds, "training.local_epochs": 1},
    )
    per_sample = args.sample_seconds or measure_sample_seconds(
        load_config(base.task_config), base.training.batch_size
    )
    print(f"seconds per training sample on the relative_compute 1.0 device: {per_sample:.2e}")
    rows = []
    for label, mix in MIXES.items():
        for deadline in args.deadlines:
            fleet = {"mix": mix, "sample_seconds": per_sample}
            if deadline:
                fleet["round_deadline_s"] = deadline
            exp = load_experiment(
                ROOT / "simulations" / "fedavg-cnn-iid.toml",
                {
                    "federation.rounds": args.rounds,
                    "training.local_epochs": 1,
                    "simulation.backend": "vmap",
                    "simulation.fleet": fleet,
                },
            )
            result = run_experiment(exp)
            scores = {r.round: r.score for r in result.rounds}
            hours = time_to(scores, result.fleet_rounds, args.target)
            reached = next((r for r in sorted(scores) if scores[r] >= args.target), None)
            fleet_rounds = result.fleet_rounds.values()
            dropped = sum(len(f.dropped) for f in fleet_rounds)
            sampled = sum(len(f.sampled) for f in fleet_rounds)
            online = sum(f.online for f in fleet_rounds) / (100 * len(result.fleet_rounds))
            rows.append(
                (label, deadline, hours, reached, dropped / sampled, online, scores[max(scores)])
            )
            print(rows[-1], flush=True)
    target = f"{100 * args.target:.0f} %"
    print(f"\nsimulated time to {target} (fedavg-cnn-iid, E=1, at most {args.rounds} rounds)")
    print(
        "| fleet mix | deadline | sim. minutes to target | rounds | dropped | online | final acc |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, deadline, hours, reached, drop, online, final in rows:
        when = "not reached" if hours is None else f"{60 * hours:.1f}"
        print(
            f"| {label} | {'none' if not deadline else f'{deadline:g} s'} | {when} | "
            f"{reached or '-'} | {100 * drop:.0f} % | {100 * online:.0f} % | {100 * final:.2f} % |"
        )


if __name__ == "__main__":
    main()
