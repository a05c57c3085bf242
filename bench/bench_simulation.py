"""Seconds per round: ``edgeai simulate`` vs the same training sequentially in plain PyTorch.

    python -m bench.bench_simulation [--rounds 6] [--epochs 1 5]

100 clients, C = 0.1, B = 10, FedAvg CNN on the MNIST subset, E local epochs.
Both sides train the same clients with the same code (``local_train``), weight
by the same ``num-examples`` and evaluate on the same validation split; the
reference does it in one process, one client after another, with no Flower,
no Ray and no messages.  Steady state: the median of rounds 2..N (round 1
holds each side's start-up, reported separately by bench_startup).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

from bench.sequential import run_sequential
from edgeai.flower.experiment import load_experiment
from edgeai.simulation.runner import run_experiment

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the reference")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    rows = []
    for epochs in args.epochs:
        exp = load_experiment(
            ROOT / "simulations" / "fedavg-cnn-iid.toml",
            {"federation.rounds": args.rounds, "training.local_epochs": epochs},
        )
        t0 = time.perf_counter()
        seq = [r.seconds for r in run_sequential(exp, threads=args.threads)]
        seq_total = time.perf_counter() - t0
        sim = run_experiment(exp)
        ours = statistics.median(r.seconds for r in sim.rounds[1:])
        ref = statistics.median(seq[1:])
        rows.append((epochs, ours, ref, sim.total_seconds, seq_total))
    print(f"fedavg-cnn, 100 clients, 10 per round, B=10; median of rounds 2..{args.rounds}")
    print(f"{'E':>3} {'edgeai s/round':>15} {'plain torch s/round':>20} {'ratio':>7}")
    for epochs, ours, ref, _, _ in rows:
        print(f"{epochs:>3} {ours:>15.2f} {ref:>20.2f} {ours / ref:>6.2f}x")
    for epochs, _, _, sim_total, seq_total in rows:
        print(
            f"E={epochs}: whole run {sim_total:.1f} s (edgeai) vs {seq_total:.1f} s (plain torch)"
        )


if __name__ == "__main__":
    main()
