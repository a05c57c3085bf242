"""Write a simulation's results: metrics.jsonl, summary.json, model.onnx, checkpoint, plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgeai.flower.records import RoundRecord
from edgeai.plumbing.files import atomic_write
from edgeai.simulation.fleet import simulated_hours, time_to
from edgeai.simulation.runner import SimulationResult


def _finite_or_none(value: Any) -> Any:
    # JSON has no NaN/Infinity; a missing ε (no DP) or a diverged loss becomes null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def round_json(record: RoundRecord, extra: dict[str, Any] | None = None) -> str:
    """One ``metrics.jsonl`` line: the record, and every task metric as a key of its own."""
    line = {**asdict(record), **(extra or {})}
    line["metrics"] = dict(record.metrics)
    for key, value in record.metrics.items():
        line.setdefault(key, value)  # a metric never hides a field of the record
    return json.dumps({k: _finite_or_none(v) for k, v in line.items()})


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` as pretty JSON, atomically."""
    atomic_write(path, json.dumps(obj, indent=2, default=_finite_or_none) + "\n")


def plot_rounds(records: Sequence[RoundRecord], out_dir: Path) -> list[Path]:
    """Plot the primary validation metric and ε per round; return the PNG paths."""
    import matplotlib as mpl  # noqa: PLC0415  (train extra; slow import)

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rounds = [r.round for r in records]
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    primary = records[0].primary_metric if records else "accuracy"
    if primary == "accuracy":
        ax.plot(rounds, [100 * r.score for r in records], marker="o", ms=3)
        ax.set(xlabel="round", ylabel="validation accuracy (%)", title="Accuracy per round")
    else:
        ax.plot(rounds, [r.score for r in records], marker="o", ms=3)
        ax.set(xlabel="round", ylabel=f"validation {primary}", title=f"{primary} per round")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(out_dir / "accuracy.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    curves = {
        "device-level (DP-SGD, most-exposed device)": [r.epsilon for r in records],
        "client-level (server DP-FedAvg)": [r.client_epsilon for r in records],
    }
    curves = {k: v for k, v in curves.items() if any(e is not None for e in v)}
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (label, eps) in enumerate(curves.items()):
            values = [e if e is not None else float("nan") for e in eps]
            ax.plot(rounds, values, marker="o", ms=3, color=f"C{3 + i}", label=label)
        ax.legend()
        ax.set(xlabel="round", ylabel="ε", title="Privacy spent per round")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(out_dir / "epsilon.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def fleet_columns(result: SimulationResult) -> dict[int, dict[str, Any]]:
    """Per round, the fleet's extra ``metrics.jsonl`` keys (none without a fleet)."""
    hours = simulated_hours(result.fleet_rounds)
    return {
        rnd: {
            "sim_seconds": f.seconds,
            "sim_hours": hours[rnd],
            "online": f.online,
            "dropped": len(f.dropped),
        }
        for rnd, f in result.fleet_rounds.items()
    }


def fleet_summary(result: SimulationResult) -> dict[str, Any] | None:
    """The fleet's mix, deadline, simulated hours in all, and to a few accuracies."""
    config = result.experiment.simulation.fleet
    if config is None or not result.fleet_rounds:
        return None
    scores = {r.round: r.score for r in result.rounds}
    hours = simulated_hours(result.fleet_rounds)
    return {
        "mix": config.mix,
        "round_deadline_s": config.round_deadline_s,
        "sim_hours": max(hours.values()),
        "dropped_fraction": sum(len(f.dropped) for f in result.fleet_rounds.values())
        / max(1, sum(len(f.sampled) for f in result.fleet_rounds.values())),
        "hours_to": {str(t): time_to(scores, result.fleet_rounds, t) for t in (0.9, 0.95, 0.97)},
    }


def plot_simulated_time(
    records: Sequence[RoundRecord], fleet: dict[int, dict[str, Any]], out_dir: Path
) -> Path:
    """The primary metric against simulated hours (``accuracy-vs-time.png``)."""
    import matplotlib as mpl  # noqa: PLC0415  (train extra; slow import)

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    kept = [r for r in records if r.round in fleet]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([fleet[r.round]["sim_hours"] for r in kept], [r.score for r in kept], marker="o", ms=3)
    primary = kept[0].primary_metric if kept else "accuracy"
    ax.set(xlabel="simulated hours", ylabel=f"validation {primary}", title="Against fleet time")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "accuracy-vs-time.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def privacy_summary(result: SimulationResult) -> dict[str, Any] | None:
    """The device-level DP-SGD spend of the most-exposed client (DESIGN.md §5)."""
    exp = result.experiment
    if not exp.privacy.enabled or result.final is None or not result.final.client_privacy:
        return None
    worst = max(result.final.client_privacy.values(), key=lambda p: p["epsilon"])
    return {
        "scope": "sample-level DP-SGD on the device (Opacus), most-exposed client",
        "noise_multiplier": worst["noise-multiplier"],
        "sample_rate": worst["sample-rate"],
        "steps": int(worst["dp-steps"]),
        "delta": worst["delta"],
        "epsilon": worst["epsilon"],
        "accountant": exp.privacy.accountant,
        "max_grad_norm": exp.privacy.max_grad_norm,
        "poisson_sampling": True,
    }


def write_outputs(result: SimulationResult, out_dir: Path) -> dict[str, Path]:
    """Write the output contract of DESIGN.md §5 into ``out_dir``; return the paths."""
    from edgeai.flower.sinks import task_provenance  # noqa: PLC0415
    from edgeai.flower.tasks import checkpoint_identity, load_config  # noqa: PLC0415  (torch)
    from edgeai.models.checkpoint import (  # noqa: PLC0415
        EXPERIMENT_KEY,
        PRIMARY_METRIC_KEY,
        checkpoint_from_state,
        save_checkpoint,
    )
    from edgeai.models.export import export_onnx  # noqa: PLC0415

    if result.final is None:
        raise ValueError("the simulation has no final model to write")
    out_dir.mkdir(parents=True, exist_ok=True)
    exp, plan = result.experiment, result.plan
    paths = {"metrics": out_dir / "metrics.jsonl", "summary": out_dir / "summary.json"}
    fleet = fleet_columns(result)
    lines = [round_json(r, fleet.get(r.round)) + "\n" for r in result.rounds]
    atomic_write(paths["metrics"], "".join(lines))

    task = load_config(plan.task)
    model = task.build_model()
    model.load_state_dict(result.final.arrays.to_torch_state_dict())
    last = result.rounds[-1]
    provenance = {EXPERIMENT_KEY: exp.name, **last.provenance(), **task_provenance(plan)}
    # The device needs the task's own metadata (e.g. a vocabulary) and its primary metric.
    onnx_meta = {**provenance, **task.onnx_metadata(), PRIMARY_METRIC_KEY: last.primary_metric}
    paths["model"] = export_onnx(model, task.example_input(), out_dir / "model.onnx", onnx_meta)
    identity = checkpoint_identity(task)
    ckpt = checkpoint_from_state(
        *identity,
        model.state_dict(),
        round_=last.round,
        provenance=provenance,
    )
    paths["checkpoint"] = save_checkpoint(ckpt, out_dir / "checkpoint.npz")
    for png in plot_rounds(result.rounds, out_dir):
        paths[png.stem] = png
    if fleet:
        paths["accuracy-vs-time"] = plot_simulated_time(result.rounds, fleet, out_dir)

    best = max(result.rounds, key=lambda r: r.score)
    write_json(
        paths["summary"],
        {
            "experiment": exp.name,
            "rounds": len(result.rounds),
            "accuracy": last.accuracy,
            "loss": last.loss,
            "primary_metric": last.primary_metric,
            "score": last.score,
            "metrics": dict(last.metrics),
            "best_score": best.score,
            "best_accuracy": best.accuracy,
            "best_round": best.round,
            "epsilon": last.epsilon,
            "delta": exp.privacy.delta if exp.privacy.enabled else None,
            "privacy": privacy_summary(result),
            "client_epsilon": last.client_epsilon,
            "client_level_privacy": result.final.client_level,
            "stopped": result.final.stopped,
            "rejected_replies": result.final.rejected_total,
            "bytes_up": sum(r.bytes_up for r in result.rounds),
            "bytes_down": sum(r.bytes_down for r in result.rounds),
            "fleet": fleet_summary(result),
            "startup_seconds": result.startup_seconds,
            "total_seconds": result.total_seconds,
            "task": {
                "name": plan.task_name,
                "version": plan.task_version,
                "config": plan.task.model_dump(mode="json", exclude_defaults=True),
            },
            "model": {
                "name": identity[0],
                "input_shape": list(identity[1]),
                "num_classes": identity[2],
            },
            "config": exp.model_dump(mode="json"),
        },
    )
    return paths
