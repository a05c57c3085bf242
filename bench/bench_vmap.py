"""The ``vmap`` backend beside the sequential loop, the ``ray`` backend and Flower alone.

    python -m bench.bench_vmap speed   [--rounds 3]   seconds per round, 3 settings
    python -m bench.bench_vmap startup [--repeat 1]   quickstart (30 rounds): start-up, whole run
    python -m bench.bench_vmap scale   [--clients 1000 --per-round 100 --rounds 20]

speed: 100 clients, 10 per round: FedAvg CNN (B = 10) at E = 1 and E = 5, and DP-SGD on
dp-cnn-tiny (dp-eps3's σ calibration and clipping, B = 16); each setting run by the
sequential plain-PyTorch loop (``bench/sequential.py``: the ClientApp's ``local_train``,
one client after another), by ``edgeai simulate`` on Ray and on vmap, in this process;
the best of rounds 2..N (round 1 holds each side's start-up; the load of a shared
machine comes and goes, the best round is the least disturbed).

startup and scale: every run in a fresh process (``bench/_backend_probe.py``), its
start-up = launch → end of round 1 less a steady round, its peak RSS summed over the
process and all its descendants (Ray's raylet, workers...) sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
FEDAVG = ROOT / "simulations" / "fedavg-cnn-iid.toml"
DP = ROOT / "simulations" / "dp-eps3.toml"


def settings(rounds: int) -> list[tuple[str, Path, dict[str, object]]]:
    """The three per-round settings: 100 clients, 10 per round."""
    fed = {"federation.rounds": rounds}
    return [
        ("fedavg-cnn E=1", FEDAVG, {**fed, "training.local_epochs": 1}),
        ("fedavg-cnn E=5", FEDAVG, {**fed, "training.local_epochs": 5}),
        (
            "dp-cnn-tiny DP-SGD",
            DP,
            {
                **fed,
                "federation.num_clients": 100,
                "federation.fraction_per_round": 0.1,
                "training.batch_size": 16,
            },
        ),
    ]


def speed(rounds: int, threads: int | None, only: list[str] | None) -> None:
    """Seconds per round: sequential vs vmap vs ray, side by side in this process.

    ``threads``: torch threads of the sequential loop and the vmap backend (default: all
    cores); ``only``: the settings to run (by name prefix).
    """
    from bench.sequential import run_sequential  # noqa: PLC0415
    from edgeai.flower.experiment import load_experiment  # noqa: PLC0415
    from edgeai.simulation.runner import run_experiment  # noqa: PLC0415

    logging.getLogger("flwr").setLevel(logging.ERROR)
    rows = []
    for name, path, overrides in settings(rounds):
        if only and not any(name.startswith(o) for o in only):
            continue
        cpus = {} if threads is None else {"simulation.num_cpus": threads}
        exp = load_experiment(path, {**overrides, **cpus})
        seq = [r.seconds for r in run_sequential(exp, threads=threads or os.cpu_count() or 1)]
        # The best steady round of each side: on a shared machine the load comes and goes
        # over minutes, and a side's fastest round is the one least slowed by it.
        out = {"seq": min(seq[1:])}
        acc = {}
        for backend in ("vmap", "ray"):
            sim = run_experiment(
                exp.model_copy(
                    update={"simulation": exp.simulation.model_copy(update={"backend": backend})}
                )
            )
            out[backend] = min(r.seconds for r in sim.rounds[1:])
            acc[backend] = sim.rounds[-1].accuracy
        rows.append((name, out, acc))
        print(name, out, acc, flush=True)
    print(f"\n100 clients, 10 per round; best s/round of rounds 2..{rounds}")
    print(
        f"{'setting':<20} {'sequential':>10} {'ray':>8} {'vmap':>8} {'vmap/seq':>9} {'vmap/ray':>9}"
    )
    for name, out, _ in rows:
        print(
            f"{name:<20} {out['seq']:>10.2f} {out['ray']:>8.2f} {out['vmap']:>8.2f} "
            f"{out['vmap'] / out['seq']:>8.2f}x {out['vmap'] / out['ray']:>8.2f}x"
        )


def launch(side: str, experiment: Path, overrides: dict[str, object]) -> dict[str, float]:
    """One fresh process; its round marks, wall time and peak RSS of its process tree."""
    fd, marks = tempfile.mkstemp(suffix=".jsonl")
    os.close(fd)
    cache = tempfile.mkdtemp(prefix="edgeai-bench-cache-")  # cold: no partitions, no σ
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "EDGEAI_CACHE_DIR": cache,
    }
    args = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._backend_probe", marks, side, str(experiment), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peak = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        rss = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                rss += p.memory_info().rss
        except psutil.Error:
            pass  # a process ended while we looked
        peak = max(peak, rss)
        time.sleep(0.2)
    wall = time.time() - t0
    lines = [json.loads(line) for line in Path(marks).read_text().splitlines()]
    Path(marks).unlink()
    shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} run failed (exit {proc.returncode})")
    ends = [m["t"] for m in lines if "final" not in m]
    rounds = [b - a for a, b in pairwise(ends)]
    steady = statistics.median(rounds) if rounds else 0.0
    last = lines[-1]
    return {
        "first": ends[0] - t0,
        "startup": ends[0] - t0 - steady,
        "steady": steady,
        "wall": wall,
        "peak_gib": peak / 2**30,
        "accuracy": float(last.get("final") or last.get("accuracy") or 0.0),
    }


def startup(repeat: int, rounds: int) -> None:
    """The quickstart in fresh processes: vmap, ray, and Flower's minimal app."""
    quick = ROOT / "simulations" / "quickstart.toml"
    rows = {}
    for side in ("flower", "ray", "vmap"):
        over: dict[str, object] = (
            {"clients": 10, "rounds": rounds} if side == "flower" else {"federation.rounds": rounds}
        )
        runs = [launch(side, quick, over) for _ in range(repeat)]
        rows[side] = min(runs, key=lambda r: r["startup"])
        print(side, rows[side], flush=True)
    print(f"\nquickstart (10 clients, {rounds} rounds), best of {repeat} fresh processes")
    head = ("side", "start-up s", "to round 1 s", "steady s", "whole run s", "peak GiB")
    print("{:<8} {:>10} {:>12} {:>9} {:>11} {:>9}".format(*head))
    for side, r in rows.items():
        cols = (side, r["startup"], r["first"], r["steady"], r["wall"], r["peak_gib"])
        print("{:<8} {:>10.2f} {:>12.2f} {:>9.2f} {:>11.1f} {:>9.2f}".format(*cols))
    whole = rows["vmap"]["wall"] / rows["ray"]["wall"]
    start = rows["vmap"]["startup"] / rows["flower"]["startup"]
    print(f"whole run vmap/ray: {whole:.2f}x; start-up vmap/Flower alone: {start:.2f}x")


def scale(clients: int, per_round: int, rounds: int) -> None:
    """Many clients on both backends: wall time and peak RSS of the whole process tree."""
    over: dict[str, object] = {
        "federation.num_clients": clients,
        "federation.fraction_per_round": per_round / clients,
        "federation.rounds": rounds,
        "training.local_epochs": 1,
    }
    rows = {side: launch(side, FEDAVG, over) for side in ("vmap", "ray")}
    print(f"\nfedavg-cnn, {clients} clients, {per_round} per round, {rounds} rounds, E = 1, B = 10")
    print(
        "{:<8} {:>8} {:>15} {:>13} {:>10}".format(
            "backend", "wall s", "steady s/round", "peak RSS GiB", "final acc"
        )
    )
    for side, r in rows.items():
        cols = (side, r["wall"], r["steady"], r["peak_gib"], r["accuracy"])
        print("{:<8} {:>8.1f} {:>15.2f} {:>13.2f} {:>10.4f}".format(*cols))
    print(f"wall vmap/ray: {rows['vmap']['wall'] / rows['ray']['wall']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["speed", "startup", "scale"])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="speed: torch threads")
    parser.add_argument("--only", nargs="+", default=None, help="speed: settings to run")
    args = parser.parse_args()
    if args.what == "speed":
        speed(args.rounds or 3, args.threads, args.only)
    elif args.what == "startup":
        startup(args.repeat, args.rounds or 30)
    else:
        scale(args.clients, args.per_round, args.rounds or 20)


if __name__ == "__main__":
    main()
