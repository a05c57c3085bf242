"""``edgeai agent serve``: serve one bundle over KServe v2 gRPC and REST, and nothing else.

grpc, aiohttp and onnxruntime are imported inside the command so ``edgeai --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve(
    bundle_dir: Annotated[Path, typer.Argument(help="Bundle directory (from `edgeai compile`).")],
    *,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0: any free port).")] = 8081,
    http_port: Annotated[int, typer.Option(help="REST port (0: any free port).")] = 8080,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    profile: Annotated[
        str, typer.Option("--profile", "-p", help="Device profile name or YAML path.")
    ] = "x86-64-avx2",
    token: Annotated[
        str | None,
        typer.Option(
            envvar="EDGEAI_SERVING_TOKEN",
            help="Bearer token required for metadata, inference and /metrics.",
        ),
    ] = None,
    max_batch_size: Annotated[int, typer.Option(help="Most rows merged into one run.")] = 32,
    max_queue_delay_us: Annotated[
        int, typer.Option(help="How long a request may wait for others to batch with (µs).")
    ] = 0,
    adaptive_delay_us: Annotated[
        int,
        typer.Option(
            help="With --max-queue-delay-us 0: how long a request waits for others while "
            "concurrent clients keep the batches full (µs; 0: off)."
        ),
    ] = 2000,
    max_request_bytes: Annotated[
        int, typer.Option(help="Largest request body or gRPC message (bytes; 413 beyond).")
    ] = 16 * 2**20,
    max_inflight_bytes: Annotated[
        int,
        typer.Option(
            help="Request bytes held at once by requests in flight; others wait their turn "
            "(up to --body-timeout-s, then 429). Bounds memory."
        ),
    ] = 48 * 2**20,
    idle_timeout_s: Annotated[
        float,
        typer.Option(
            help="Close connections with no complete request (or gRPC call) for this long."
        ),
    ] = 60.0,
    body_timeout_s: Annotated[
        float, typer.Option(help="Most time a request may take to send its body (408 beyond).")
    ] = 30.0,
) -> None:
    """Serve one bundle over KServe v2 gRPC and REST until SIGTERM or Ctrl-C.

    Prints the addresses it listens on. On SIGTERM it stops accepting, lets requests in
    flight finish, and exits 0. Exit 1: an address is taken; exit 2: bad bundle or options.
    """
    from rich.console import Console  # noqa: PLC0415

    from edgeai.configfile import parse  # noqa: PLC0415
    from edgeai.errors import EdgeAIError  # noqa: PLC0415
    from edgeai.profiles import load_profile  # noqa: PLC0415
    from edgeai.serving.server import ExitCode, ServingConfig, serve_bundle  # noqa: PLC0415

    err = Console(stderr=True)
    try:
        device = load_profile(profile)
        config = parse(
            ServingConfig,
            {
                "host": host,
                "grpc_port": grpc_port,
                "http_port": http_port,
                "token": token,
                "max_batch_size": max_batch_size,
                "max_queue_delay_us": max_queue_delay_us,
                "adaptive_delay_us": adaptive_delay_us,
                "max_request_bytes": max_request_bytes,
                "max_inflight_bytes": max_inflight_bytes,
                "idle_timeout_s": idle_timeout_s,
                "body_timeout_s": body_timeout_s,
            },
            "command line",
        )
    except EdgeAIError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(ExitCode.BAD_INPUT) from None

    def report(message: str) -> None:
        err.print(f"[bold red]{message}[/]", highlight=False, soft_wrap=True)

    code = serve_bundle(bundle_dir, device, config, report=report)
    raise typer.Exit(code)
