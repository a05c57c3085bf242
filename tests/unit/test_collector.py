"""The collector's state machine and storage, fed through the in-memory subscriber."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from edgeai.agent.metrics import sample
from edgeai.server.collector import FleetView, MemorySubscriber, NodeState, Store
from edgeai.server.collector.collector import (
    DUPLICATE,
    IGNORED,
    INVALID,
    STORED,
    Collector,
    CollectorConfig,
    StoreError,
    open_readonly,
)
from edgeai.serving.metrics import ServingMetrics
from edgeai.telemetry.topics import WILL_SEQ, Envelope, NodeTopics, release_topic
from tests.support.clock import FakeClock

FLEET = "unit"


def message(
    node: str,
    kind: str,
    body: dict[str, Any],
    *,
    seq: int,
    ts: float,
    boot: str = "boot-1",
    name: str | None = None,
) -> tuple[str, bytes]:
    topics = NodeTopics(FLEET, node)
    topic = topics.event(name) if kind == "events" and name else getattr(topics, kind)
    return topic, Envelope(node, boot, seq, ts, body).encode()


def will(node: str, *, boot: str = "boot-1", ts: float = 0.0) -> tuple[str, bytes]:
    return message(node, "status", {"state": "offline"}, seq=WILL_SEQ, ts=ts, boot=boot)


def online(node: str, *, seq: int, ts: float, boot: str = "boot-1", **fields: Any) -> Any:
    return message(node, "status", {"state": "online", **fields}, seq=seq, ts=ts, boot=boot)


def metrics(node: str, *, seq: int, ts: float, boot: str = "boot-1", **values: Any) -> Any:
    body = {"metrics": values, "outbox": {"queued": 0, "dropped": 0}}
    return message(node, "telemetry", body, seq=seq, ts=ts, boot=boot)


class Fleet:
    """A collector on an in-memory subscriber, with a fake clock."""

    def __init__(self, db: Path, clock: FakeClock, prune_every: int = 256, **config: Any) -> None:
        self.sub = MemorySubscriber()
        self.clock = clock
        cfg = CollectorConfig(fleet=FLEET, db_path=db, offline_after_s=60, **config)
        self.collector = Collector(
            cfg, self.sub, clock, registry=CollectorRegistry(), prune_every=prune_every
        )
        self.collector.start()

    def send(self, *msgs: tuple[str, bytes]) -> list[str]:
        return [self.collector.handle(topic, payload) for topic, payload in msgs]

    def node(self, name: str) -> NodeState:
        (state,) = [n for n in self.collector.nodes() if n.node == name]
        return state


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000.0)


@pytest.fixture
def fleet(tmp_path: Path, clock: FakeClock) -> Iterator[Fleet]:
    f = Fleet(tmp_path / "fleet.sqlite", clock)
    yield f
    f.collector.stop()


def test_subscribes_to_the_fleets_node_and_release_topics(fleet: Fleet) -> None:
    assert fleet.sub.filters == ("edgeai/v1/unit/nodes/+/#", "edgeai/v1/unit/releases/+")
    assert fleet.collector.wait_ready(0.1)


def test_status_profile_telemetry_and_events_build_the_node_state(fleet: Fleet) -> None:
    out = fleet.send(
        message("a", "profile", {"name": "rpi5", "arch": "aarch64"}, seq=1, ts=10),
        online("a", seq=2, ts=11, profile="rpi5", model_version="1", release=3),
        metrics("a", seq=3, ts=12, epsilon=0.5, delta=1e-5, p95_ms=4.2, model_version="1"),
        message(
            "a",
            "events",
            {"run_id": 7, "round": 2, "epsilon": 0.7},
            seq=4,
            ts=13,
            name="round_joined",
        ),
        message(
            "a",
            "events",
            {"release": 4, "version": "2", "previous": 3},
            seq=5,
            ts=14,
            name="model_applied",
        ),
    )
    assert out == [STORED] * 5
    assert fleet.node("a") == NodeState(
        node="a",
        profile="rpi5",
        online=True,
        model_version="2",
        release=4,
        release_state="applied",
        last_round=2,
        epsilon=0.7,
        delta=1e-5,
        p95_ms=4.2,
        last_seen=14,
        boot_id="boot-1",
    )
    events = fleet.collector.events()
    assert [(e.node, e.kind, e.ts) for e in events] == [
        ("a", "round_joined", 13),
        ("a", "model_applied", 14),
    ]
    assert events[0].fields == {"run_id": 7, "round": 2, "epsilon": 0.7}
    assert [e.kind for e in fleet.collector.events(since=14)] == ["model_applied"]
    assert [e.ts for e in fleet.collector.events(kinds=["round_joined"])] == [13]


def _agent_telemetry(node: str, serving: ServingMetrics, *, seq: int, ts: float) -> Any:
    """The telemetry message the agent daemon publishes, built by its own code."""
    values = sample(serving.stats(), {"rss_mb": 80.0}, {"queued": 0, "dropped": 0}, {})
    body = {"metrics": values, "outbox": {"queued": 0, "dropped": 0}}
    return message(node, "telemetry", body, seq=seq, ts=ts)


def test_p95_reaches_the_fleet_view_once_the_node_has_served(fleet: Fleet) -> None:
    serving = ServingMetrics(CollectorRegistry(), queue_depth=lambda: 0)
    fleet.send(online("a", seq=1, ts=10), online("b", seq=1, ts=10))
    b = fleet.node("b")
    assert (b.p95_ms, b.p95_note) == (None, "no telemetry received yet")

    fleet.send(_agent_telemetry("a", serving, seq=2, ts=11))
    a = fleet.node("a")
    assert (a.p95_ms, a.p95_note) == (None, "no inference served yet")

    for ms in range(1, 21):  # 1 .. 20 ms: p95 is 19.05 ms (numpy's linear percentile)
        serving.request("rest", "infer", "200", ms / 1000)
        serving.batch(rows=1, requests=1)
    fleet.send(_agent_telemetry("a", serving, seq=3, ts=12))
    a = fleet.node("a")
    assert a.p95_ms == pytest.approx(19.05)
    assert a.p95_note is None
    assert a.as_json()["p95_ms"] == pytest.approx(19.05)


def test_the_last_will_sets_offline_at_once_and_a_resent_status_clears_it(fleet: Fleet) -> None:
    fleet.send(online("a", seq=1, ts=100), will("a", ts=99))
    assert not fleet.node("a").online
    assert fleet.node("a").last_seen == 100  # the will is the broker's, stamped at connect
    fleet.send(online("a", seq=5, ts=130))  # the agent reconnected and said so again
    assert fleet.node("a").online


def test_an_old_boots_will_does_not_take_a_new_boot_offline(fleet: Fleet) -> None:
    fleet.send(
        online("a", seq=1, ts=100, boot="new"),
        will("a", boot="old", ts=50),  # delivered late: the old boot died before "new" began
    )
    assert fleet.node("a").online
    fleet.send(will("a", boot="new", ts=99))
    assert not fleet.node("a").online


def test_out_of_order_messages_never_overwrite_newer_values(fleet: Fleet) -> None:
    fleet.send(
        metrics("a", seq=3, ts=30, epsilon=0.9, p95_ms=5.0, release=2),
        metrics("a", seq=2, ts=20, epsilon=0.4, p95_ms=9.0, release=1),
        online("a", seq=4, ts=40, release=2, profile="x86-64-avx2"),
        online("a", seq=1, ts=10, release=1, profile="old"),  # stale retained status
        metrics("a", seq=5, ts=50, epsilon=None, p95_ms=None),  # unknown never erases
    )
    a = fleet.node("a")
    assert (a.epsilon, a.p95_ms, a.release, a.profile) == (0.9, 5.0, 2, "x86-64-avx2")
    assert a.last_seen == 50


def test_rows_of_an_earlier_boot_sent_after_a_restart_do_not_win(fleet: Fleet) -> None:
    fleet.send(
        online("a", seq=1, ts=200, boot="b2", model_version="2"),
        message(
            "a", "status", {"state": "stopping", "model_version": "1"}, seq=9, ts=150, boot="b1"
        ),
    )
    a = fleet.node("a")
    assert (a.online, a.model_version, a.boot_id) == (True, "2", "b2")


def test_release_events_set_the_release_state(fleet: Fleet) -> None:
    fleet.send(
        online("a", seq=1, ts=1, release=3, model_version="3"),
        message(
            "a",
            "events",
            {"release": 4, "version": "4", "reason": "gate"},
            seq=2,
            ts=2,
            name="model_rejected",
        ),
    )
    a = fleet.node("a")
    assert (a.release, a.release_state) == (3, "rejected")  # a rejected release is not active
    fleet.send(
        message(
            "a",
            "events",
            {"release": 4, "version": "4", "to_release": 3, "stage": "gate"},
            seq=3,
            ts=3,
            name="rollback",
        ),
    )
    assert (fleet.node("a").release, fleet.node("a").release_state) == (3, "rollback")


def test_offline_after_silence_unless_the_retained_status_says_online(
    fleet: Fleet, clock: FakeClock
) -> None:
    clock.now = 1000
    fleet.send(
        metrics("quiet", seq=1, ts=990),  # no status seen yet
        online("steady", seq=1, ts=990),
        message("leaving", "status", {"state": "stopping"}, seq=1, ts=990),
        message("gone", "status", {"state": "stopped"}, seq=1, ts=999),
    )
    assert [(n.node, n.online) for n in fleet.collector.nodes()] == [
        ("gone", False),  # a clean stop is offline at once
        ("leaving", True),
        ("quiet", True),
        ("steady", True),
    ]
    clock.now = 990 + 61  # offline_after_s = 60
    online_now = {n.node: n.online for n in fleet.collector.nodes()}
    assert online_now == {"gone": False, "leaving": False, "quiet": False, "steady": True}


def test_duplicates_are_dropped_and_counted(fleet: Fleet) -> None:
    tick = message("a", "events", {"i": 1}, seq=1, ts=1, name="tick")
    assert fleet.send(tick, tick, will("a"), will("a")) == [STORED, DUPLICATE, STORED, DUPLICATE]
    assert len(fleet.collector.events()) == 1
    assert fleet.collector.stats()[DUPLICATE] == 2


def test_a_restarted_collector_does_not_double_count(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "fleet.sqlite"
    msgs = [message("a", "events", {"i": i}, seq=i, ts=i, name="tick") for i in range(1, 6)]
    first = Fleet(db, clock)
    assert first.send(*msgs[:3]) == [STORED] * 3
    first.collector.stop()
    second = Fleet(db, clock)  # the broker re-delivers what it had not seen acknowledged
    try:
        assert second.send(*msgs) == [DUPLICATE] * 3 + [STORED] * 2
        assert [e.fields["i"] for e in second.collector.events()] == [1, 2, 3, 4, 5]
        assert second.node("a").last_seen == 5
    finally:
        second.collector.stop()


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("edgeai/v1/unit/nodes/a/status", b"not json"),
        ("edgeai/v1/unit/nodes/a/status", b"[1, 2]"),
        ("edgeai/v1/unit/nodes/a/status", b'{"schema": 2}'),
        ("edgeai/v1/unit/nodes/a/bogus", b"{}"),
        ("edgeai/v1/other/nodes/a/status", Envelope("a", "b", 1, 1.0, {}).encode()),
        ("edgeai/v1/unit/nodes/b/status", Envelope("a", "b", 1, 1.0, {}).encode()),  # spoofed
        (
            "edgeai/v1/unit/nodes/a/telemetry",
            b'{"schema":1,"node":"a","boot_id":"b","seq":1,"ts":1,"body":{"x":NaN}}',
        ),
        ("edgeai/v1/unit/releases/rpi5", b"\xff\xfe"),
    ],
)
def test_garbage_is_counted_and_dropped(fleet: Fleet, topic: str, payload: bytes) -> None:
    assert fleet.collector.handle(topic, payload) == INVALID
    assert fleet.collector.stats()[INVALID] == 1
    assert fleet.collector.nodes() == []


def test_commands_and_cleared_retained_topics_are_ignored(fleet: Fleet) -> None:
    cmd = NodeTopics(FLEET, "a").cmd("reload")
    assert fleet.send((cmd, b'{"x": 1}'), (NodeTopics(FLEET, "a").status, b"")) == [IGNORED] * 2
    assert fleet.collector.nodes() == []


def test_wrongly_typed_fields_are_ignored_not_fatal(fleet: Fleet) -> None:
    fleet.send(
        online("a", seq=1, ts=1, profile=["x"], release="three", model_version=7),
        metrics("a", seq=2, ts=2, epsilon="big", p95_ms=True, release=2.0),
    )
    a = fleet.node("a")
    assert (a.profile, a.release, a.model_version, a.epsilon, a.p95_ms) == (
        None,
        2,
        None,
        None,
        None,
    )


def test_release_announcements_are_kept_per_profile(fleet: Fleet) -> None:
    topic = release_topic(FLEET, "rpi5")
    env = Envelope("server", "s", 1, 5.0, {"release": 4, "version": "2"}).encode()
    assert fleet.send((topic, env), (topic, b'{"release": 5}')) == [STORED, STORED]
    assert fleet.collector.releases() == {"rpi5": {"release": 5}}


def test_history_is_bounded(tmp_path: Path, clock: FakeClock) -> None:
    f = Fleet(tmp_path / "f.sqlite", clock, prune_every=5, max_history_rows=10, history_days=1)
    try:
        f.send(*[metrics("a", seq=i, ts=i, p95_ms=float(i)) for i in range(1, 31)])
        assert f.collector.history_rows() <= 10
        assert f.node("a").p95_ms == 30.0  # the record is kept whatever the history holds
        clock.now += 2 * 86_400
        f.send(metrics("a", seq=31, ts=31))
        f.send(*[metrics("a", seq=i, ts=i) for i in range(32, 36)])  # the 5th prunes
        assert f.collector.history_rows() == 5  # only the row received after the jump
    finally:
        f.collector.stop()


def test_metrics_endpoint_serves_node_gauges_and_counters(fleet: Fleet) -> None:
    fleet.send(
        online("a", seq=1, ts=100, profile="rpi5", release=3),
        metrics("a", seq=2, ts=101, epsilon=1.5, p95_ms=20.0),
        ("edgeai/v1/unit/nodes/a/status", b"junk"),
    )
    server = fleet.collector.serve_metrics("127.0.0.1", 0)
    with urllib.request.urlopen(server.url, timeout=5) as resp:  # noqa: S310 - loopback http
        text = resp.read().decode()
    assert 'edgeai_fleet_node_online{node="a",profile="rpi5"} 1.0' in text
    assert 'edgeai_fleet_node_release{node="a"} 3.0' in text
    assert 'edgeai_fleet_node_epsilon{node="a"} 1.5' in text
    assert 'edgeai_fleet_node_inference_p95_seconds{node="a"} 0.02' in text
    assert 'edgeai_fleet_node_last_seen_timestamp_seconds{node="a"} 101.0' in text
    assert 'edgeai_collector_messages_total{kind="status"} 1.0' in text
    assert "edgeai_collector_invalid_total 1.0" in text
    server.close()


def test_the_collector_is_a_fleet_view(fleet: Fleet) -> None:
    view: FleetView = fleet.collector
    assert view.nodes() == []


def test_readonly_view_reads_a_live_database(fleet: Fleet, tmp_path: Path) -> None:
    fleet.send(online("b", seq=1, ts=1000), online("a", seq=1, ts=1000))
    with open_readonly(tmp_path / "fleet.sqlite", offline_after_s=60) as reader:
        assert [n.node for n in reader.nodes()] == ["a", "b"]
        assert reader.events() == []


def test_readonly_refuses_missing_corrupt_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no collector database"):
        open_readonly(tmp_path / "missing.sqlite")
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a collector database"):
        open_readonly(bad)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a collector database"):
        open_readonly(other)


def test_config_rejects_bad_urls_and_inconsistent_tls() -> None:
    with pytest.raises(ValueError, match="mqtt://HOST"):
        CollectorConfig(broker_url="http://x")
    with pytest.raises(ValueError, match="not mqtts"):
        CollectorConfig(broker_url="mqtt://x", ca_file=Path("ca.pem"))
    opts = CollectorConfig(broker_url="mqtts://broker", fleet="f1").mqtt_options()
    assert (opts.port, opts.tls, opts.client_id) == (8883, True, "edgeai-collector-f1")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
_level = st.sampled_from(["a", "b", "+", "", "status", "telemetry", "events", "x/y", "releases"])
_topics = st.one_of(
    st.sampled_from(
        [
            "edgeai/v1/unit/nodes/a/status",
            "edgeai/v1/unit/nodes/a/telemetry",
            "edgeai/v1/unit/nodes/a/profile",
            "edgeai/v1/unit/nodes/a/events/round_joined",
            "edgeai/v1/unit/nodes/a/events/model_applied",
            "edgeai/v1/unit/releases/rpi5",
        ]
    ),
    st.lists(_level, min_size=1, max_size=6).map(lambda ls: "edgeai/v1/unit/" + "/".join(ls)),
    st.text(max_size=30),
)
_envelopes = st.fixed_dictionaries(
    {
        "schema": st.sampled_from([1, 1, 1, 2, "1"]),
        "node": st.sampled_from(["a", "b", "", 3]),
        "boot_id": st.sampled_from(["b1", "b2", ""]),
        "seq": st.integers(-2, 5) | st.floats() | st.none(),
        "ts": st.floats() | st.integers(-5, 5) | st.text(max_size=3),
        "body": st.dictionaries(
            st.sampled_from(["state", "metrics", "epsilon", "round", "release", "profile", "name"]),
            _json | st.fixed_dictionaries({"epsilon": _json, "p95_ms": _json, "release": _json}),
        )
        | _json,
    }
).map(lambda d: json.dumps(d).encode())
_payloads = _envelopes | st.binary(max_size=40) | _json.map(lambda j: json.dumps(j).encode())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_topics, _payloads), max_size=8))
def test_fuzzed_messages_never_crash_and_every_one_is_accounted(
    tmp_path_factory: pytest.TempPathFactory, msgs: list[tuple[str, bytes]]
) -> None:
    f = Fleet(tmp_path_factory.mktemp("fuzz") / "f.sqlite", FakeClock(1_000.0))
    try:
        outcomes = f.send(*msgs)
        assert "error" not in outcomes
        assert sum(f.collector.stats().values()) == len(msgs)
        for n in f.collector.nodes():  # the view stays well-typed whatever came in
            assert isinstance(n.online, bool)
            assert n.epsilon is None or isinstance(n.epsilon, float)
            assert n.release is None or isinstance(n.release, int)
            json.dumps(n.as_json(), allow_nan=False)
    finally:
        f.collector.stop()


def test_a_registry_serves_one_collector_at_a_time(tmp_path: Path, clock: FakeClock) -> None:
    registry = CollectorRegistry()
    config = CollectorConfig(fleet=FLEET, db_path=tmp_path / "r.sqlite")
    first = Collector(config, MemorySubscriber(), clock, registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Collector(config, MemorySubscriber(), clock, registry=registry)
    first.stop()  # unregisters its metrics
    Collector(config, MemorySubscriber(), clock, registry=registry).stop()


# The DDL of collector files from before PRAGMA application_id/user_version.
_OLD_COLLECTOR = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (node TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    name TEXT,
    body TEXT NOT NULL,
    received REAL NOT NULL,
    UNIQUE (node, boot_id, seq)
);
CREATE INDEX IF NOT EXISTS history_by_kind_ts ON history (kind, ts);
CREATE INDEX IF NOT EXISTS history_by_received ON history (received);
CREATE TABLE IF NOT EXISTS releases (
    profile TEXT PRIMARY KEY, body TEXT NOT NULL, received REAL NOT NULL
);
"""


def _old_collector_file(path: Path, application: str, schema: str) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(_OLD_COLLECTOR)
        db.execute(
            "INSERT INTO meta VALUES ('application', ?), ('schema', ?)", (application, schema)
        )
        db.execute("INSERT INTO releases VALUES ('rpi5', '{\"release\": 3}', 1.0)")
        db.execute(
            "INSERT INTO history (node, boot_id, seq, ts, kind, name, body, received) "
            "VALUES ('n1', 'b', 1, 5.0, 'events', 'update_applied', '{}', 6.0)"
        )


def test_a_collector_file_from_before_user_version_opens_read_only_and_read_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "fleet.sqlite"
    _old_collector_file(path, "edgeai-collector", "1")
    with open_readonly(path) as reader:  # fleet status before the server was upgraded
        assert [e.node for e in reader.events()] == ["n1"]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA application_id").fetchone() == (0,)
    store = Store(path)
    assert store.releases() == {"rpi5": {"release": 3}}
    assert [e.kind for e in store.events()] == ["update_applied"]
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA application_id").fetchone() == (int.from_bytes(b"eaFC", "big"),)
        assert db.execute("PRAGMA user_version").fetchone() == (1,)


def test_old_collector_files_of_another_app_or_a_newer_schema_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    _old_collector_file(other, "something-else", "1")
    with pytest.raises(StoreError, match="not a collector database"):
        Store(other)
    newer = tmp_path / "newer.sqlite"
    _old_collector_file(newer, "edgeai-collector", "2")
    with pytest.raises(StoreError, match=r"newer\.sqlite.*upgrade edgeai"):
        Store(newer)
