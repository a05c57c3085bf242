"""The non-IID table of issue 12: server-side optimizers on the 2-labels-per-client split.

    python simulations/noniid/run.py [--rounds N] [--only NAME ...] [--table]

Runs every experiment of this folder (or ``--only`` some) in this process through
``simulations/robustness/inline.py`` (the same loop and ClientApp as ``edgeai simulate``,
without Ray), writes ``simulations/results/noniid/<name>/metrics.jsonl`` and prints the
accuracy at rounds 10 and 20 and the rounds each needed to reach 90, 95 and 97 %.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = Path(os.environ.get("NONIID_RESULTS", HERE.parent / "results" / "noniid"))
NAMES = ("fedavg", "fedavgm", "fedprox-0.01", "fedprox-0.1", "fedadam", "fedyogi")


def run(names: list[str], rounds: int | None) -> None:
    """Run each experiment not yet in ``RESULTS``."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    # One BLAS thread: the clients run one after the other, and on a loaded 2-core host
    # OpenBLAS's spinning threads made one Krum distance matrix take 11 s.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    sys.path.insert(0, str(HERE.parent / "robustness"))
    from inline import run_inline, write  # noqa: PLC0415

    from edgeai.flower.experiment import load_experiment  # noqa: PLC0415

    logging.getLogger("flwr").setLevel(logging.ERROR)
    for name in names:
        if (RESULTS / name / "summary.json").exists():
            continue
        extra = {} if rounds is None else {"federation.rounds": rounds}
        exp = load_experiment(HERE / f"{name}.toml", extra)
        t0 = time.perf_counter()
        records = run_inline(exp)
        write(exp, records, RESULTS / name, time.perf_counter() - t0)
        print(f"{name}: {records[-1].accuracy:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)


def rounds_to(accuracies: list[float], target: float) -> str:
    """The first round (1-based) at ``target`` or above, else 'not in N'."""
    for i, acc in enumerate(accuracies, 1):
        if acc >= target:
            return str(i)
    return f"not in {len(accuracies)}"


def _at(accuracies: list[float], server_round: int) -> str:
    return f"{100 * accuracies[server_round - 1]:.2f} %" if len(accuracies) >= server_round else "—"


def table() -> str:
    """One markdown row per finished experiment."""
    lines = [
        "| strategy | options | round 10 | round 20 | rounds to 90 % | rounds to 95 % "
        "| rounds to 97 % | best (round) | last round |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in NAMES:
        path = RESULTS / name / "metrics.jsonl"
        if not path.exists():
            continue
        acc = [json.loads(line)["accuracy"] for line in path.read_text().splitlines()]
        summary = json.loads((RESULTS / name / "summary.json").read_text())
        options = {k: v for k, v in summary["config"]["strategy"].items() if k != "name"}
        best = max(range(len(acc)), key=lambda i: acc[i])
        lines.append(
            f"| {summary['config']['strategy']['name']} "
            f"| {', '.join(f'{k} = {v}' for k, v in options.items()) or '—'} "
            f"| {_at(acc, 10)} | {_at(acc, 20)} | {rounds_to(acc, 0.90)} "
            f"| {rounds_to(acc, 0.95)} | {rounds_to(acc, 0.97)} "
            f"| {100 * acc[best]:.2f} % ({best + 1}) | {100 * acc[-1]:.2f} % ({len(acc)}) |"
        )
    return "\n".join(lines)


def main() -> None:
    """Run the experiments (or some), then print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="override federation.rounds")
    parser.add_argument("--only", nargs="*", default=list(NAMES), help="experiments to run")
    parser.add_argument("--table", action="store_true", help="only print the table")
    args = parser.parse_args()
    if not args.table:
        run(args.only, args.rounds)
    print(table())


if __name__ == "__main__":
    main()
