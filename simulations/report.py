"""Summarise finished runs (results/<name>/) into markdown tables for docs/RESULTS.md.

python simulations/report.py results/fedavg-cnn-iid results/dp-eps3 ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rounds_to(metrics: list[dict[str, float]], target: float) -> str:
    """The first round whose validation accuracy reaches ``target``."""
    for m in metrics:
        if m["accuracy"] >= target:
            return str(int(m["round"]))
    return f"not in {len(metrics)}"


def main(dirs: list[str]) -> None:
    """Print one markdown row per results directory."""
    print(
        "| experiment | rounds | final acc. | best acc. | rounds to 95% | rounds to 97% "
        "| device ε (worst) | client-level ε | δ | s/round |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for d in map(Path, dirs):
        summary = json.loads((d / "summary.json").read_text())
        metrics = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        eps = summary["epsilon"]
        client_eps = summary.get("client_epsilon")
        delta = summary["delta"] or (summary.get("client_level_privacy") or {}).get("delta")
        steady = sorted(m["seconds"] for m in metrics[1:]) or [metrics[0]["seconds"]]
        print(
            f"| {summary['experiment']} | {summary['rounds']} | {100 * summary['accuracy']:.2f}% "
            f"| {100 * summary['best_accuracy']:.2f}% (r{summary['best_round']}) "
            f"| {rounds_to(metrics, 0.95)} | {rounds_to(metrics, 0.97)} "
            f"| {'∞' if eps is None else f'{eps:.3f}'} "
            f"| {'—' if client_eps is None else f'{client_eps:.3f}'} | {delta or '—'} "
            f"| {steady[len(steady) // 2]:.2f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
