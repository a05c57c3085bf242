"""The inference server: KServe v2 over gRPC and REST on one asyncio event loop.

``serve_bundle`` is ``edgeai agent serve``: one bundle, until SIGTERM or SIGINT, then a
graceful drain. Exit codes: 0 stopped cleanly; 1 could not listen (port taken, bad host);
2 bad bundle, profile or settings.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import Field, ValidationInfo, field_validator

from edgeai.configfile import Frozen
from edgeai.errors import EdgeAIError
from edgeai.plumbing.net import is_loopback
from edgeai.profiles import DeviceProfile
from edgeai.serving.batcher import MicroBatcher
from edgeai.serving.budget import ByteBudget
from edgeai.serving.core import ServingCore
from edgeai.serving.metrics import ServingMetrics
from edgeai.serving.model import ModelHolder, ServedModel, load_served

log = logging.getLogger(__name__)


class ExitCode:
    """Exit codes of ``edgeai agent serve``."""

    OK = 0
    CANNOT_LISTEN = 1
    BAD_INPUT = 2


class ServingStartError(EdgeAIError, OSError):
    """A front end could not bind its address."""


class ServingConfig(Frozen):
    """Where and how the inference server listens and batches.

    A non-loopback ``host`` needs a ``token`` (or ``allow_unauthenticated``): an open
    inference endpoint on a LAN is anyone's model and CPU.
    """

    host: str = "127.0.0.1"
    grpc_port: int = Field(8081, ge=0, le=65535, description="0 picks a free port")
    http_port: int = Field(8080, ge=0, le=65535, description="0 picks a free port")
    max_batch_size: int = Field(32, ge=1)
    max_queue_delay_us: int = Field(0, ge=0, le=1_000_000)
    max_queue_size: int = Field(1024, ge=1, description="requests waiting, beyond it 429")
    max_request_bytes: int = Field(16 * 2**20, ge=1024)
    allow_unauthenticated: bool = Field(
        False,
        description="serve without a token on a non-loopback host (behind your own auth only)",
    )
    token: str | None = Field(
        None, min_length=1, validate_default=True, description="bearer token; None: open"
    )
    max_inflight_bytes: int = Field(
        48 * 2**20,
        ge=1024,
        description="request bytes held at once by requests in flight; beyond it they wait",
    )
    idle_timeout_s: float = Field(
        60.0,
        gt=0,
        description="close a connection without a complete request for this long "
        "(idle keep-alive, headers never finished; gRPC: no RPC in flight)",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="most time a request may wait for in-flight bytes, then send its body",
    )
    drain_timeout_s: float = Field(10.0, gt=0)
    inline_below_us: int = Field(
        300, ge=0, description="run on the event loop when runs take less (0: always a thread)"
    )
    adaptive_delay_us: int = Field(
        2000,
        ge=0,
        le=1_000_000,
        description="with max_queue_delay_us 0: wait this long for company while it pays (0: off)",
    )
    adaptive_probe_s: float = Field(
        0.2, gt=0, description="how long the adaptive wait stays off after it gathered nobody"
    )

    @field_validator("token")
    @classmethod
    def _token_off_loopback(cls, token: str | None, info: ValidationInfo) -> str | None:
        host = info.data.get("host")
        open_ok = info.data.get("allow_unauthenticated", False)
        if token is None and isinstance(host, str) and not is_loopback(host) and not open_ok:
            raise ValueError(
                f"host = {host!r} serves the network, so a bearer token is required: "
                "set token = '<secret>' (agent serve: --token or EDGEAI_SERVING_TOKEN), "
                "or host = '127.0.0.1' to serve this machine only, or "
                "allow_unauthenticated = true behind your own authenticating proxy"
            )
        return token


class InferenceServer:
    """KServe v2 gRPC and REST front ends over one model holder and micro-batcher.

    Parameters
    ----------
    holder
        The model to serve; the agent swaps models in it while the server runs.
    config
        Addresses, batching and limits.
    registry
        Prometheus registry for the serving metrics (a private one by default).
    executor
        Where model runs happen (default: one dedicated thread).
    clock
        Monotonic seconds for the batcher's queue delay.
    """

    def __init__(
        self,
        holder: ModelHolder,
        config: ServingConfig,
        registry: CollectorRegistry | None = None,
        *,
        executor: ThreadPoolExecutor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.holder = holder
        self.registry = registry if registry is not None else CollectorRegistry()
        self._metrics = ServingMetrics(self.registry, lambda: self._batcher.queue_depth)
        self._batcher = MicroBatcher(
            config.max_batch_size,
            config.max_queue_delay_us,
            config.max_queue_size,
            executor=executor,
            clock=clock,
            on_batch=self._metrics.batch,
            inline_below_us=config.inline_below_us,
            adaptive_delay_us=config.adaptive_delay_us,
            probe_every_s=config.adaptive_probe_s,
        )
        budget = ByteBudget(config.max_inflight_bytes)
        self._core = ServingCore(holder, self._batcher, self._metrics, config.token, budget)
        self._grpc: Any = None
        self._runner: Any = None
        self.grpc_port = 0
        self.http_port = 0

    async def start(self) -> None:
        """Bind both front ends; the bound ports are then in ``grpc_port``/``http_port``.

        Raises
        ------
        ServingStartError
            An address could not be bound (nothing is left listening).
        """
        import grpc  # noqa: PLC0415  (keep `edgeai --help` light)
        from aiohttp import web  # noqa: PLC0415

        from edgeai.serving.grpc_api import add_to_server  # noqa: PLC0415
        from edgeai.serving.rest_api import RestApi, http_logger  # noqa: PLC0415

        cfg = self.config
        idle_ms = max(1, int(cfg.idle_timeout_s * 1000))
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cfg.max_request_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),  # a taken port must fail, not be shared
                # A connection that never completes its handshake, or carries no RPC for
                # idle_timeout_s, is closed (GOAWAY); keepalive pings find dead peers.
                ("grpc.server_handshake_timeout_ms", idle_ms),
                ("grpc.max_connection_idle_ms", idle_ms),
                ("grpc.keepalive_time_ms", idle_ms),
                ("grpc.keepalive_timeout_ms", min(idle_ms, 20_000)),
            ]
        )
        add_to_server(self._grpc, self._core, cfg.body_timeout_s)
        try:
            self.grpc_port = self._grpc.add_insecure_port(f"{cfg.host}:{cfg.grpc_port}")
        except RuntimeError as exc:  # grpc raises RuntimeError("Failed to bind ...")
            self._grpc = None
            raise ServingStartError(f"gRPC cannot listen on {cfg.host}:{cfg.grpc_port}") from exc
        await self._grpc.start()
        rest = RestApi(self._core, cfg.max_request_bytes, cfg.body_timeout_s)
        self._runner = web.AppRunner(
            rest.app,
            access_log=None,
            shutdown_timeout=cfg.drain_timeout_s,
            # aiohttp's keep-alive timer also runs from the moment a connection opens and
            # closes it while no complete request has arrived: the header-read timeout.
            keepalive_timeout=cfg.idle_timeout_s,
            # After a response to a request whose body was not read (401, 413, 429), aiohttp
            # reads and drops the rest for up to lingering_time (10 s by default) so the
            # client sees the response; a client that never sends it held us that long.
            lingering_time=min(2.0, cfg.body_timeout_s),
            logger=http_logger(),
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.host, cfg.http_port, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await self.stop(0)
            raise ServingStartError(
                f"REST cannot listen on {cfg.host}:{cfg.http_port}: {exc.strerror or exc}"
            ) from exc
        self.http_port = int(self._runner.addresses[0][1])

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, let requests in flight finish (up to ``grace_s``), then close."""
        grace = self.config.drain_timeout_s if grace_s is None else grace_s
        self._core.draining = True
        closing = []
        if self._grpc is not None:
            closing.append(self._grpc.stop(grace))
        if self._runner is not None:
            # aiohttp reads the drain timeout from this slot at cleanup (aiohttp/web_runner.py,
            # BaseRunner.cleanup); there is no public way to change it after setup.
            self._runner._shutdown_timeout = grace
            closing.append(self._runner.cleanup())
        await asyncio.gather(*closing)
        self._grpc = self._runner = None
        await self._batcher.close()

    def stats(self) -> dict[str, Any]:
        """Counts, recent p50/p95 latency (ms), queue depth and model version, for telemetry."""
        self._core.current()  # refresh the model version after a swap
        return self._metrics.stats()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def serve_bundle(
    bundle_dir: Path,
    profile: DeviceProfile,
    config: ServingConfig,
    *,
    echo: Callable[[str], None] | None = None,
    report: Callable[[str], None] = _stderr,
) -> int:
    """Serve one bundle until SIGTERM or SIGINT, then drain and return an exit code.

    Parameters
    ----------
    bundle_dir
        The compiled bundle to serve. It is verified first
        (:func:`edgeai.artifacts.gate.verify_bundle`: manifest, file names, sha256s,
        profile, golden outputs); a bundle that fails is refused with exit code 2.
    profile
        The device profile (execution providers to try).
    config
        Addresses, batching and limits.
    echo
        Receives the "listening" line once both front ends are bound (default: stdout).
    report
        Receives error messages (default: stderr).

    Returns
    -------
    int
        :class:`ExitCode`: 0 after a clean drain, 1 if an address could not be bound,
        2 for a bad bundle.
    """
    # -- bundle verification (issue 16): the same checks as the agent's, before any bind --
    from edgeai.artifacts.gate import verify_bundle  # noqa: PLC0415  (imports onnxruntime)

    try:
        verify_bundle(bundle_dir, profile)
        model = load_served(bundle_dir, profile)
    except EdgeAIError as exc:
        report(f"error: refusing to serve: {exc}")
        return ExitCode.BAD_INPUT
    # -- end of bundle verification --
    say = echo or (lambda line: print(line, flush=True))
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_serve(model, config, say, report))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return uvloop's loop factory when it is installed (not a base dependency), else None.

    grpc.aio and aiohttp spend most of a small request in event-loop callbacks; on our
    2-core test host uvloop served ~1.5x the requests per second of the default loop.
    """
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def _serve(
    model: ServedModel,
    config: ServingConfig,
    say: Callable[[str], None],
    report: Callable[[str], None],
) -> int:
    server = InferenceServer(ModelHolder(model), config)
    try:
        await server.start()
    except ServingStartError as exc:
        report(f"error: {exc}: {exc.__cause__}")
        return ExitCode.CANNOT_LISTEN
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    say(
        f"serving {model.name} version {model.version} on {model.provider}: "
        f"grpc={config.host}:{server.grpc_port} http=http://{config.host}:{server.http_port}"
    )
    try:
        await stop.wait()
        say("stopping: draining requests in flight")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop()
    say("stopped")
    return ExitCode.OK
