"""Seconds per round on a loopback fleet vs that round's compute; where the rest goes.

A real SuperLink (TLS, node auth, database) and 3 enrolled SuperNodes run the deployed
ServerApp and the real ClientApp with trivial training (dp-cnn-tiny, 64 images, no DP:
one or two steps). Each reply carries the ClientApp's own training time and its process
age, so a round splits into: compute (slowest node's training), ClientApp process start
(Python + Flower + torch + data, per message: the SuperNode starts a new process for every
message), and the rest (polling: the SuperNode asks for work every 3 s when idle, hard-coded
in ``flwr/supernode/start_client_internal.py``; SuperExec's task poll, set to 0.1 s through
``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``; our reply poll 0.1 s vs Flower's 3 s).

Run: ``.venv/bin/python bench/bench_fleet_round.py [--rounds 5]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeai.federation._flower_spec import RunSpec
from edgeai.federation.runs import run_to_end, write_app_dir
from tests.integration.test_federation_flower_fleet import (
    Fleet,
    experiment,
    make_shards,
    rounds_of,
    wait_for,
)


def main() -> None:
    """Run the fleet, print per-round overhead and its breakdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = make_shards(root / "data", args.nodes, size=64)
        fleet = Fleet.start(root / "fed")
        try:
            for i in range(args.nodes):
                fleet.add_node(f"n{i}", shards[i])
            wait_for(lambda: len(fleet.online()) == args.nodes, 60, "nodes online")
            exp = experiment(
                args.rounds,
                args.nodes,
                training={"local_epochs": 1, "batch_size": 64, "learning_rate": 0.1},
                privacy={"enabled": False},
            )
            spec = RunSpec(experiment=exp, out_dir=root / "run", node_wait_s=60)
            t0 = time.perf_counter()
            run_to_end(fleet.conn, spec, write_app_dir(root / "flwr-home"), timeout_s=600)
            total = time.perf_counter() - t0
        finally:
            fleet.stop()
        rounds = rounds_of(spec)
    print(f"{args.nodes} SuperNodes, {args.rounds} rounds, trivial training (1 step of 64 images)")
    print(
        f"{'round':>5} {'wall s':>7} {'compute s':>9} {'start s':>8} {'other s':>8} "
        f"{'overhead s':>10}"
    )
    overheads = []
    for r in rounds:
        wall, compute = r["wait_s"], r.get("compute_s", 0.0)
        start = r.get("clientapp_start_s", 0.0)
        overhead = wall - compute
        overheads.append(overhead)
        print(
            f"{r['round']:>5} {wall:>7.2f} {compute:>9.2f} {start:>8.2f} "
            f"{wall - compute - start:>8.2f} {overhead:>10.2f}"
        )
    print(f"submit to finished: {total:.1f} s for {len(rounds)} rounds")
    print(
        f"overhead per round: median {statistics.median(overheads):.2f} s, "
        f"max {max(overheads):.2f} s (wall minus the slowest node's training)"
    )


if __name__ == "__main__":
    main()
