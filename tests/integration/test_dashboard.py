"""The dashboard's HTTP API on real sockets, over a state dir the real collector wrote.

`/api/v1/fleet` against the `edgeai fleet status --json` process, rounds against the
file, releases, alerts, the page's filter. Refusals (401, 404/405, hostile request
targets, no writes) are in tests/security/test_dashboard_attacks.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeai.server.config import load_server_config
from edgeai.server.dashboard import DashboardConfig, DashboardServer, StateSource
from tests.dashboard_state import RUN_ID, State, populate, request

pytestmark = pytest.mark.integration
TOKEN = "integration-token-0123456789"  # noqa: S105  (a test token)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> State:
    return populate(tmp_path_factory.mktemp("dash"), nodes=3, skewed=True)


@pytest.fixture
def server(state: State) -> Iterator[DashboardServer]:
    cfg = load_server_config(state.config)
    with DashboardServer(StateSource.of(cfg), cfg.dashboard, cfg.fleet) as srv:
        yield srv


def test_fleet_equals_the_fleet_status_json_process(state: State, server: DashboardServer) -> None:
    assert server.port is not None
    api = request(server.port, "/api/v1/fleet")
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeai.cli",
            "fleet",
            "status",
            "--json",
            "--config",
            str(state.config),
        ],
        capture_output=True,
        check=True,
        timeout=60,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )
    assert api.status == 200
    assert api.headers["Content-Type"].startswith("application/json")
    assert api.json() == json.loads(cli.stdout)
    assert [n["node"] for n in api.json()] == state.nodes  # type: ignore[union-attr]


def test_runs_rounds_and_releases(state: State, server: DashboardServer) -> None:
    assert server.port is not None
    (run,) = request(server.port, "/api/v1/runs").json()  # type: ignore[misc]
    assert run["id"] == str(RUN_ID)
    rounds = request(server.port, f"/api/v1/runs/{RUN_ID}/rounds")
    assert rounds.json() == [json.loads(line) for line in state.rounds.read_text().splitlines()]
    assert request(server.port, "/api/v1/runs/999/rounds").status == 404
    releases = request(server.port, "/api/v1/releases").json()
    assert releases["serving"]["rpi5"] == 1  # type: ignore[index]
    alerts = request(server.port, "/api/v1/alerts").json()
    assert any("node-skewed" in a["what"] for a in alerts)  # type: ignore[union-attr]
    page = request(server.port, "/?q=node-0001")
    assert page.status == 200
    assert b"1 of 4 match" in page.body
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]


def test_a_taken_port_is_a_clear_error(state: State, server: DashboardServer) -> None:
    cfg = load_server_config(state.config)
    taken = DashboardConfig(port=server.port)
    from edgeai.server.dashboard import DashboardError  # noqa: PLC0415

    with pytest.raises(DashboardError, match=rf"cannot listen on 127\.0\.0\.1:{server.port}"):
        DashboardServer(StateSource.of(cfg), taken, cfg.fleet).start()


def test_urllib_sees_the_same_as_a_browser_would(server: DashboardServer) -> None:
    with urllib.request.urlopen(server.url + "api/v1/runs", timeout=10) as reply:  # noqa: S310
        assert json.loads(reply.read())[0]["id"] == str(RUN_ID)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url + "api/v1/nothing", timeout=10)  # noqa: S310
    assert err.value.code == 404


def test_server_run_serves_the_dashboard_and_prints_its_url(tmp_path: Path) -> None:
    import numpy as np  # noqa: PLC0415

    from tests.mosquitto import free_port  # noqa: PLC0415

    state_dir = tmp_path / "server"
    state_dir.mkdir()
    rng = np.random.default_rng(0)
    np.savez(state_dir / "cal.npz", X=rng.integers(0, 255, (8, 28, 28), dtype=np.uint8),
             y=np.arange(8) % 10)  # fmt: skip
    config = state_dir / "federation.toml"
    config.write_text(
        f'fleet = "dash"\nstate_dir = "{state_dir}"\nmetrics_port = 0\ndiscovery = false\n'
        "[dashboard]\nport = 0\n"
        f'[superlink]\nhost = "127.0.0.1"\nport = {free_port()}\ndatabase = "superlink.db"\n'
        "insecure = true\nnode_auth = false\n"
        f'[broker]\nmanage = true\nhost = "127.0.0.1"\nport = {free_port()}\ndata_dir = "broker"\n'
        f'[artifacts]\nrepository = "tuf"\nhost = "127.0.0.1"\nport = {free_port()}\n'
        '[releases]\nstate_dir = "releases"\ncalibration = "cal.npz"\n',
        encoding="utf-8",
    )
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = tmp_path / "server.log"
    argv = [sys.executable, "-m", "edgeai.cli", "server", "run", "-c", str(config)]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        found = None
        while found is None:
            text = log.read_text(errors="replace")
            found = re.search(r"dashboard (http://127\.0\.0\.1:(\d+)/)", text)
            assert proc.poll() is None, text[-3000:]
            assert time.monotonic() < deadline, f"no dashboard URL in 120 s:\n{text[-3000:]}"
            time.sleep(0.1)
        port = int(found.group(2))
        status = json.loads((state_dir / "status.json").read_text())
        assert status["dashboard_url"] == found.group(1)
        fleet = request(port, "/api/v1/fleet")
        cli = subprocess.run(
            [*argv[:3], "fleet", "status", "--json", "--config", str(config)],
            capture_output=True, check=True, timeout=60, env=env,
        )  # fmt: skip
        assert fleet.status == 200
        assert fleet.json() == json.loads(cli.stdout) == []
        assert request(port, "/api/v1/releases").json() == {
            "serving": {}, "in_flight": [], "releases": [],
        }  # fmt: skip
        assert request(port, "/").status == 200
        assert request(port, "/api/v1/fleet", method="DELETE").status == 405
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
