"""``edgeai agent ...``: run the device daemon, or serve one bundle and nothing else."""

from __future__ import annotations

import typer

from edgeai.serving.cli import serve

app = typer.Typer(no_args_is_help=True)
app.command(name="serve")(serve)
