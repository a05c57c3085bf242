"""A user's own task on a deployed fleet: `edgeai server run` and two `edgeai agent run`.

The task is examples/custom-task copied to a folder outside the package (the user's).
Each agent names it in its agent.toml (``[task] ref``, ``path``) and trains on its own
shard of the user's data; the server runs the experiment that names the same task. Then
the run's last checkpoint (a ``task:`` model) compiles for a device profile, which is
what the release pipeline does with it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w

from edgeai.plumbing.processes import free_port, wait_until
from edgeai.server.daemon import read_server_status
from tests.support.federation import loopback_federation

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom-task"
ROUNDS = 2


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "edgeai.cli", *argv],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _user_copy(root: Path) -> Path:
    """The user's folder: the example's task module and experiment, 2 devices, no DP."""
    user = root / "my-task"
    shutil.copytree(EXAMPLE, user, ignore=shutil.ignore_patterns("data.npz", "__pycache__"))
    exp = user / "experiment.toml"
    text = exp.read_text(encoding="utf-8")
    for old, new in (
        ("rounds = 5", f"rounds = {ROUNDS}"),
        ("samples = 2000", "samples = 600"),
        ("num_clients = 4", "num_clients = 2"),
        ("enabled = true", "enabled = false"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    exp.write_text(text, encoding="utf-8")
    return user


def _agent_config(root: Path, node: str, superlink: str, user: Path) -> Path:
    folder = root / node
    config = {
        "node": node,
        "profile": "x86-64-avx2",
        "state_dir": "state",
        "data": "data.npz",
        "task": {"ref": "task:CustomTask", "path": str(user), "options": {"samples": 600}},
        "federation": {
            "superlink": superlink,
            "insecure": True,
            "runtime_port": free_port(),
            "restart_initial_s": 1,
            "restart_max_s": 5,
        },
        "serving": {"grpc_port": 0, "http_port": 0},
        "discovery": False,
    }
    path = folder / "agent.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("task-fleet")
    user = _user_copy(root)
    sys.path.insert(0, str(user))
    try:
        from task import generate  # noqa: PLC0415  (the user's module)
    finally:
        sys.path.remove(str(user))
        sys.modules.pop("task", None)
    generate(user / "data.npz", samples=600)  # what the task's own constructor would write
    with np.load(user / "data.npz") as data:
        x, y = data["X"], data["y"]
    server = root / "server"
    server.mkdir()
    config = loopback_federation(
        root / "federation.toml",
        state_dir=str(server),
        calibration=str(user / "data.npz"),
        fleet="tasks",
        run={"experiment": str(user / "experiment.toml"), "min_nodes": 2, "node_wait_s": 300},
    )
    superlink = f"127.0.0.1:{tomli_w_port(config)}"
    procs = [_spawn(["server", "run", "-c", str(config)], root / "server.log")]
    try:
        wait_until((server / "status.json").is_file, 120, "the server", poll_s=0.2)
        for i, node in enumerate(("dev-a", "dev-b")):
            (root / node).mkdir()
            part = slice(i * 300, (i + 1) * 300)  # each device's own shard of the user's data
            np.savez(root / node / "data.npz", X=x[part], y=y[part])
            agent = _agent_config(root, node, superlink, user)
            procs.append(_spawn(["agent", "run", "-c", str(agent)], root / node / "agent.log"))

        def finished() -> bool:
            if procs[0].poll() is not None:
                raise AssertionError((root / "server.log").read_text(errors="replace")[-3000:])
            status = read_server_status(server) or {}
            return bool((status.get("run") or {}).get("status") == "finished")

        wait_until(finished, 600, "the run to finish", poll_s=0.5)
        yield {"root": root, "server": server, "user": user, "status": read_server_status(server)}
    finally:
        for proc in reversed(procs):
            _stop(proc)


def tomli_w_port(config: Path) -> int:
    import tomllib  # noqa: PLC0415

    return int(tomllib.loads(config.read_text(encoding="utf-8"))["superlink"]["port"])


def test_both_devices_train_the_users_task_every_round(fleet: dict[str, Any]) -> None:
    run = fleet["status"]["run"]
    assert run["sub_status"] == "completed", run
    rounds = run["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    assert all((r["accepted"], r["failed"], r["rejected"]) == (2, 0, 0) for r in rounds), rounds
    # The task's own metrics, evaluated by the server on the task's validation split.
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rounds)
    assert rounds[-1]["accuracy"] > 0.4, rounds  # 4 classes: chance is 0.25
    for node in ("dev-a", "dev-b"):
        node_config = (fleet["root"] / node / "state" / "node-config.toml").read_text()
        assert "task-config" in node_config
        assert str(fleet["user"]) in node_config  # the device's own copy of the task


def test_the_last_checkpoint_compiles_for_a_device(fleet: dict[str, Any], tmp_path: Path) -> None:
    checkpoints = sorted((fleet["server"] / "run" / "checkpoints").glob("round-*.npz"))
    assert checkpoints, list((fleet["server"] / "run").iterdir())
    out = tmp_path / "bundle"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeai.cli",
            "compile",
            str(checkpoints[-1]),
            "--profile",
            "rpi5",
            "--calibration",
            str(fleet["user"] / "data.npz"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"][1:] == [3, 32, 32]
    assert manifest["outputs"][0]["shape"][1:] == [4]
    assert manifest["accuracy"]["metric"] == "accuracy"
    assert manifest["provenance"]["task"] == "custom-rgb"
    assert manifest["round"] == ROUNDS
