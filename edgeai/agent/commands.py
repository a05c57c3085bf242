"""``edgeai agent ...``: run the device daemon, or serve one bundle and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgeai.serving.cli import serve

if TYPE_CHECKING:
    from edgeai.agent.daemon import Agent

app = typer.Typer(no_args_is_help=True)
app.command(name="serve")(serve)


@app.command(name="run")
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="The agent's agent.toml.")],
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run the device agent until SIGTERM: serve, update, train, report.

    Exit codes: 0 stopped cleanly (requests drained, telemetry flushed), 1 unexpected
    failure, 2 invalid configuration, 3 cannot start (port taken, state directory unusable).
    """
    from edgeai.agent.config import load_agent_config  # noqa: PLC0415
    from edgeai.agent.daemon import run_agent  # noqa: PLC0415
    from edgeai.agent.startup import ExitCode, StateDirError  # noqa: PLC0415
    from edgeai.artifacts import ArtifactError, StoreError  # noqa: PLC0415
    from edgeai.errors import ConfigError, EdgeAIError, UnknownNameError  # noqa: PLC0415
    from edgeai.logs import configure  # noqa: PLC0415
    from edgeai.serving.server import ServingStartError  # noqa: PLC0415

    configure(log_level)
    try:
        cfg = load_agent_config(config)
        code = run_agent(cfg, on_ready=_announce)
    except (ConfigError, UnknownNameError, ArtifactError) as exc:  # ArtifactError: a bundle
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(ExitCode.BAD_CONFIG) from None
    except (ServingStartError, StateDirError, StoreError, PermissionError) as exc:
        typer.echo(f"error: cannot start: {exc}", err=True)
        raise typer.Exit(ExitCode.CANNOT_START) from None
    except EdgeAIError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(ExitCode.FAILED) from None
    raise typer.Exit(code)


def _announce(agent: Agent) -> None:
    served = agent.holder.current()
    typer.echo(
        f"agent {agent.config.node} ({agent.profile.name}) serving "
        f"{served.version if served else 'nothing yet'}: grpc={agent.config.serving.host}:"
        f"{agent.server.grpc_port} http=http://{agent.config.serving.host}:{agent.server.http_port}",
        err=True,
    )


@app.command(name="keygen")
def keygen(
    path: Annotated[Path, typer.Argument(help="Private key file to write (and PATH.pub).")],
    name: Annotated[str, typer.Option(help="A comment in the public key (the node name).")] = "",
) -> None:
    """Make this device's node key pair for Flower node authentication.

    Keep PATH on the device (agent.toml: federation.auth_private_key); give PATH.pub to the
    operator, who approves it with `edgeai server enroll PATH.pub`.
    """
    from edgeai.plumbing.pki import generate_node_key  # noqa: PLC0415

    if path.exists():
        typer.echo(f"error: {path} exists; a node keeps its key (remove it to make a new one)")
        raise typer.Exit(2)
    key = generate_node_key(path, name or path.stem)
    typer.echo(f"wrote {key.private} (keep it here) and {key.public} (enroll it on the server)")
