"""``edgeai simulate --ray-address`` on a real two-node Ray cluster on 127.0.0.1.

Both nodes are ``ray start --block`` processes this test starts (a head and a second
node joining it), with their own temporary directory, so no other Ray on this machine
sees them (``ray.init()`` elsewhere finds clusters through ``/tmp/ray``). They are ended
by process id, never with ``ray stop`` (which ends every Ray process of the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from edgeai.plumbing.processes import free_port, wait_until

# slow: two Ray nodes boot (~20 s each on two shared cores), then two rounds train.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAY = str(Path(sys.executable).with_name("ray"))
EXPERIMENT = """
name = "on-a-cluster"
seed = 2
[model]
name = "dp-cnn-tiny"
[federation]
num_clients = 4
rounds = 2
[training]
batch_size = 64
learning_rate = 0.5
[privacy]
enabled = true
noise_multiplier = 1.0
"""


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_ADDRESS": "",  # never an address from the environment
    }


def _ray_nodes(address: str) -> int:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import ray; ray.init(address={address!r}, logging_level='ERROR');"
            "print(sum(n['Alive'] for n in ray.nodes()))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
        check=False,
    )
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0


def _end(proc: subprocess.Popen[bytes]) -> None:
    # The node's own processes (raylet, GCS, workers) are its descendants: end them by pid.
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    proc.send_signal(signal.SIGTERM)  # `ray start --block` ends its node on SIGTERM
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    _, alive = psutil.wait_procs(family, timeout=15)
    for child in alive:
        child.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture
def cluster() -> Iterator[str]:
    """A head and a second node on 127.0.0.1; yields the head's address."""
    temp = tempfile.mkdtemp(prefix="er-", dir="/tmp")  # short: Ray's socket paths are long
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        nodes.append(
            subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--head",
                    f"--port={port}",
                    "--include-dashboard=false",
                    f"--temp-dir={temp}",
                    *common,
                ],
                env=_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_until(lambda: _ray_nodes(address) >= 1, 180, "the Ray head", poll_s=2)
        nodes.append(
            subprocess.Popen(
                [RAY, "start", f"--address={address}", *common],
                env=_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_until(lambda: _ray_nodes(address) >= 2, 180, "the second Ray node", poll_s=2)
        yield address
    finally:
        for proc in reversed(nodes):
            _end(proc)
        shutil.rmtree(temp, ignore_errors=True)


def test_simulate_runs_on_a_two_node_cluster(cluster: str, tmp_path: Path) -> None:
    exp = tmp_path / "cluster.toml"
    exp.write_text(EXPERIMENT, encoding="utf-8")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeai.cli",
            "simulate",
            str(exp),
            "--out",
            str(out),
            "--ray-address",
            cluster,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**_env(), "COLUMNS": "120"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["accepted"] == 4 for r in rounds)
    assert 0 < rounds[0]["epsilon"] < rounds[1]["epsilon"]
    # Both nodes are still there: the run used the cluster, it did not start its own Ray.
    assert _ray_nodes(cluster) == 2
