"""``edgeai fleet status [--json]``: the fleet as the server's telemetry collector sees it.

Reads the collector's SQLite file (read-only; the running collector keeps writing it), so
it works without the broker.  Heavy imports stay inside the command.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from edgeai.server.collector import NodeState

EXIT_BAD_INPUT = 2  # no database, a corrupt one, or a bad config file

app = typer.Typer(
    help="The fleet as the federation server's telemetry collector sees it.",
    no_args_is_help=True,
)


@app.callback()
def _group() -> None:
    """The fleet as the federation server's telemetry collector sees it."""
    # A callback keeps `fleet` a group with one command (typer would collapse it otherwise).


def _fail(message: str, exc: Exception | None = None) -> NoReturn:
    from rich.console import Console  # noqa: PLC0415

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print("error:", style="bold red", end=" ")
    for line in message.splitlines():
        err.print(line, markup=False)
    raise typer.Exit(EXIT_BAD_INPUT) from exc


def _resolve(db: Path | None, config: Path | None) -> tuple[Path, float]:
    """The database path and offline timeout from ``--db`` or the server's ``[collector]``."""
    from edgeai.errors import ConfigError  # noqa: PLC0415
    from edgeai.server.collector import CollectorConfig  # noqa: PLC0415
    from edgeai.server.config import load_server_config  # noqa: PLC0415

    if db is not None and config is None:
        return db, CollectorConfig().offline_after_s
    if config is None or db is not None:
        _fail("give exactly one of --db PATH (the collector's SQLite file) or --config FILE")
    try:
        # The server's own reading of its file: db_path lands where the server writes it.
        collector = load_server_config(config).collector
    except ConfigError as exc:
        _fail(str(exc), exc)
    return collector.db_path, collector.offline_after_s


def ago(seconds: float | None) -> str:
    """``"5 s ago"``, ``"3 min ago"``, ``"2 h ago"``, ``"4 d ago"``; ``"never"`` for None."""
    if seconds is None:
        return "never"
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.0f} s ago"
    if s < 3600:
        return f"{s / 60:.0f} min ago"
    if s < 86_400:
        return f"{s / 3600:.0f} h ago"
    return f"{s / 86_400:.0f} d ago"


def _opt(value: object, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _table(nodes: list[NodeState], now: float) -> None:
    from rich import box  # noqa: PLC0415
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    # Text columns wrap (never "jetson-ori…"); numbers and times keep one line.
    for name in ("node", "profile"):
        table.add_column(name, overflow="fold", style="bold" if name == "node" else None)
    table.add_column("online", no_wrap=True)
    table.add_column("model", overflow="fold")
    table.add_column("release")
    for name in ("round", "ε", "p95 ms", "last seen"):
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    for n in nodes:
        release = _opt(n.release) + (f" {n.release_state}" if n.release_state else "")
        table.add_row(
            n.node,
            _opt(n.profile),
            "[green]yes[/]" if n.online else "[red]no[/]",
            _opt(n.model_version),
            release,
            _opt(n.last_round),
            _opt(n.epsilon, "{:.3g}"),
            _opt(n.p95_ms, "{:.1f}"),
            ago(None if n.last_seen is None else now - n.last_seen),
        )
    console = Console()
    console.print(table)
    notes: dict[str, list[str]] = {}
    for n in nodes:
        if n.p95_note:
            notes.setdefault(n.p95_note, []).append(n.node)
    for note, names in notes.items():
        console.print(f"p95 ms: {note} ({', '.join(names)})", highlight=False)


@app.command("status")
def status(
    db: Annotated[
        Path | None, typer.Option("--db", help="The collector's SQLite file (its db_path).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="The server's federation.toml (reads [collector] db_path)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list of node rows instead of a table.")
    ] = False,
) -> None:
    """One row per node: profile, online, model and release, round, ε, p95 latency, last seen."""
    import json  # noqa: PLC0415

    from edgeai.server.collector import StoreError, open_readonly  # noqa: PLC0415

    path, offline_after_s = _resolve(db, config)
    now = time.time()
    try:
        with open_readonly(path, offline_after_s=offline_after_s, clock=lambda: now) as fleet:
            nodes = fleet.nodes()
    except StoreError as exc:
        _fail(str(exc), exc)
    if as_json:
        # Plain echo, not rich: the output is meant for other tools (and DIR/fleet.json).
        typer.echo(json.dumps([n.as_json() for n in nodes], indent=2, ensure_ascii=False))
    elif not nodes:
        typer.echo(f"no node has reported yet ({path})")
    else:
        _table(nodes, now)


if __name__ == "__main__":  # pragma: no cover - `python -m edgeai.fleet.cli`
    app()
