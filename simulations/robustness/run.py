"""The robustness grid of issue 12: every strategy here against every attack; a markdown table.

    python simulations/robustness/run.py [--rounds N] [--only NAME ...] [--table]

Rows: the experiments in this folder (one per strategy). Columns: no attack, then each
``[attack] kind`` at 20 % and 40 % of the clients. For the Krum family (all 50 clients
every round) ``num_malicious_nodes`` is set to the attackers of the column (10 or 20; 10
without an attack) and MultiKrum keeps ``n - f``; FedTrimmedAvg trims ``max(0.2, fraction)``
from each end. A cell the strategy cannot run (Bulyan needs n >= 4f + 3) is marked n/a.
Each finished cell is kept in ``simulations/results/robustness/cells-<strategy>.json`` (a re-run
skips it), its ``metrics.jsonl`` under ``simulations/results/robustness/<cell>/``.
Runs in this process through :mod:`inline` (the same loop and ClientApp, without Ray).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = Path(os.environ.get("ROBUSTNESS_RESULTS", HERE.parent / "results" / "robustness"))
STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
KINDS = ("sign-flip", "scale", "label-flip", "noise", "nan")
FRACTIONS = (0.2, 0.4)
COLUMNS = [("none", 0.0)] + [(k, f) for k in KINDS for f in FRACTIONS]


def overrides(strategy: str, kind: str, fraction: float, clients: int) -> dict[str, Any]:
    """The ``[attack]`` and strategy options of one cell."""
    out: dict[str, Any] = {}
    if kind != "none":
        out["attack.kind"] = kind
        out["attack.fraction"] = fraction
    f = round((fraction or 0.2) * clients)
    if strategy in ("krum", "multikrum", "bulyan"):
        out["strategy.num_malicious_nodes"] = f
    if strategy == "multikrum":
        out["strategy.num_nodes_to_select"] = clients - f
    if strategy == "fedtrimmedavg":
        out["strategy.beta"] = max(0.2, fraction)
    return out


def cell_name(strategy: str, kind: str, fraction: float) -> str:
    """``fedavg-sign-flip-20``, ``krum-none``."""
    return f"{strategy}-none" if kind == "none" else f"{strategy}-{kind}-{round(fraction * 100)}"


def _done() -> set[str]:
    return {
        name for store in RESULTS.glob("cells-*.json") for name in json.loads(store.read_text())
    }


def run_grid(
    names: list[str], rounds: int | None, columns: list[str] | None = None, tag: str = ""
) -> None:
    """Run every missing cell of ``names``, keeping each in its strategy's ``cells-*.json``."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    # One BLAS thread: the clients run one after the other, and on a loaded 2-core host
    # OpenBLAS's spinning threads made one Krum distance matrix take 11 s.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    sys.path.insert(0, str(HERE))
    from inline import run_inline, write  # noqa: PLC0415

    from edgeai.errors import ConfigError  # noqa: PLC0415
    from edgeai.flower.experiment import load_experiment  # noqa: PLC0415

    logging.getLogger("flwr").setLevel(logging.ERROR)
    for strategy in names:
        # One file per strategy and process (--tag): processes never overwrite each other.
        store = RESULTS / f"cells-{strategy}{'-' + tag if tag else ''}.json"
        cells: dict[str, Any] = json.loads(store.read_text()) if store.exists() else {}
        for kind, fraction in COLUMNS:
            name = cell_name(strategy, kind, fraction)
            if name in _done() or (columns and name.removeprefix(f"{strategy}-") not in columns):
                continue
            path = HERE / f"{strategy}.toml"
            base = load_experiment(path)
            extra = overrides(strategy, kind, fraction, base.federation.num_clients)
            if rounds is not None:
                extra["federation.rounds"] = rounds
            try:
                exp = load_experiment(path, extra)
            except ConfigError as exc:
                cells[name] = {"na": str(exc).splitlines()[-1].strip()}
                print(f"{name}: n/a ({cells[name]['na']})", flush=True)
                RESULTS.mkdir(parents=True, exist_ok=True)
                store.write_text(json.dumps(cells, indent=1))
                continue
            t0 = time.perf_counter()
            records = run_inline(exp)
            seconds = time.perf_counter() - t0
            write(exp, records, RESULTS / name, seconds)
            cells[name] = {
                "accuracy": records[-1].accuracy,
                "best": max(r.accuracy or 0.0 for r in records),
                "rounds": len(records),
                "seconds": seconds,
                "rejected": sum(r.rejected for r in records),
                "attacker_rounds": sum(len(r.attackers) for r in records),
                "attackers_discarded": sum(
                    len(set(r.attackers) & set(r.discarded)) for r in records
                ),
                "honest_discarded": sum(len(set(r.discarded) - set(r.attackers)) for r in records),
            }
            RESULTS.mkdir(parents=True, exist_ok=True)
            store.write_text(json.dumps(cells, indent=1))
            print(f"{name}: {records[-1].accuracy:.4f} ({seconds:.0f} s)", flush=True)


def table() -> str:
    """The markdown table of the ``cells-*.json``: final validation accuracy per cell."""
    cells: dict[str, Any] = {}
    for store in RESULTS.glob("cells-*.json"):
        cells |= json.loads(store.read_text())
    head = ["strategy", "no attack"] + [f"{k} {round(f * 100)} %" for k, f in COLUMNS[1:]]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for strategy in STRATEGIES:
        row = [strategy]
        for kind, fraction in COLUMNS:
            cell = cells.get(cell_name(strategy, kind, fraction))
            if cell is None:
                row.append("—")
            elif "na" in cell:
                row.append("n/a")
            else:
                row.append(f"{100 * cell['accuracy']:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    """Run the grid (or part of it), then print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="override federation.rounds")
    parser.add_argument("--only", nargs="*", default=list(STRATEGIES), help="strategies to run")
    parser.add_argument("--columns", nargs="*", help="only these cells, e.g. none scale-20")
    parser.add_argument("--tag", default="", help="a second process on a strategy: its own file")
    parser.add_argument("--table", action="store_true", help="only print the table")
    args = parser.parse_args()
    if not args.table:
        run_grid(args.only, args.rounds, args.columns, args.tag)
    print(table())


if __name__ == "__main__":
    main()
