"""SecAgg+ overhead per round: distributed-DP FedAvg over Flower's SecAgg+ vs plain FedAvg.

    python -m bench.bench_secaggplus [--clients 10] [--dim 39700] [--rounds 4]

Both runs are the same Flower simulation (Ray, 2 CPUs) of ``--clients`` devices sending a
``--dim`` update (39,700: the ScatterNet quickstart's linear head) each round, through the
same legacy ``DefaultWorkflow`` (``edgeai/flower/secagg.py``); one adds
``SecAggPlusWorkflow`` + ``secaggplus_mod`` (4 stages: keys, key shares, masked vectors,
unmasking) and each device's noise share. Bytes are every message the server sent and
received (protobuf size); seconds are configure_fit → aggregate_fit. Round 1 also starts
the actors, so it is reported apart.
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np
from flwr.simulation import run_simulation

from edgeai.flower.secagg import ServerView, client_app, server_app
from edgeai.privacy.distributed import plan_noise_share


def _update(partition: int, server_round: int, current: np.ndarray) -> np.ndarray:
    return np.random.default_rng([partition, server_round]).normal(0.0, 0.01, current.shape)


def run(clients: int, dim: int, rounds: int, secure: bool) -> ServerView:
    """One simulation; the server's view (bytes, seconds per round)."""
    share = (
        plan_noise_share(0.1, 1.0, max(2, clients - clients // 3), dim,
                         devices_per_round=clients, rounds=rounds)
        if secure else None
    )  # fmt: skip
    view = ServerView()
    run_simulation(
        server_app(np.zeros(dim, np.float32), rounds, clients, view, share),
        client_app(_update, share),
        clients,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}},
    )
    return view


def main() -> None:
    """Run both, print per-round bytes and seconds and the ratios."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--dim", type=int, default=39_700)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    rows = {}
    for secure in (False, True):
        view = run(args.clients, args.dim, args.rounds, secure)
        steady = view.round_seconds[1:] or view.round_seconds
        rows[secure] = (
            (view.bytes_down + view.bytes_up) / args.rounds,
            statistics.median(steady),
            min(steady),
            max(steady),
            view.round_seconds[0],
        )
    print(f"{args.clients} clients, {args.dim} coordinates, {args.rounds} rounds")
    print(f"{'':10} {'bytes/round':>12} {'s/round med':>12} {'min':>7} {'max':>7} {'round 1':>8}")
    for secure, (nbytes, med, lo, hi, first) in rows.items():
        name = "SecAgg+" if secure else "plain"
        print(f"{name:10} {nbytes:12,.0f} {med:12.3f} {lo:7.3f} {hi:7.3f} {first:8.2f}")
    (b0, s0, *_), (b1, s1, *_) = rows[False], rows[True]
    print(f"ratio SecAgg+/plain: bytes {b1 / b0:.2f}x, seconds {s1 / s0:.2f}x")


if __name__ == "__main__":
    main()
