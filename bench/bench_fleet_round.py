"""Seconds per round on a loopback fleet vs that round's compute: Flower's executor vs the warm one.

A real SuperLink (TLS, node auth, database) and 3 enrolled SuperNodes run the deployed
ServerApp and the real ClientApp with trivial training (dp-cnn-tiny, 64 images, no DP:
one or two steps), twice in one run: with Flower's default executor (the SuperNode's
SuperExec starts a new ``flwr-clientapp`` interpreter per message) and with the warm
SuperExec (``python -m edgeai.agent.warm_exec`` next to ``flower-supernode --isolation
process``: each ClientApp is forked from a preloaded process).  Each reply carries the
ClientApp's own training time and its process age, so a round splits into: compute
(slowest node's training), ClientApp process start (fork or interpreter start up to
training), and the rest (polling: the SuperNode asks for work every 3 s when idle and
checks for the reply every 0.5 s, both hard-coded in
``flwr/supernode/start_client_internal.py``; SuperExec's task poll, set to 0.1 s through
``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``; our reply poll 0.1 s vs Flower's 3 s).

Run: ``.venv/bin/python bench/bench_fleet_round.py [--rounds 5] [--nodes 3]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeai.flower.runspec import RunSpec
from edgeai.server.superlink import run_to_end, write_app_dir
from tests.integration.test_federation_flower_fleet import (
    Fleet,
    experiment,
    make_shards,
    rounds_of,
)
from tests.integration.test_warm_exec import WarmFleet
from tests.support.waiting import wait_for_slow as wait_for


def psutil_age_bias() -> float:
    """How much older psutil says a new process is than it is (``btime`` is whole seconds)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        return time.time() - psutil.Process(pid).create_time()
    finally:
        os.waitpid(pid, 0)


def measure(
    root: Path, nodes: int, rounds: int, *, warm: bool
) -> tuple[list[dict[str, Any]], float]:
    """Run ``rounds`` trivial rounds on ``nodes`` SuperNodes; (rounds.jsonl lines, wall s)."""
    shards = make_shards(root / "data", nodes, size=64)
    fleet = (WarmFleet if warm else Fleet).start(root / "fed")
    try:
        for i in range(nodes):
            fleet.add_node(f"n{i}", shards[i])
        wait_for(lambda: len(fleet.online()) == nodes, 60, "nodes online")
        if isinstance(fleet, WarmFleet):
            for name in fleet.nodes:
                wait_for(lambda name=name: fleet.warm_ready(name), 120, f"{name} warm SuperExec")
        exp = experiment(
            rounds,
            nodes,
            training={"local_epochs": 1, "batch_size": 64, "learning_rate": 0.1},
            privacy={"enabled": False},
        )
        spec = RunSpec(experiment=exp, out_dir=root / "run", node_wait_s=60)
        t0 = time.perf_counter()
        run_to_end(fleet.conn, spec, write_app_dir(root / "flwr-home"), timeout_s=600)
        total = time.perf_counter() - t0
    finally:
        fleet.stop()
    return rounds_of(spec), total


def report(name: str, rounds: list[dict[str, Any]], total: float) -> float:
    """Print one executor's table; return its median overhead per round."""
    print(f"\n{name}")
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
    median = statistics.median(overheads)
    print(f"submit to finished: {total:.1f} s for {len(rounds)} rounds")
    print(
        f"overhead per round: median {median:.2f} s, max {max(overheads):.2f} s "
        "(wall minus the slowest node's training)"
    )
    return median


def main() -> None:
    """Run the fleet with each executor, print per-round overhead, breakdown and ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, warm in (("flower", False), ("warm", True)):
            results[name] = measure(Path(tmp) / name, args.nodes, args.rounds, warm=warm)
    print(
        f"{args.nodes} SuperNodes, {args.rounds} rounds, trivial training (1 step of 64 images); "
        f"'start s' includes psutil's process-age bias on this host: {psutil_age_bias():.2f} s"
    )
    flower = report("Flower's executor (flwr-clientapp process per message)", *results["flower"])
    warm = report("warm SuperExec (ClientApp forked from a preloaded process)", *results["warm"])
    print(
        f"\nmedian overhead per round: flower {flower:.2f} s, warm {warm:.2f} s, "
        f"ratio flower/warm {flower / warm:.2f}x"
    )


if __name__ == "__main__":
    main()
