"""``edgeai demo``: the whole loop on loopback, with a live view of rounds, releases and fleet."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table


def demo(
    rounds: Annotated[int, typer.Option(min=1, help="Training rounds before the release.")] = 3,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write DIR/fleet.json and keep the workspace in DIR/work; exit 0 "
            "once every agent serves the release."
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900.0,
) -> None:
    """Run server, broker and three agents (x86, Raspberry Pi 5, Jetson Orin Nano) on loopback.

    The agents train with DP-SGD; the final model is compiled per profile, signed, rolled
    out in a canary wave and served; the view shows rounds, releases and the fleet live.
    """
    from edgeai.server.demo.demo import Demo, write_fleet_json  # noqa: PLC0415

    console = Console()
    root = out / "work" if out is not None else Path(tempfile.mkdtemp(prefix="edgeai-demo-"))
    started = time.monotonic()
    with Demo(root, rounds=rounds) as d:
        console.print(f"[bold]edgeai demo[/]: workspace {root}")
        d.prepare()
        d.start()
        console.print(f"dashboard: {d.dashboard_url} (read-only; also `edgeai dashboard`)")
        with Live(_view(d, started), console=console, refresh_per_second=2) as live:
            try:
                d.wait(timeout, on_tick=lambda: live.update(_view(d, started)))
            except (TimeoutError, RuntimeError) as exc:
                live.update(_view(d, started))
                console.print(f"[bold red]demo failed:[/] {exc}")
                raise typer.Exit(1) from None
            live.update(_view(d, started))
        try:
            d.serve_requests()  # so the fleet view has each node's p95
        except (TimeoutError, RuntimeError, OSError) as exc:
            console.print(f"[bold red]demo failed:[/] inference on the agents: {exc}")
            raise typer.Exit(1) from None
        if out is not None:
            path = write_fleet_json(d, out)
            console.print(f"every agent serves release {d.released()}; wrote {path}")
        else:
            console.print(f"every agent serves release {d.released()}")


def _view(d: Any, started: float) -> Group:
    status = d.status() or {}
    run = status.get("run") or {}
    rounds = Table(title=f"run {run.get('id')} — {run.get('status') or 'starting'}", expand=True)
    for col in ("round", "accuracy", "ε", "accepted", "rejected", "seconds"):
        rounds.add_column(col, justify="right")
    for r in (run.get("rounds") or [])[-6:]:
        rounds.add_row(
            str(r.get("round")),
            _f(r.get("accuracy")),
            _f(r.get("epsilon")),
            str(r.get("accepted", "")),
            str(r.get("rejected", "")),
            _f(r.get("seconds"), 1),
        )
    rel = status.get("releases") or {}
    releases = Table(title="releases", expand=True)
    for col in ("release", "profile", "state", "wave", "acked"):
        releases.add_column(col)
    for release in (rel.get("releases") or [])[-3:]:
        for profile, rollout in (release.get("rollouts") or {}).items():
            releases.add_row(
                str(release.get("release")),
                profile,
                str(rollout.get("state")),
                ", ".join(rollout.get("wave") or []),
                ", ".join(rollout.get("acked") or []),
            )
    fleet = Table(title=f"fleet — {time.monotonic() - started:.0f} s", expand=True)
    for col in ("node", "profile", "online", "release", "model", "ε", "p95 ms"):
        fleet.add_column(col)
    for n in d.fleet():
        fleet.add_row(
            n.node,
            n.profile or "",
            "yes" if n.online else "no",
            str(n.release),
            n.model_version or "",
            _f(n.epsilon),
            _f(n.p95_ms, 2),
        )
    return Group(rounds, releases, fleet)


def _f(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "—"
