"""The dashboard's HTTP API on real sockets, over a state dir the real collector wrote.

`/api/v1/fleet` against the `edgeai fleet status --json` process, rounds against the
file, releases, alerts, the page's filter. Refusals (401, 404/405, hostile request
targets, no writes) are in tests/security/test_dashboard_attacks.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

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
