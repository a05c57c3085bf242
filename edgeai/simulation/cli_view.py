"""What ``edgeai simulate`` shows: a progress bar per round and a table at the end."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeai.flower.experiment import Experiment
from edgeai.flower.records import RoundRecord
from edgeai.simulation.outputs import write_outputs
from edgeai.simulation.runner import SimulationResult, run_experiment


def _eps(value: float | None) -> str:
    return "∞ (no DP)" if value is None else f"{value:.2f}"


def _score(r: RoundRecord) -> str:
    # Accuracy in percent as before; any other primary metric as it is.
    if r.primary_metric == "accuracy":
        return f"{100 * r.score:.2f}%"
    return f"{r.score:.4g}"


def _what(exp: Experiment) -> str:
    if exp.model is not None:
        return f"{exp.model.name} on {Path(exp.data.dataset).name}"
    return f"task {exp.task_config.label}"


def run_with_progress(exp: Experiment, out_dir: Path, console: Console) -> SimulationResult:
    """Run ``exp`` showing progress, write its results to ``out_dir``, print a summary."""
    fed = exp.federation
    dp = (
        f"DP-SGD (target ε={exp.privacy.target_epsilon}, δ={exp.privacy.delta})"
        if exp.privacy.enabled and exp.privacy.target_epsilon
        else f"DP-SGD (σ={exp.privacy.noise_multiplier})"
        if exp.privacy.enabled
        else "no DP on devices"
    )
    if exp.central_privacy.enabled:
        dp += f", client-level DP (target ε={exp.central_privacy.target_epsilon})"
    console.print(
        f"[bold]{exp.name}[/]: {_what(exp)}, "
        f"{fed.num_clients} clients ({fed.per_round} per round, {exp.data.partition.kind}), "
        f"{fed.rounds} rounds, {dp}"
    )
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("starting engine", total=fed.rounds, status="")

        def on_round(r: RoundRecord) -> None:
            name = "acc" if r.primary_metric == "accuracy" else r.primary_metric
            status = f"{name} {_score(r)}  ε {_eps(r.epsilon)}"
            if r.client_epsilon is not None:
                status += f"  client-level ε {r.client_epsilon:.2f}"
            if r.rejected or r.failed or r.refused:
                status += (
                    f"  [yellow]rejected {r.rejected} failed {r.failed} refused {r.refused}[/]"
                )
            progress.update(task, advance=1, description="round", status=status)

        # Each run starts its devices with fresh privacy ledgers, kept beside the results.
        ledgers = out_dir / "privacy-ledgers"
        shutil.rmtree(ledgers, ignore_errors=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        server_ledger = out_dir / "server-privacy.json"
        server_ledger.unlink(missing_ok=True)
        result = run_experiment(
            exp, on_round=on_round, ledger_dir=ledgers, central_state_path=server_ledger
        )
    paths = write_outputs(result, out_dir)
    console.print(summary_table(result))
    if result.final is not None and result.final.stopped:
        console.print(f"[yellow]{result.final.stopped}[/]")
    console.print(f"Results written to [bold]{out_dir}[/]:")
    for path in paths.values():
        console.print(f"  {path}")
    return result


def summary_table(result: SimulationResult) -> Table:
    """A rich table of the run, one row per round (the last ten) and totals."""
    table = Table(title=f"{result.experiment.name}: results", show_lines=False)
    primary = result.rounds[0].primary_metric if result.rounds else "accuracy"
    for col in (
        "round",
        primary,
        "loss",
        "ε (worst client)",
        "clients ok",
        "rejected",
        "seconds",
    ):
        table.add_column(col, justify="right")
    rows = result.rounds if len(result.rounds) <= 10 else result.rounds[-10:]
    for r in rows:
        table.add_row(
            str(r.round),
            _score(r),
            f"{r.loss:.4f}",
            _eps(r.epsilon),
            f"{r.accepted}/{r.sampled}",
            str(r.rejected),
            f"{r.seconds:.1f}",
        )
    best = max(result.rounds, key=lambda r: r.score)
    table.caption = (
        f"final {primary} {_score(result.rounds[-1])} (best {_score(best)} "
        f"at round {best.round}); total {result.total_seconds:.0f} s"
    )
    return table
