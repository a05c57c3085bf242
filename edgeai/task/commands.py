"""``edgeai tasks list``: the built-in tasks an experiment can name (``[task] name = ...``)."""

from __future__ import annotations

import inspect

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from edgeai.task.registry import builtin_factory, builtin_names

app = typer.Typer(
    help="Tasks: what edgeai trains (model, data, loss, metrics).", no_args_is_help=True
)


def _options(name: str) -> str:
    try:
        params = inspect.signature(builtin_factory(name)).parameters.values()
    except (TypeError, ValueError):
        return ""
    return ", ".join(
        f"{p.name}={p.default!r}" if p.default is not inspect.Parameter.empty else p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


@app.command("list")
def list_command() -> None:
    """List the built-in tasks with their version and options ([task.options])."""
    table = Table(title="Built-in tasks", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("version", justify="right")
    table.add_column("options (task.options, defaults)")
    table.add_column("what it is")
    for name in builtin_names():
        factory = builtin_factory(name)
        doc = (inspect.getdoc(factory) or "").splitlines()
        table.add_row(
            name, str(getattr(factory, "version", "")), _options(name), doc[0] if doc else ""
        )
    Console().print(table)
    # markup off: "[task]" is TOML here, not a rich style.
    Console(highlight=False).print(
        'Use one with [task] name = "NAME", or your own with [task] ref = "module:Class".',
        markup=False,
    )
