"""Attacks on the dashboard's read-only API: a real server over a state dir, raw sockets.

Request targets go out byte for byte: encoded traversal into ``static/`` and run ids,
NUL, absolute-form targets, oversized paths and query strings, bad page numbers,
reflected markup; every write method on every route; peers off this machine without a
token (and with a config that skipped validation). Each is refused with a 4xx, nothing
in the state directory changes, and the server still answers ``/api/v1/fleet``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import psutil
import pytest

from edgeai.server.config import load_server_config
from edgeai.server.dashboard import DashboardConfig, DashboardServer, StateSource
from tests.dashboard_state import RUN_ID, State, populate, request, snapshot

pytestmark = pytest.mark.integration
TOKEN = "attack-suite-token-0123456789"  # noqa: S105  (a test token)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> State:
    return populate(tmp_path_factory.mktemp("dash"), nodes=3, skewed=True)


@pytest.fixture
def server(state: State) -> Iterator[DashboardServer]:
    cfg = load_server_config(state.config)
    with DashboardServer(StateSource.of(cfg), cfg.dashboard, cfg.fleet) as srv:
        yield srv


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
