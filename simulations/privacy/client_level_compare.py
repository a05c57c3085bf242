"""Trusted-server vs distributed client-level DP, paired by seed: the table of issue 13.

Usage: ``python simulations/privacy/client_level_compare.py [--seeds 0 1 2] [--eps 1 3 8]
[--devices 10] [--out DIR]``. For each ε and seed it runs
``simulations/privacy/client-level/{trusted,distributed}-{devices}-eps{ε}.toml`` through
``edgeai``'s simulation (Ray) with that seed — the same partition, initial model and
sampling for both modes — and the distributed one a second time with ``min_survivors``
equal to the round's devices (no dropout tolerance: exactly the trusted mechanism's noise
on the sum, at the sensitivity C'). Prints validation and held-out accuracy, ε and the
median seconds per round of every run, then the mean over seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from edgeai.flower.experiment import load_experiment
from edgeai.simulation.outputs import write_outputs
from edgeai.simulation.runner import run_experiment

sys.path.insert(0, str(Path(__file__).parent))
from heldout import score  # a script beside this one

HERE = Path(__file__).parent / "client-level"


def run_one(path: Path, seed: int, out: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Run one experiment with ``seed``; its accuracies, ε and seconds per round."""
    exp = load_experiment(path, {"seed": seed, **overrides})
    result = run_experiment(exp)
    write_outputs(result, out)
    held = score(out)
    steady = sorted(r.seconds for r in result.rounds[1:])
    final = result.final
    privacy = final.client_level if final is not None else None
    return {
        "validation": result.rounds[-1].accuracy,
        "heldout": held["heldout_accuracy"],
        "epsilon": privacy["epsilon"] if privacy else None,
        "z": privacy["noise_multiplier"] if privacy else None,
        "seconds": steady[len(steady) // 2],
    }


def main() -> None:
    """Run the pairs and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eps", type=int, nargs="+", default=[1, 3, 8])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("results/client-level"))
    args = parser.parse_args()
    rows: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for eps in args.eps:
        variants = [
            ("trusted", "trusted", {}),
            ("distributed", "distributed", {}),
            (
                "distributed, t = all",
                "distributed",
                {"central_privacy.min_survivors": args.devices},
            ),
        ]
        for seed in args.seeds:
            for label, mode, overrides in variants:
                path = HERE / f"{mode}-{args.devices}-eps{eps}.toml"
                tag = label.replace(", t = all", "-tall").replace(" ", "")
                out = args.out / f"{tag}-{args.devices}-eps{eps}-seed{seed}"
                got = run_one(path, seed, out, overrides)
                rows.setdefault((eps, label), []).append(got)
                print(
                    f"ε {eps} {label:22} seed {seed}: val {got['validation']:.4f} "
                    f"h-o {got['heldout']:.4f} ε {got['epsilon']:.4f} z {got['z']:.3f} "
                    f"{got['seconds']:.2f} s/round",
                    flush=True,
                )
    print(f"\nmean over seeds {args.seeds}, {args.devices} devices:")
    for (eps, label), runs in rows.items():
        val = statistics.mean(r["validation"] for r in runs)
        held = statistics.mean(r["heldout"] for r in runs)
        spread = statistics.pstdev(r["heldout"] for r in runs)
        secs = statistics.median(r["seconds"] for r in runs)
        print(
            f"ε {eps} {label:22} val {val:.4f} h-o {held:.4f} (± {spread:.4f} over seeds) "
            f"{secs:.2f} s/round"
        )


if __name__ == "__main__":
    main()
