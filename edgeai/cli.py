"""The ``edgeai`` command line.

Heavy imports (torch, Flower, Ray) happen inside the commands that need them,
so ``edgeai --help`` and ``edgeai version`` are instant and an inference-only
device never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edgeai import __version__
from edgeai.agent import commands as agent_commands
from edgeai.errors import EdgeAIError
from edgeai.fleet import cli as fleet_cli
from edgeai.profiles import commands as profile_commands
from edgeai.server import commands as server_commands
from edgeai.server.demo import cli as demo_cli
from edgeai.task import commands as task_commands

app = typer.Typer(
    name="edgeai",
    help=(
        "Federated learning with differential privacy for fleets of edge devices: "
        "train (or simulate) across devices, compile per device profile, serve, observe."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(
    profile_commands.app,
    name="profiles",
    help="List and inspect device profiles (what each class of device can run, and its budgets).",
)
app.add_typer(
    task_commands.app,
    name="tasks",
    help='The built-in tasks (`tasks list`); bring your own with [task] ref = "module:Class".',
)
app.add_typer(
    agent_commands.app,
    name="agent",
    help="The device daemon (`agent run`), or one bundle served with nothing else (`agent serve`).",
)
app.add_typer(
    server_commands.app,
    name="server",
    help="The federation server (`server run`), node enrollment and broker accounts.",
)
app.add_typer(
    fleet_cli.app,
    name="fleet",
    help="The fleet as the server's telemetry collector sees it (`fleet status [--json]`).",
)
app.command(name="demo")(demo_cli.demo)
console = Console()
err_console = Console(stderr=True)


class ExitCode:
    """Exit codes of the ``edgeai`` command (documented in docs/ARCHITECTURE.md)."""

    OK = 0
    FAILED = 1  # the run itself failed (e.g. every client crashed in a round)
    BAD_INPUT = 2  # invalid config, missing data file, unknown name


def fail(exc: Exception, code: int = ExitCode.BAD_INPUT) -> typer.Exit:
    """Print ``exc`` as a clear error (no traceback) and return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)


@app.command()
def version() -> None:
    """Print the edgeai version."""
    console.print(f"edgeai {__version__}")


@app.command()
def simulate(
    experiment: Annotated[
        Path, typer.Argument(help="Experiment TOML, e.g. simulations/quickstart.toml.")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Results directory (created if missing).")
    ] = Path("results"),
    rounds: Annotated[
        int | None, typer.Option(help="Override federation.rounds from the file.", min=1)
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Run on an existing Ray cluster ('auto' or 'ray://HOST:10001')."),
    ] = None,
) -> None:
    """Run a federated-learning experiment with many simulated devices.

    Trains the experiment's model with FedAvg on Flower's simulation engine
    (Ray), with DP-SGD on every virtual device when the experiment enables it,
    and writes metrics.jsonl, summary.json, model.onnx and plots to --out.
    """
    from edgeai.flower.experiment import check_experiment_data, load_experiment  # noqa: PLC0415
    from edgeai.simulation.engine import boot  # noqa: PLC0415
    from edgeai.simulation.warm import start_warming  # noqa: PLC0415

    overrides: dict[str, object] = {}
    if rounds is not None:
        overrides["federation.rounds"] = rounds
    if ray_address is not None:
        overrides["simulation.ray_address"] = ray_address
    try:
        exp = load_experiment(experiment, overrides)
        # Read the data now: a bad file or a fleet bigger than the data should fail
        # before Ray and torch start.
        check_experiment_data(exp, experiment)
    except EdgeAIError as exc:
        raise fail(exc) from None
    start_warming(exp)  # partitions and DP noise, while Ray starts and torch imports
    boot(exp.simulation, ["edgeai.simulation.cli_view"])
    from edgeai.simulation.cli_view import run_with_progress  # noqa: PLC0415

    try:
        run_with_progress(exp, out, console)
    except EdgeAIError as exc:
        code = ExitCode.BAD_INPUT if isinstance(exc, ValueError | LookupError) else ExitCode.FAILED
        raise fail(exc, code) from None


@app.command(name="compile")
def compile_(
    model: Annotated[
        Path,
        typer.Argument(
            help="ONNX model (one float input, dynamic batch) or an edgeai checkpoint (.npz)."
        ),
    ],
    profile: Annotated[
        str, typer.Option("--profile", "-p", help="Device profile name or YAML path.")
    ],
    calibration: Annotated[
        Path, typer.Option(help="Data file (.npz with X, y) to calibrate int8 and check accuracy.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory (must not exist).")],
    model_version: Annotated[
        str | None,
        typer.Option(help="Version recorded in the manifest (default: the model's sha256 prefix)."),
    ] = None,
) -> None:
    """Compile a model into a bundle for one device profile.

    Builds every precision the profile offers (fp32, int8 static/dynamic, fp16), checks
    each against the fp32 model on the calibration data, times them where this host can
    stand in for the device, and writes model.onnx, manifest.json and golden.npz to --out.
    """
    from edgeai.compile import compile_model  # noqa: PLC0415
    from edgeai.profiles import load_profile  # noqa: PLC0415

    try:
        device = load_profile(profile)
        manifest = compile_model(
            model,
            device,
            calibration,
            out,
            progress=lambda m: console.print(f"  {m}"),
            version=model_version,
        )
    except EdgeAIError as exc:
        code = ExitCode.BAD_INPUT if isinstance(exc, ValueError | LookupError) else ExitCode.FAILED
        raise fail(exc, code) from None
    acc = manifest["accuracy"]
    console.print(
        f"[bold]{manifest['precision']}[/] for {device.name}: "
        f"{manifest['size_bytes'] / 1e6:.2f} MB, {acc['metric']} {acc['bundle']:.4f} "
        f"(fp32 {acc['fp32']:.4f}); wrote {out}"
    )


@app.command()
def bench(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory from `edgeai compile`.")],
    reference: Annotated[
        Path | None, typer.Option(help="fp32 ONNX model (default: the manifest's source).")
    ] = None,
    repeats: Annotated[int, typer.Option(min=10, help="Timed calls per measurement.")] = 200,
) -> None:
    """Time a bundle against ORT fp32 and torch eager fp32: p50/p95 at batch 1, batch 64."""
    from edgeai.runtime.bench import bench_bundle, render  # noqa: PLC0415

    try:
        report = bench_bundle(bundle, reference, repeats)
    except EdgeAIError as exc:
        code = ExitCode.BAD_INPUT if isinstance(exc, ValueError | LookupError) else ExitCode.FAILED
        raise fail(exc, code) from None
    render(report, console)


@app.command()
def dashboard(
    config: Annotated[Path, typer.Option("--config", "-c", help="The server's federation.toml.")],
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (default: [dashboard] port).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Host (default: [dashboard] host).")] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="EDGEAI_DASHBOARD_TOKEN",
            help="Bearer token (default: [dashboard] token); required off loopback.",
        ),
    ] = None,
) -> None:
    """Serve the read-only API and page from a server's state directory, until Ctrl-C.

    The same view `edgeai server run` serves: nodes, runs and rounds, releases, alerts
    (docs/DASHBOARD.md). Exit codes: 0 stopped, 1 cannot listen, 2 invalid configuration.
    """
    import gc  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from pydantic import ValidationError  # noqa: PLC0415

    from edgeai.server.config import load_server_config  # noqa: PLC0415
    from edgeai.server.dashboard import (  # noqa: PLC0415
        DashboardConfig,
        DashboardError,
        DashboardServer,
        StateSource,
    )

    try:
        cfg = load_server_config(config)
        given = {"host": host, "port": port, "token": token}
        overrides = {k: v for k, v in given.items() if v is not None}
        settings = DashboardConfig.model_validate(
            {**cfg.dashboard.model_dump(exclude_unset=True), **overrides}
        )
    except EdgeAIError as exc:
        raise fail(exc) from None
    except ValidationError as exc:
        messages = "; ".join(e["msg"] for e in exc.errors())
        raise fail(ValueError(f"{config} [dashboard] with the options given: {messages}")) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server = DashboardServer(StateSource.of(cfg), settings, cfg.fleet).start()
    except DashboardError as exc:
        raise fail(exc, ExitCode.FAILED) from None
    # Every request builds ~10^4 short-lived objects for 1,000 nodes; without this each
    # full collection also walks the ~2·10^5 objects of the imports (bench_dashboard: p95).
    gc.freeze()
    err_console.print(
        f"dashboard of fleet {cfg.fleet!r} ({cfg.state_dir}, read-only): {server.url}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    try:
        stop.wait()
    finally:
        server.close()


def main() -> None:
    """Entry point of the ``edgeai`` console script."""
    app()


if __name__ == "__main__":
    main()
