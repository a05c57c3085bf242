"""The dashboard's HTTP API on real sockets, over a state dir the real collector wrote.

`/api/v1/fleet` against the `edgeai fleet status --json` process, rounds against the
file, 401 from a non-local address, 404/405, hostile request targets, and no writes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from edgeai.server.config import load_server_config
from edgeai.server.dashboard import DashboardConfig, DashboardServer, StateSource
from tests.dashboard_state import RUN_ID, State, populate

pytestmark = pytest.mark.integration
TOKEN = "integration-token-0123456789"  # noqa: S105  (a test token)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def request(
    port: int, target: str, method: str = "GET", host: str = "127.0.0.1", **headers: str
) -> Reply:
    """One HTTP/1.1 request with the target sent byte for byte (no client normalisation)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {headers.pop('Host', host)}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    lines += ["Connection: close", "", ""]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1", errors="replace"))
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = dict(line.split(": ", 1) for line in header_lines if ": " in line)
    if parsed.get("Transfer-Encoding") == "chunked":
        body = _unchunk(body)
    return Reply(int(status_line.split()[1]), parsed, body)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file's size and mtime, but SQLite's ``-shm``: the WAL index in shared memory
    that every reader, read-only ones included, maps and marks (`fleet status` too)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith("-shm")
    }


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


def test_only_get_and_head_and_only_known_paths(server: DashboardServer) -> None:
    assert server.port is not None
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
        reply = request(server.port, "/api/v1/fleet", method=method, Content_Length="0")
        assert reply.status == 405, method
        assert reply.headers["Allow"] == "GET, HEAD"
    assert request(server.port, "/api/v1/fleet", method="HEAD").status == 200
    for path in ("/api/v2/fleet", "/api/v1", "/admin", "/static/", "/static/nope.js"):
        assert request(server.port, path).status == 404, path


HOSTILE = [
    "/static/..%2f..%2fapp.py",
    "/static/%2e%2e/%2e%2e/config.py",
    "/static/..%252f..%252fsource.py",
    "/static/../../../../etc/passwd",
    "/api/v1/runs/..%2f..%2fstatus.json/rounds",
    "/api/v1/runs/%2e%2e/rounds",
    "/api/v1/runs/4242%00/rounds",
    "/api/v1/runs/4242%2f..%2f..%2fstatus.json/rounds",
    "//etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "http://127.0.0.1/%2e%2e/server/releases/releases.json",
    "/?page=99999999999999999999",
    "/?page=-1",
    "/?online=maybe",
    "/?q=" + "a" * 5000,
    "/api/v1/fleet?" + "x=1&" * 20_000,  # 80 kB of query string
    "/" + "a" * 100_000,
    "/api/v1/fleet\x00",
]


@pytest.mark.parametrize("target", HOSTILE)
def test_hostile_targets_get_4xx_and_the_server_keeps_serving(
    state: State, server: DashboardServer, target: str
) -> None:
    assert server.port is not None
    before = snapshot(state.state_dir)
    reply = request(server.port, target)
    assert 400 <= reply.status < 500, (target, reply.status)
    assert b"passwd" not in reply.body
    assert b"root:" not in reply.body
    assert request(server.port, "/api/v1/fleet").status == 200
    assert snapshot(state.state_dir) == before


def test_the_page_reflects_no_markup_from_the_query(server: DashboardServer) -> None:
    assert server.port is not None
    reply = request(server.port, "/?q=%3C%2Fscript%3E%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert reply.status == 200
    assert b"<script>alert(1)" not in reply.body


def test_no_endpoint_writes(state: State, server: DashboardServer) -> None:
    assert server.port is not None
    before = snapshot(state.state_dir)
    for target in ("/", "/api/v1/fleet", "/api/v1/runs", f"/api/v1/runs/{RUN_ID}/rounds",
                   "/api/v1/releases", "/api/v1/alerts", "/static/dashboard.js"):  # fmt: skip
        for method in ("GET", "HEAD", "POST", "PUT", "DELETE"):
            request(server.port, target, method=method, Content_Length="0")
    assert snapshot(state.state_dir) == before


def non_loopback_address() -> str:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return str(a.address)
    pytest.skip("this machine has no non-loopback IPv4 address to connect from")


def test_a_non_local_peer_needs_the_token(state: State) -> None:
    address = non_loopback_address()
    cfg = load_server_config(state.config)
    settings = DashboardConfig(host=address, port=0, token=TOKEN)
    with DashboardServer(StateSource.of(cfg), settings, cfg.fleet) as srv:
        assert srv.port is not None
        refused = request(srv.port, "/api/v1/fleet", host=address)
        assert refused.status == 401
        assert "Bearer" in refused.headers["WWW-Authenticate"]
        assert request(srv.port, "/", host=address).status == 401
        bad = request(srv.port, "/api/v1/fleet", host=address, Authorization="Bearer nope")
        assert bad.status == 401
        ok = request(srv.port, "/api/v1/fleet", host=address, Authorization=f"Bearer {TOKEN}")
        assert ok.status == 200


def test_without_a_token_a_non_local_peer_is_refused_even_if_validation_was_bypassed(
    state: State,
) -> None:
    address = non_loopback_address()
    cfg = load_server_config(state.config)
    # A config that never went through validation (host off loopback, no token).
    fields = {**DashboardConfig().model_dump(), "host": address, "port": 0}
    settings = DashboardConfig.model_construct(**fields)
    with DashboardServer(StateSource.of(cfg), settings, cfg.fleet) as srv:
        assert srv.port is not None
        assert request(srv.port, "/api/v1/fleet", host=address).status == 401


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
