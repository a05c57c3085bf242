"""``edgeai fleet status``: table, JSON rows, the --config form, and clear failures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from edgeai.fleet.cli import EXIT_BAD_INPUT, ago, app
from edgeai.server.collector import Collector, CollectorConfig, MemorySubscriber
from edgeai.telemetry.topics import Envelope, NodeTopics

runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A collector database with an online node "a" and a node "b" that died."""
    path = tmp_path / "state" / "fleet.sqlite"
    sub = MemorySubscriber()
    collector = Collector(
        CollectorConfig(fleet="cli", db_path=path), sub, registry=CollectorRegistry()
    )
    collector.start()
    now = time.time()
    a, b = NodeTopics("cli", "a"), NodeTopics("cli", "b")
    status = {"state": "online", "profile": "rpi5", "model_version": "3", "release": 2}
    metrics = {"metrics": {"epsilon": 1.25, "p95_ms": 7.5}, "outbox": {}}
    joined = {"run_id": 1, "round": 4, "epsilon": 1.25, "delta": 1e-5}
    sub.deliver(a.status, Envelope("a", "x", 1, now - 5, status).encode())
    sub.deliver(a.telemetry, Envelope("a", "x", 2, now - 4, metrics).encode())
    sub.deliver(a.event("round_joined"), Envelope("a", "x", 3, now - 3, joined).encode())
    sub.deliver(b.status, Envelope("b", "y", 1, now - 7200, {"state": "online"}).encode())
    sub.deliver(b.status, Envelope("b", "y", 0, now - 7300, {"state": "offline"}).encode())
    collector.stop()
    return path


def test_json_rows_are_node_states(db: Path) -> None:
    result = runner.invoke(app, ["status", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["node"], r["online"]) for r in rows] == [("a", True), ("b", False)]
    a = rows[0]
    assert (a["profile"], a["model_version"], a["release"], a["last_round"]) == ("rpi5", "3", 2, 4)
    assert (a["epsilon"], a["p95_ms"], a["delta"]) == (1.25, 7.5, 1e-5)
    assert set(a) == {
        "node", "profile", "online", "model_version", "release", "release_state", "last_round",
        "epsilon", "delta", "p95_ms", "p95_note", "last_seen", "boot_id",
    }  # fmt: skip
    assert (a["p95_note"], rows[1]["p95_note"]) == (None, "no telemetry received yet")


def test_table_shows_one_row_per_node(db: Path) -> None:
    result = runner.invoke(app, ["status", "--db", str(db)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    row_a = next(line for line in lines if line.lstrip().startswith("a "))
    row_b = next(line for line in lines if line.lstrip().startswith("b "))
    for cell in ("rpi5", "yes", "3", "2", "4", "1.25", "7.5", "3 s ago"):
        assert cell in row_a
    assert " no " in row_b
    assert "2 h ago" in row_b
    assert "p95 ms: no telemetry received yet (b)" in lines


SERVER = (
    '[superlink]\ninsecure = true\nnode_auth = false\ndatabase = "link.db"\n'
    '[broker]\nmanage = true\ntls = false\n[releases]\nstate_dir = "r"\ncalibration = "c.npz"\n'
)


def test_config_form_reads_the_collector_table(db: Path, tmp_path: Path) -> None:
    config = tmp_path / "federation.toml"
    config.write_text(
        f'fleet = "cli"\nstate_dir = "state"\n{SERVER}[collector]\n'
        'db_path = "fleet.sqlite"\n',  # relative to state_dir, as the server writes it
        encoding="utf-8",
    )
    result = runner.invoke(app, ["status", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    assert [r["node"] for r in json.loads(result.stdout)] == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[server]\nx = 1\n", "unknown field"),
        (SERVER + '[collector]\ndb_pth = "x"\n', "did you mean 'db_path'"),
        ("[collector\n", "not valid TOML"),
    ],
)
def test_bad_config_exits_2_with_the_reason(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "federation.toml"
    config.write_text(content, encoding="utf-8")
    result = runner.invoke(app, ["status", "--config", str(config)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert message in result.output


def test_missing_or_corrupt_database_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--db", str(tmp_path / "nope.sqlite")])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "no collector database" in result.output
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"\x00garbage" * 500)
    result = runner.invoke(app, ["status", "--db", str(bad), "--json"])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "not a collector database" in result.output
    assert result.stdout == ""  # nothing a JSON consumer could mistake for rows


def test_needs_exactly_one_source(tmp_path: Path) -> None:
    assert runner.invoke(app, ["status"]).exit_code == EXIT_BAD_INPUT
    both = ["status", "--db", "x", "--config", "y"]
    assert runner.invoke(app, both).exit_code == EXIT_BAD_INPUT


def test_empty_fleet_says_so(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    Collector(CollectorConfig(db_path=path), MemorySubscriber()).stop()
    result = runner.invoke(app, ["status", "--db", str(path)])
    assert result.exit_code == 0
    assert "no node has reported yet" in result.stdout
    assert json.loads(runner.invoke(app, ["status", "--db", str(path), "--json"]).stdout) == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "never"), (-3, "0 s ago"), (59, "59 s ago"), (150, "2 min ago"), (7200, "2 h ago"),
     (3 * 86_400, "3 d ago")],
)  # fmt: skip
def test_ago(seconds: float | None, text: str) -> None:
    assert ago(seconds) == text
