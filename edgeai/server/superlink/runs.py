"""Submit the deployed training run to the SuperLink and follow it, every wait bounded.

A Flower run is a FAB (the app directory zipped) plus run config. Our app directory holds
only ``pyproject.toml``: its components name modules of the installed edgeai package
(the SuperLink and the SuperNodes run with edgeai installed), so the FAB is tiny and
never carries code. It lives in a ``FLWR_HOME`` of our own, never in the repository
(``flwr run`` rewrites sections of the ``pyproject.toml`` it is given).

The calls are the ones ``flwr run`` / ``flwr ls`` / ``flwr stop`` make
(``flwr/cli/run/run.py``: ``build_fab_from_disk`` then ``StartRun``; ``flwr/cli/ls.py``:
``ListRuns``), made in-process.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from edgeai.errors import EdgeAIError
from edgeai.flower.runspec import SPEC_KEY, RunPaths, RunSpec, write_run_spec
from edgeai.plumbing.files import atomic_write
from edgeai.plumbing.processes import wait_until
from edgeai.server.superlink.control import ControlAPIError, ControlConnection, control_client

APP_NAME = "edgeai-federation"
APP_VERSION = "1.0.0"
SERVER_APP = "edgeai.flower.server_app:app"
CLIENT_APP = "edgeai.flower.client_app:app"


class RunFailedError(EdgeAIError, RuntimeError):
    """The run ended failed or stopped, or did not finish in time."""


@dataclass(frozen=True)
class RunStatus:
    """A run as the SuperLink reports it."""

    run_id: int
    status: str  # pending | starting | running | finished
    sub_status: str  # completed | failed | stopped (once finished)
    details: str  # why it failed

    @property
    def finished(self) -> bool:
        """Whether the run has ended (any way)."""
        return self.status == "finished"

    @property
    def ok(self) -> bool:
        """Whether it ended completed."""
        return self.finished and self.sub_status == "completed"


def app_pyproject(client_app: str = CLIENT_APP, server_app: str = SERVER_APP) -> str:
    """The app's ``pyproject.toml``: components and the one run-config key."""
    return tomli_w.dumps(
        {
            "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
            "project": {
                "name": APP_NAME,
                "version": APP_VERSION,
                "description": "edgeai federated training (deployed run)",
                "license": "Apache-2.0",
                "dependencies": [],
            },
            "tool": {
                "flwr": {
                    "app": {
                        "publisher": "edgeai",
                        "components": {"serverapp": server_app, "clientapp": client_app},
                        "config": {SPEC_KEY: ""},
                    }
                }
            },
        }
    )


def write_app_dir(flwr_home: Path, client_app: str = CLIENT_APP) -> Path:
    """Write the Flower app directory under ``flwr_home/edgeai-app``; return it.

    ``client_app`` names the ClientApp SuperNodes run (tests point it at a
    fault-injecting one; production uses the default).
    """
    app_dir = flwr_home / "edgeai-app"
    atomic_write(app_dir / "pyproject.toml", app_pyproject(client_app).encode())
    return app_dir


def submit(conn: ControlConnection, spec: RunSpec, app_dir: Path) -> int:
    """Write ``spec`` under its ``out_dir``, start the run on the SuperLink; return its id.

    Raises
    ------
    ControlAPIError
        The SuperLink refused the run or cannot be reached.
    """
    from flwr.cli.build import build_fab_from_disk  # noqa: PLC0415
    from flwr.common.serde import fab_to_proto, user_config_to_proto  # noqa: PLC0415
    from flwr.proto.control_pb2 import StartRunRequest  # noqa: PLC0415
    from flwr.supercore.fab import Fab  # noqa: PLC0415

    spec_path = write_run_spec(spec)
    fab_bytes = build_fab_from_disk(app_dir)
    fab = Fab(hashlib.sha256(fab_bytes).hexdigest(), fab_bytes, {})
    request = StartRunRequest(
        fab=fab_to_proto(fab),
        override_config=user_config_to_proto({SPEC_KEY: str(spec_path.resolve())}),
        federation="",  # the SuperLink's default federation
    )
    with control_client(conn, "starting the run") as client:
        res = client.StartRun(request)
    if not res.HasField("run_id"):
        raise ControlAPIError(f"the SuperLink at {conn.address} did not start the run")
    return int(res.run_id)


def status(conn: ControlConnection, run_id: int) -> RunStatus:
    """The run's status now."""
    from flwr.proto.control_pb2 import ListRunsRequest  # noqa: PLC0415

    with control_client(conn, f"reading run {run_id}") as client:
        res = client.ListRuns(ListRunsRequest(run_id=run_id))
    if run_id not in res.run_dict:
        raise ControlAPIError(f"the SuperLink at {conn.address} has no run {run_id}")
    run = res.run_dict[run_id]
    return RunStatus(run_id, run.status.status, run.status.sub_status, run.status.details)


def stop(conn: ControlConnection, run_id: int) -> None:
    """Ask the SuperLink to stop the run."""
    from flwr.proto.control_pb2 import StopRunRequest  # noqa: PLC0415

    with control_client(conn, f"stopping run {run_id}") as client:
        client.StopRun(StopRunRequest(run_id=run_id))


def follow(
    conn: ControlConnection,
    run_id: int,
    *,
    timeout_s: float,
    poll_s: float = 1.0,
    on_status: Callable[[RunStatus], None] | None = None,
    unreachable_s: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RunStatus:
    """Poll until the run ends; return its final status.

    A SuperLink that cannot be reached (e.g. while it restarts) is retried for up to
    ``unreachable_s`` at a time. ``on_status`` sees every change.

    Raises
    ------
    RunFailedError
        It did not end within ``timeout_s``, or the SuperLink stayed unreachable.
    """
    last: RunStatus | None = None
    down_since: float | None = None

    def finished() -> RunStatus | None:
        nonlocal last, down_since
        try:
            now = status(conn, run_id)
        except ControlAPIError as exc:
            down_since = down_since if down_since is not None else clock()
            if clock() - down_since > unreachable_s:
                raise RunFailedError(
                    f"run {run_id}: SuperLink unreachable for {unreachable_s:.0f} s: {exc}"
                ) from exc
            return None
        down_since = None
        if now != last and on_status is not None:
            on_status(now)
        last = now
        return now if now.finished else None

    try:
        return wait_until(
            finished, timeout_s, f"run {run_id}", poll_s=poll_s, clock=clock, sleep=sleep
        )
    except TimeoutError as exc:
        raise RunFailedError(
            f"run {run_id} did not finish within {timeout_s:.0f} s "
            f"(last status: {last.status if last else 'unknown'}); see its status.json"
        ) from exc


def run_to_end(
    conn: ControlConnection,
    spec: RunSpec,
    app_dir: Path,
    *,
    timeout_s: float,
    on_status: Callable[[RunStatus], None] | None = None,
) -> RunStatus:
    """Submit ``spec``, follow it, and raise :class:`RunFailedError` unless it completed."""
    run_id = submit(conn, spec, app_dir)
    final = follow(conn, run_id, timeout_s=timeout_s, on_status=on_status)
    if not final.ok:
        raise RunFailedError(
            f"run {run_id} ended {final.sub_status}: {final.details or 'no details'}; "
            f"see {RunPaths(spec.out_dir).status}"
        )
    return final
