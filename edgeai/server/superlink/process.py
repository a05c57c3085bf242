"""Run Flower's SuperLink for the federation server: config, command line, supervision.

Facts this relies on (Flower 1.42, ``flwr/superlink/cli/flower_superlink.py``):

* Fleet, Control and Runtime APIs share one HTTP port (``--host``/``--port``).
* ``--database FILE`` keeps runs and registered nodes across restarts; without it a
  restart makes every SuperNode exit.
* ``--enable-supernode-auth`` needs TLS; nodes are then enrolled through the Control API
  (``RegisterNode``, what ``flwr supernode register`` calls); ``--auth-list-public-keys``
  is refused by 1.42.
* Runtime dependency installation (``uv sync``) is on by default and needs the internet:
  it is switched off.
* The SuperLink starts ``flower-superexec`` from PATH, so PATH must include the venv's bin.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import Field, model_validator

from edgeai.configfile import Frozen
from edgeai.errors import ConfigError, EdgeAIError
from edgeai.plumbing.processes import find_executable, port_accepts, wait_until
from edgeai.plumbing.supervisor import Backoff, EventSink, ProcessSupervisor

# How often SuperExec asks the SuperLink for a ServerApp task to launch (Flower default: 1 s;
# env knob read in flwr/supercore/superexec/run_superexec.py).
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"


class SuperLinkError(EdgeAIError, RuntimeError):
    """The SuperLink did not start, or exited."""


class SuperLinkConfig(Frozen):
    """How the federation server runs ``flower-superlink``.

    Either ``insecure = true`` (loopback experiments only) or all three TLS files.
    ``node_auth`` (the default) admits only SuperNodes whose public key was enrolled.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=9092, ge=1, le=65535)
    database: Path
    insecure: bool = False
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_ca_certfile: Path | None = None
    node_auth: bool = True
    executable: str = "flower-superlink"
    # Flower keeps installed FABs and CLI config here; ours, never ~/.flwr.
    flwr_home: Path | None = None
    log_path: Path | None = None
    superexec_poll_s: float = Field(default=0.1, ge=0.01, le=60)
    ready_timeout_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _check_tls(self) -> SuperLinkConfig:
        tls = (self.ssl_certfile, self.ssl_keyfile, self.ssl_ca_certfile)
        if self.insecure:
            if self.node_auth:
                raise ConfigError(
                    "node_auth needs TLS (Flower refuses node authentication over plain "
                    "HTTP): set ssl_certfile, ssl_keyfile and ssl_ca_certfile, or "
                    "node_auth = false"
                )
        elif any(f is None for f in tls):
            raise ConfigError(
                "set ssl_certfile, ssl_keyfile and ssl_ca_certfile (all three), or "
                "insecure = true for a loopback experiment"
            )
        return self

    @property
    def address(self) -> str:
        """``host:port`` that SuperNodes and the Control API client dial."""
        return f"{self.host}:{self.port}"


def flower_env(
    flwr_home: Path | None = None,
    extra: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for every Flower process we start.

    PATH gains the venv's bin (Flower spawns ``flower-superexec`` and ``flwr-*`` from
    PATH); telemetry and update checks are off; ``FLWR_HOME`` is ours when given.
    """
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    env.update(extra or {})
    return env


def superlink_argv(cfg: SuperLinkConfig) -> list[str]:
    """The ``flower-superlink`` command line for ``cfg``."""
    argv = [
        find_executable(cfg.executable, fix="install edgeai[train] (it brings Flower)"),
        "--database",
        str(cfg.database),
        "--host",
        cfg.host,
        "--port",
        str(cfg.port),
        "--disable-runtime-dependency-installation",
    ]
    if cfg.insecure:
        argv.append("--insecure")
    else:
        argv += [
            "--ssl-certfile",
            str(cfg.ssl_certfile),
            "--ssl-keyfile",
            str(cfg.ssl_keyfile),
            "--ssl-ca-certfile",
            str(cfg.ssl_ca_certfile),
        ]
    if cfg.node_auth:
        argv.append("--enable-supernode-auth")
    return argv


class SuperLinkProcess:
    """``flower-superlink`` kept running (restarted with backoff if it dies).

    Parameters
    ----------
    config
        What to run.
    on_event
        Supervisor events (``process_started``, ``process_exited``).
    backoff
        Restart delays after a crash.
    """

    def __init__(
        self,
        config: SuperLinkConfig,
        *,
        on_event: EventSink | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self._on_event = on_event
        self._backoff = backoff or Backoff(initial_s=0.5, max_s=30.0)
        self._sleep = sleep
        self._supervisor: ProcessSupervisor | None = None

    @property
    def pid(self) -> int | None:
        """The running SuperLink's pid (None while stopped or between restarts)."""
        return self._supervisor.pid if self._supervisor is not None else None

    def env(self) -> dict[str, str]:
        """The SuperLink's environment (also right for ServerApp processes it spawns)."""
        return flower_env(
            self.config.flwr_home, {SUPEREXEC_POLL_ENV: str(self.config.superexec_poll_s)}
        )

    def start(self) -> None:
        """Start it and wait until it accepts connections (bounded by ``ready_timeout_s``).

        Raises
        ------
        SuperLinkError
            It exited or did not listen in time (the log tail says why).
        """
        if self._supervisor is not None:
            raise SuperLinkError("SuperLink already started")
        cfg = self.config
        cfg.database.parent.mkdir(parents=True, exist_ok=True)
        if cfg.flwr_home is not None:
            cfg.flwr_home.mkdir(parents=True, exist_ok=True)
        if port_accepts(cfg.host, cfg.port):
            raise SuperLinkError(f"port {cfg.address} is already in use; choose another port")
        self._supervisor = ProcessSupervisor(
            "superlink",
            superlink_argv(cfg),
            env=self.env(),
            backoff=self._backoff,
            on_event=self._on_event,
            log_path=cfg.log_path,
        )
        self._supervisor.start()
        self.wait_ready()

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until the port accepts connections; uvicorn binds after the app started."""
        sup = self._supervisor
        if sup is None:
            raise SuperLinkError("SuperLink not started")
        limit = self.config.ready_timeout_s if timeout_s is None else timeout_s

        def crash_looping() -> None:
            if sup.last_exit is not None and sup.pid is None and sup.failures >= 2:
                self.stop()
                raise SuperLinkError(
                    f"flower-superlink keeps exiting (last: exit {sup.last_exit}); "
                    f"see {self.config.log_path or 'its log'}{self._tail()}"
                )

        try:
            wait_until(
                lambda: port_accepts(self.config.host, self.config.port),
                limit,
                f"flower-superlink on {self.config.address}",
                sleep=self._sleep,
                check=crash_looping,
            )
        except TimeoutError as exc:
            self.stop()
            raise SuperLinkError(
                f"flower-superlink did not listen on {self.config.address} within "
                f"{limit:.0f} s{self._tail()}"
            ) from exc

    def _tail(self) -> str:
        path = self.config.log_path
        if path is None or not path.exists():
            return ""
        return ":\n" + path.read_text(encoding="utf-8", errors="replace")[-1500:]

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM it (SIGKILL after ``grace_s``); return its exit code."""
        sup, self._supervisor = self._supervisor, None
        return sup.stop(grace_s) if sup is not None else None

    def restart(self) -> None:
        """Stop and start again (the database keeps runs and enrolled nodes)."""
        self.stop()
        self.start()

    def __enter__(self) -> SuperLinkProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
