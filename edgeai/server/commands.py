"""``edgeai server ...``: run the federation server, enroll nodes, add broker accounts."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from edgeai.server.config import ServerConfig

app = typer.Typer(no_args_is_help=True)
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="The server's federation.toml.")]


def _load(config: Path, *, check_inputs: bool = False) -> ServerConfig:
    from edgeai.errors import EdgeAIError  # noqa: PLC0415
    from edgeai.server.config import check_server_inputs, load_server_config  # noqa: PLC0415

    try:
        cfg = load_server_config(config)
        if check_inputs:
            check_server_inputs(cfg, config)
        return cfg
    except EdgeAIError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command(name="run")
def run(
    config: ConfigOption,
    exit_when_done: Annotated[
        bool, typer.Option(help="Exit once the run finished and no release wave is in flight.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run the federation server until SIGTERM: SuperLink, training run, releases, telemetry.

    Exit codes: 0 stopped cleanly (or the run completed, with --exit-when-done), 1 the run
    failed, 2 invalid configuration, 3 cannot start (port taken, broker or SuperLink down).
    """
    from edgeai.errors import ConfigError, EdgeAIError, UnknownNameError  # noqa: PLC0415
    from edgeai.logs import configure  # noqa: PLC0415
    from edgeai.server.daemon import ExitCode, FederationServer  # noqa: PLC0415

    configure(log_level)
    server = FederationServer(_load(config, check_inputs=True))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.request_stop())
    try:
        server.start()
    except (ConfigError, UnknownNameError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(ExitCode.BAD_CONFIG) from None
    except (EdgeAIError, OSError) as exc:
        typer.echo(f"error: cannot start: {exc}", err=True)
        raise typer.Exit(ExitCode.CANNOT_START) from None
    status = server.status()
    typer.echo(
        f"federation {status['fleet']!r}: superlink {status['superlink']}, artifacts "
        f"{status['artifact_url']}, broker {status['broker_url']}, metrics {status['metrics_url']}"
        + (f", dashboard {status['dashboard_url']}" if status.get("dashboard_url") else ""),
        err=True,
    )
    typer.echo(f"flower CLI: FLWR_HOME={status['flwr_home']} flwr ls edgeai", err=True)
    try:
        code = server.serve_forever(exit_when_done=exit_when_done)
    finally:
        server.stop()
    raise typer.Exit(code)


@app.command(name="enroll")
def enroll(
    public_key: Annotated[Path, typer.Argument(help="The node's OpenSSH ECDSA public key.")],
    config: ConfigOption,
    name: Annotated[str | None, typer.Option(help="A name for the node.")] = None,
) -> None:
    """Approve a node's key on the running SuperLink (node authentication)."""
    from edgeai.errors import EdgeAIError  # noqa: PLC0415
    from edgeai.server.superlink import ControlConnection  # noqa: PLC0415
    from edgeai.server.superlink import enroll as enroll_key  # noqa: PLC0415

    cfg = _load(config)
    try:
        node_id = enroll_key(ControlConnection.of(cfg.superlink), public_key, name)
    except EdgeAIError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({"node_id": node_id, "name": name}))


@app.command(name="add-node")
def add_node(
    node: Annotated[str, typer.Argument(help="The node's name (its agent.toml `node`).")],
    config: ConfigOption,
) -> None:
    """Give a node a broker account (it may write only under its own topics).

    Prints the `[telemetry]` section for the node's agent.toml. Mosquitto reads the new
    password file on SIGHUP: `systemctl reload mosquitto`, or `kill -HUP` the managed one.
    """
    from edgeai.errors import EdgeAIError  # noqa: PLC0415
    from edgeai.server.broker import add_node as add_account  # noqa: PLC0415

    cfg = _load(config)
    try:
        creds = add_account(cfg.broker, node)
    except EdgeAIError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(creds.toml())


@app.command(name="collector")
def collector(
    config: ConfigOption,
    username: Annotated[
        str | None, typer.Option(help="This replica's own broker account (default: [collector]).")
    ] = None,
    password_file: Annotated[
        Path | None,
        typer.Option(help="The account's password (default: $EDGEAI_COLLECTOR_PASSWORD)."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="/metrics port (default: metrics_port; 0: any free).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run one more telemetry collector (a shared subscription replica) until SIGTERM.

    Needs `[collector] shared_group`; writes the server's fleet database. Prints one JSON
    line ({"ready": true, "metrics": URL}) once subscribed. Exit codes: 0 stopped, 2
    invalid configuration, 3 cannot start (the database cannot be opened).
    """
    import threading  # noqa: PLC0415

    from edgeai.errors import EdgeAIError  # noqa: PLC0415
    from edgeai.logs import configure  # noqa: PLC0415
    from edgeai.server.collector.replica import replica_config, run_replica  # noqa: PLC0415

    configure(log_level)
    cfg = _load(config)
    try:
        coll = replica_config(cfg.collector, username, password_file)
    except EdgeAIError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    port = cfg.metrics_port if metrics_port is None else metrics_port
    try:
        run_replica(
            coll,
            stop,
            metrics_host=cfg.metrics_host,
            metrics_port=port,
            on_ready=lambda url: typer.echo(json.dumps({"ready": True, "metrics": url})),
        )
    except (EdgeAIError, OSError) as exc:
        typer.echo(f"error: cannot start: {exc}", err=True)
        raise typer.Exit(3) from None
