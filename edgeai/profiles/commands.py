"""``edgeai profiles list|show``: inspect the device profiles from the command line."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer
import yaml
from rich import box
from rich.console import Console
from rich.table import Table

from edgeai.errors import ConfigError, UnknownNameError
from edgeai.profiles.loader import list_profiles, load_profile, profiles_dir
from edgeai.profiles.schema import CPU, CUDA, TRT, DeviceProfile

_SHORT = {TRT: "TensorRT", CUDA: "CUDA", CPU: "CPU"}
EXIT_CONFIG = 2  # a profile is missing or invalid (click uses 2 for usage errors too)

app = typer.Typer(
    help="Device profiles: what each class of device runs, and its budgets.",
    no_args_is_help=True,
)


def _fail(exc: ConfigError | UnknownNameError) -> NoReturn:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for line in str(exc).splitlines():
        err.print(line, style="red", markup=False)
    raise typer.Exit(EXIT_CONFIG) from exc


def _accelerator(profile: DeviceProfile) -> str:
    acc = profile.accelerator
    if acc.kind == "none":
        return "none"
    dla = f", {acc.dla_cores} DLA" if acc.dla_cores else ""
    return f"{acc.kind} CC {acc.compute_capability}{dla}"


@app.command("list")
def list_command() -> None:
    """List every device profile with its providers, precisions and latency budget."""
    try:
        profiles = list_profiles()
    except (ConfigError, UnknownNameError) as exc:
        _fail(exc)
    table = Table(
        title=f"Device profiles in {profiles_dir()}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("arch", no_wrap=True)
    table.add_column("accelerator")
    table.add_column("EPs")
    table.add_column("precisions", min_width=len("int8-dynamic"))  # never "int8-sta…"
    table.add_column("p95 ms", justify="right", min_width=4)
    for p in profiles:
        eps = " > ".join(_SHORT[ep.name] for ep in p.execution_providers)
        table.add_row(
            p.name,
            p.arch,
            _accelerator(p),
            eps,
            ", ".join(p.precisions),
            f"{p.budgets.p95_latency_ms_batch1:g}",
        )
    Console().print(table)


@app.command("show")
def show_command(
    name_or_path: Annotated[
        str, typer.Argument(metavar="NAME_OR_PATH", help="A profile name or a .yaml file.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Validate one profile and print it (YAML, or JSON with --json)."""
    try:
        profile = load_profile(name_or_path)
    except (ConfigError, UnknownNameError) as exc:
        _fail(exc)
    # Plain echo, not rich: the output is meant to be piped into other tools.
    if as_json:
        typer.echo(profile.model_dump_json(indent=2))
    else:
        data = profile.model_dump(mode="json")
        typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
