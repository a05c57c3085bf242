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
    from edgeai.agent.daemon import ExitCode, run_agent  # noqa: PLC0415
    from edgeai.errors import ConfigError, EdgeAIError, UnknownNameError  # noqa: PLC0415
    from edgeai.logs import configure  # noqa: PLC0415
    from edgeai.serving.server import ServingStartError  # noqa: PLC0415

    configure(log_level)
    try:
        cfg = load_agent_config(config)
        code = run_agent(cfg, on_ready=_announce)
    except (ConfigError, UnknownNameError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(ExitCode.BAD_CONFIG) from None
    except (ServingStartError, PermissionError) as exc:
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
