"""The dashboard's pure parts and its reading of a state directory (no sockets here)."""

from __future__ import annotations

import base64
import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from edgeai.errors import ConfigError
from edgeai.fleet.cli import app as fleet_app
from edgeai.server.collector import NodeState
from edgeai.server.config import load_server_config
from edgeai.server.dashboard import DashboardConfig, StateSource, check_access
from edgeai.server.dashboard.alerts import alerts
from edgeai.server.dashboard.page import NodeQuery, PageRenderer, QueryError, ago, node_page
from edgeai.server.dashboard.source import ReceiveTimes, Seen, read_jsonl
from tests.dashboard_state import RUN_ID, SKEWED, State, populate

TOKEN = "s3cret-token-0123456789"  # noqa: S105  (a test token)


# -- access -------------------------------------------------------------------------------


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"operator:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("remote", "host", "authorization", "token", "expected"),
    [
        ("127.0.0.1", "127.0.0.1:8090", "", None, None),
        ("::1", "[::1]:8090", "", None, None),
        ("127.0.0.1", "localhost:8090", "", None, None),
        ("192.168.1.7", "10.0.0.1:8090", "", None, 401),  # not this machine, no token set
        (None, "127.0.0.1", "", None, 401),
        ("127.0.0.1", "evil.example:8090", "", None, 403),  # DNS rebinding to loopback
        ("127.0.0.1", "", "", None, 403),
        ("192.168.1.7", "h:1", f"Bearer {TOKEN}", TOKEN, None),
        ("192.168.1.7", "h:1", basic(TOKEN), TOKEN, None),
        ("192.168.1.7", "h:1", "", TOKEN, 401),
        ("192.168.1.7", "h:1", "Bearer wrong", TOKEN, 401),
        ("192.168.1.7", "h:1", basic("wrong"), TOKEN, 401),
        ("192.168.1.7", "h:1", "Basic !!!notbase64", TOKEN, 401),
        ("127.0.0.1", "127.0.0.1:1", "", TOKEN, 401),  # with a token, loopback needs it too
    ],
)
def test_access_needs_the_token_or_a_loopback_peer_under_a_loopback_host(
    remote: str | None, host: str, authorization: str, token: str | None, expected: int | None
) -> None:
    got = check_access(remote=remote, host_header=host, authorization=authorization, token=token)
    assert got == expected


def test_a_non_loopback_host_without_a_token_is_refused_when_the_config_is_read(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValidationError, match="token is required"):
        DashboardConfig(host="0.0.0.0")  # noqa: S104
    assert DashboardConfig(host="0.0.0.0", token=TOKEN).token == TOKEN  # noqa: S104
    with pytest.raises(ValidationError, match="at least 16"):
        DashboardConfig(token="short")  # noqa: S106
    state = populate(tmp_path)
    text = state.config.read_text().replace("[dashboard]\n", '[dashboard]\nhost = "0.0.0.0"\n')
    state.config.write_text(text)
    with pytest.raises(ConfigError, match=r"dashboard\.token"):
        load_server_config(state.config)


# -- the state directory --------------------------------------------------------------------


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> State:
    return populate(tmp_path_factory.mktemp("dash"), nodes=12, skewed=True)


def source_of(state: State) -> StateSource:
    return StateSource.of(load_server_config(state.config))


def test_fleet_rows_equal_fleet_status_json_for_the_same_file(state: State) -> None:
    source = source_of(state)
    try:
        ours = source.fleet()
    finally:
        source.close()
    result = CliRunner().invoke(fleet_app, ["status", "--json", "--config", str(state.config)])
    assert result.exit_code == 0, result.output
    assert ours == json.loads(result.output)
    assert len(ours) == 13


def test_rounds_equal_the_runs_rounds_jsonl_and_unknown_runs_are_none(state: State) -> None:
    source = source_of(state)
    lines = state.rounds.read_text().splitlines()
    assert source.rounds(str(RUN_ID)) == [json.loads(line) for line in lines]
    assert source.rounds("../status.json") is None
    assert source.rounds("run") is None  # the id is the Flower run id once there is one
    (run,) = source.runs()
    assert run["id"] == str(RUN_ID)
    assert (run["rounds"], run["state"], run["accuracy"]) == (5, "finished", 0.95)


def test_releases_show_each_profiles_wave_and_what_it_serves(state: State) -> None:
    releases = source_of(state).releases()
    assert releases["serving"] == {"x86-64-avx2": 1, "rpi5": 1, "jetson-orin-nano-8gb": 1}
    (release,) = releases["releases"]
    assert release["rollouts"]["rpi5"]["wave"] == ["node-0001"]


def test_last_seen_is_the_servers_receive_time_not_the_nodes_clock(state: State) -> None:
    seen = source_of(state).received()
    skewed = seen[SKEWED]
    assert skewed.skew_s == pytest.approx(595, abs=1)  # 10 min ahead, sent 5 s "before"
    assert abs(seen["node-0000"].skew_s) < 10


def test_receive_times_are_read_incrementally(tmp_path: Path) -> None:
    st_ = populate(tmp_path, nodes=2)
    times = ReceiveTimes(st_.db)
    first = times.read()
    assert set(first) == {"node-0000", "node-0001"}
    assert times.read() == first  # nothing new: the same view, from no rows


def test_an_empty_state_dir_is_an_empty_view_not_an_error(tmp_path: Path) -> None:
    source = StateSource(tmp_path, tmp_path / "fleet.sqlite", tmp_path / "releases")
    assert source.fleet() == source.runs() == []
    assert source.received() == {}
    assert source.releases() == {"serving": {}, "in_flight": [], "releases": []}
    assert source.status() is None


def test_a_damaged_releases_file_is_an_alert_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "releases").mkdir()
    (tmp_path / "releases" / "releases.json").write_text("{not json")
    source = StateSource(tmp_path, tmp_path / "fleet.sqlite", tmp_path / "releases")
    found = alerts(
        status=None, runs=[], releases=source.releases(), nodes=[], seen={}, now=0.0,
        offline_after_s=180,
    )  # fmt: skip
    assert any(a.level == "error" and "releases.json" in a.what for a in found)


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    path.write_text('{"round": 1}\n{"round": 2}\n{"rou')
    assert read_jsonl(path) == [{"round": 1}, {"round": 2}]


# -- paging and filtering --------------------------------------------------------------------


def fleet(n: int) -> list[NodeState]:
    profiles = ("rpi5", "x86-64-avx2")
    return [
        NodeState(f"n{i:04d}", profile=profiles[i % 2], online=i % 3 != 0, last_seen=100.0)
        for i in range(n)
    ]


def test_a_thousand_nodes_are_paged_and_filtered_on_the_server() -> None:
    nodes = fleet(1000)
    page = node_page(nodes, {}, NodeQuery(), now=160.0, page_size=50)
    assert (len(page.rows), page.matched, page.pages) == (50, 1000, 20)
    assert page.rows[0]["last_seen_ago"] == "1 min ago"
    last = node_page(nodes, {}, NodeQuery(page=999), now=160.0, page_size=50)
    assert (last.page, last.rows[-1]["node"]) == (20, "n0999")  # clamped to the last page
    rpi_offline = NodeQuery(online="no", profile="rpi5")
    page = node_page(nodes, {}, rpi_offline, now=160.0, page_size=50)
    assert page.matched == len([i for i in range(1000) if i % 2 == 0 and i % 3 == 0])
    assert node_page(nodes, {}, NodeQuery(q="N0999"), 160.0, 50).matched == 1


def test_the_page_shows_the_receive_time_and_flags_skew() -> None:
    nodes = [NodeState("a", online=True, last_seen=1000.0)]  # the node says "just now"
    seen = {"a": Seen(received=400.0, sent=1000.0)}  # the server last heard it at 400
    (row,) = node_page(nodes, seen, NodeQuery(), now=1000.0, page_size=10).rows
    assert row["last_seen_ago"] == "10 min ago"
    assert row["skew_s"] == 600.0


@given(st.dictionaries(st.sampled_from(["q", "online", "profile", "page", "x"]), st.text()))
def test_any_query_string_parses_or_is_a_query_error(params: dict[str, str]) -> None:
    try:
        query = NodeQuery.parse(params)
    except QueryError:
        return
    assert 1 <= query.page <= 100_000
    assert query.online in ("", "yes", "no")


@pytest.mark.parametrize("page", ["0", "-1", "1e3", "\uff19", "\u00b2", "9" * 40, "1000001"])
def test_bad_page_numbers_are_refused(page: str) -> None:
    with pytest.raises(QueryError, match="page"):
        NodeQuery.parse({"page": page})


def test_ago_reads_like_fleet_status() -> None:
    assert [ago(None), ago(5), ago(-3), ago(180), ago(7200), ago(3 * 86_400)] == [
        "never", "5 s ago", "0 s ago", "3 min ago", "2 h ago", "3 d ago",
    ]  # fmt: skip


# -- alerts ------------------------------------------------------------------------------------


def test_alerts_say_what_needs_attention_errors_first() -> None:
    releases = {
        "releases": [
            {"release": 1, "rollouts": {"rpi5": {"state": "promoted"}}},
            {"release": 2, "rollouts": {"rpi5": {"state": "revoked", "detail": "2/2 failed"}}},
        ]
    }
    nodes = [
        NodeState("down", online=False),
        NodeState("quiet", online=True),
        NodeState("refuser", online=True, release_state="rejected"),
    ]
    seen = {"quiet": Seen(received=0.0, sent=0.0), "refuser": Seen(1000.0, 1100.0)}
    found = alerts(
        status={"ts": 700.0, "alerts": ["disk almost full"]},
        runs=[{"id": "7", "state": "failed", "reason": "too few nodes"}],
        releases=releases,
        nodes=nodes,
        seen=seen,
        now=1000.0,
        offline_after_s=180,
    )
    text = [(a.level, a.what) for a in found]
    assert text[:2] == [
        ("error", "run 7 failed: too few nodes"),
        ("error", "release 2 revoked for rpi5: 2/2 failed"),
    ]
    whats = " | ".join(a.what for a in found)
    for expected in (
        "disk almost full",
        "status.json is 300 s old",
        "1 node(s) offline: down",
        "online but silent for over 180 s: quiet",
        "refused a release: refuser (rejected)",
        "refuser (+100 s)",
    ):
        assert expected in whats
    assert all(a.level in ("error", "warning") for a in found)


# -- the page and its vendored files ---------------------------------------------------------


def test_the_page_escapes_what_nodes_report() -> None:
    hostile = NodeState("<script>alert(1)</script>", profile='"><img src=x onerror=alert(1)>')
    page = node_page([hostile], {}, NodeQuery(), now=0.0, page_size=10)
    html = PageRenderer().render(
        fleet="f", nodes=[hostile], page=page, query=NodeQuery(q="</script><b>"), runs=[],
        rounds={}, releases={}, alerts=[], refresh_s=10, now=0.0,
    )  # fmt: skip
    assert "<script>alert" not in html
    assert "<img src=x" not in html
    assert "</script><b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_vendored_uplot_is_the_pinned_npm_file() -> None:
    static = resources.files("edgeai.server.dashboard") / "static"
    digest = hashlib.sha256((static / "uPlot.iife.min.js").read_bytes()).hexdigest()
    assert digest == "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f"
    assert "MIT" in (static / "uPlot.LICENSE").read_text()
    assert digest in (static / "VENDORED.md").read_text()
