"""The ``vmap`` backend beside the sequential loop, the ``ray`` backend and Flower alone.

    python -m bench.bench_vmap speed   [--rounds 3]   seconds per round, 3 settings
    python -m bench.bench_vmap startup [--repeat 1] [--experiment simulations/quickstart.toml]
    python -m bench.bench_vmap scale   [--clients 1000 --per-round 100 --rounds 20]
    python -m bench.bench_vmap roofline [--threads N]  the FedAvg CNN's step: B = 10 vs big B

speed: 100 clients, 10 per round: FedAvg CNN (B = 10) at E = 1 and E = 5, and DP-SGD on
dp-cnn-tiny (dp-eps3's σ calibration and clipping, B = 16); each setting run by the
sequential plain-PyTorch loop (``bench/sequential.py``: the ClientApp's ``local_train``,
one client after another), by ``edgeai simulate`` on Ray and on vmap, in this process;
the best of rounds 2..N (round 1 holds each side's start-up; the load of a shared
machine comes and goes, the best round is the least disturbed).

startup and scale: every run in a fresh process (``bench/_backend_probe.py``), its
start-up = launch → end of round 1 less a steady round, its peak RSS summed over the
process and all its descendants (Ray's raylet, workers...) sampled every 0.2 s.
roofline: how much batching can buy at all. One SGD step (forward, backward, update) of
the FedAvg CNN at B = 10 (what each client does) and at B = 100 and 1,000 (one model on
the samples of 10 and 100 clients: an upper bound for vmap, whose clients each have their
own weights), in GFLOP/s from torch's FLOP counter, beside a 2048² fp32 matmul; then the
floor of a round of the speed bench's FedAvg CNN settings: its training FLOPs at the best
of those rates.
startup runs each side twice: with a cold cache (an empty ``EDGEAI_CACHE_DIR``), then
warm (the cache the cold run filled: partitions, calibrated σ, ScatterNet's features).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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


def launch(
    side: str, experiment: Path, overrides: dict[str, object], cache: str | None = None
) -> dict[str, float]:
    """One fresh process; its round marks, wall time and peak RSS of its process tree.

    ``cache``: the ``EDGEAI_CACHE_DIR`` to use and keep; by default a fresh one (cold: no
    partitions, no σ, no features), removed afterwards.
    """
    fd, marks = tempfile.mkstemp(suffix=".jsonl")
    os.close(fd)
    keep = cache is not None
    cache = cache or tempfile.mkdtemp(prefix="edgeai-bench-cache-")
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
    if not keep:
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


def startup(repeat: int, rounds: int, experiment: Path) -> None:
    """A quickstart in fresh processes: vmap, ray, and Flower's minimal app; cold, then warm."""
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for side in ("flower", "ray", "vmap"):
        over: dict[str, object] = (
            {"clients": 10, "rounds": rounds} if side == "flower" else {"federation.rounds": rounds}
        )
        for _ in range(repeat):
            cache = tempfile.mkdtemp(prefix="edgeai-bench-cache-")
            try:
                runs = {state: launch(side, experiment, over, cache) for state in ("cold", "warm")}
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            for state, run in runs.items():
                best = rows.get((side, state))
                if best is None or run["startup"] < best["startup"]:
                    rows[side, state] = run
                print(side, state, run, flush=True)
    print(f"\n{experiment.name} (10 clients, {rounds} rounds), best of {repeat} fresh processes")
    head = ("side", "cache", "start-up s", "to round 1 s", "steady s", "whole run s", "peak GiB")
    print("{:<8} {:<6} {:>10} {:>12} {:>9} {:>11} {:>9}".format(*head))
    for (side, state), r in rows.items():
        cols = (side, state, r["startup"], r["first"], r["steady"], r["wall"], r["peak_gib"])
        print("{:<8} {:<6} {:>10.2f} {:>12.2f} {:>9.2f} {:>11.1f} {:>9.2f}".format(*cols))
    for state in ("cold", "warm"):
        whole = rows["vmap", state]["wall"] / rows["ray", state]["wall"]
        start = rows["vmap", state]["startup"] / rows["flower", state]["startup"]
        print(f"{state}: whole run vmap/ray {whole:.2f}x; start-up vmap/Flower alone {start:.2f}x")


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


def _best_rate(run: Callable[[], object], flops: float) -> float:
    """GFLOP/s of ``run`` (``flops`` a call): the best of 5 timings of 3 calls each."""
    run()  # warm-up: oneDNN picks its kernels on the first call
    best = math.inf
    for _ in range(5):  # the best of 5: the least disturbed by other work
        t0 = time.perf_counter()
        for _ in range(3):
            run()
        best = min(best, (time.perf_counter() - t0) / 3)
    return flops / best / 1e9


def roofline(threads: int | None) -> None:
    """GFLOP/s of the FedAvg CNN's SGD step at B = 10, 100, 1,000; a round's floor from them."""
    import torch  # noqa: PLC0415
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    from edgeai.flower.experiment import load_experiment  # noqa: PLC0415
    from edgeai.flower.tasks import build_seeded, load_config, task_datasets  # noqa: PLC0415
    from edgeai.task.batches import size_of  # noqa: PLC0415

    torch.set_num_threads(threads or os.cpu_count() or 1)
    exp = load_experiment(FEDAVG)
    task = load_config(exp.task_config)
    model = build_seeded(task, 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad()
        loss: torch.Tensor = task.loss(model(x), y)
        loss.backward()
        opt.step()

    def flops_of(run: Callable[[], object]) -> float:
        with FlopCounterMode(display=False) as counter:
            run()
        return float(counter.get_total_flops())

    print(f"torch threads: {torch.get_num_threads()}")
    rates: dict[int, float] = {}
    for batch in (10, 100, 1000):
        one = functools.partial(step, torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,)))
        train_flops = flops_of(one) / batch  # a sample's forward, backward and update
        rates[batch] = _best_rate(one, train_flops * batch)
        print(
            f"SGD step, B = {batch:>4}: {train_flops / 1e6:.1f} MFLOP a sample, "
            f"{rates[batch]:6.1f} GFLOP/s"
        )
    a = torch.rand(2048, 2048)
    print(f"fp32 matmul 2048 x 2048: {_best_rate(lambda: a @ a, 2 * 2048**3):6.1f} GFLOP/s")
    best = max(rates.values())
    print(f"the most batching can buy over B = 10: {best / rates[10]:.2f}x")

    # A round's floor: its training arithmetic at the best rate above, nothing else (every
    # side's round also evaluates the global model on the validation set: more time still).
    train, _ = task_datasets(exp.task_config)
    per_client = size_of(train) / exp.federation.num_clients
    for epochs in (1, 5):
        work = exp.federation.per_round * per_client * epochs * train_flops
        print(
            f"E = {epochs}: {exp.federation.per_round} clients x {per_client:.0f} samples "
            f"x {train_flops / 1e6:.1f} MFLOP: floor of a round {work / best / 1e9:.2f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["speed", "startup", "scale", "roofline"])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="speed: torch threads")
    parser.add_argument("--only", nargs="+", default=None, help="speed: settings to run")
    parser.add_argument(
        "--experiment",
        type=Path,
        default=ROOT / "simulations" / "quickstart.toml",
        help="startup: the experiment",
    )
    args = parser.parse_args()
    if args.what == "speed":
        speed(args.rounds or 3, args.threads, args.only)
    elif args.what == "startup":
        startup(args.repeat, args.rounds or 30, args.experiment.resolve())
    elif args.what == "roofline":
        roofline(args.threads)
    else:
        scale(args.clients, args.per_round, args.rounds or 20)


if __name__ == "__main__":
    main()
