"""``edgeai agent serve``: placeholder until the serving package lands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve(bundle_dir: Annotated[Path, typer.Argument(help="Bundle directory.")]) -> None:
    """Serve one bundle over KServe v2 gRPC and REST."""
    raise typer.Exit(1)
