"""Scale-out pieces without a broker: shared filters, two stores on one file, ACL, replicas."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgeai.errors import ConfigError
from edgeai.server.broker import render_acl
from edgeai.server.collector import CollectorConfig
from edgeai.server.collector.replica import PASSWORD_ENV, replica_config
from edgeai.server.collector.store import Store
from edgeai.telemetry.topics import Envelope, parse_topic


def test_shared_group_shares_the_volume_topics_and_keeps_retained_ones_plain() -> None:
    cfg = CollectorConfig(fleet="f", shared_group="collectors")
    assert cfg.filters == (
        "$share/collectors/edgeai/v1/f/nodes/+/telemetry",
        "$share/collectors/edgeai/v1/f/nodes/+/events/+",
        "edgeai/v1/f/nodes/+/status",
        "edgeai/v1/f/nodes/+/profile",
        "edgeai/v1/f/releases/+",
    )
    assert CollectorConfig(fleet="f").filters == ("edgeai/v1/f/nodes/+/#", "edgeai/v1/f/releases/+")
    for bad in ("a/b", "+", "#", ""):
        with pytest.raises(ValidationError):
            CollectorConfig(shared_group=bad)


def event(node: str, seq: int, ts: float) -> tuple[object, Envelope]:
    topic = parse_topic(f"edgeai/v1/f/nodes/{node}/events/tick")
    return topic, Envelope(node, "boot", seq, ts, {"i": seq})


def test_two_shared_stores_on_one_file_fold_each_others_messages(tmp_path: Path) -> None:
    db = tmp_path / "fleet.sqlite"
    a, b = Store(db, shared=True), Store(db, shared=True)
    try:
        assert a.ingest(*event("n", 1, 10.0), received=0.0)  # type: ignore[arg-type]
        assert b.ingest(*event("n", 2, 30.0), received=0.0)  # type: ignore[arg-type]
        assert a.ingest(*event("n", 3, 20.0), received=0.0)  # type: ignore[arg-type]
        assert not b.ingest(*event("n", 3, 20.0), received=0.0)  # type: ignore[arg-type]
        # a's cache would say 20.0 (it never saw seq 2); the file says 30.0, and so must a.
        assert [r.last_seen for r in a.records()] == [30.0]
        assert [r.last_seen for r in b.records()] == [30.0]
        assert a.history_rows() == 3
    finally:
        a.close()
        b.close()


def test_unshared_store_keeps_its_cache(tmp_path: Path) -> None:
    # Documents why a replica refuses to run without shared_group: a plain store reads its cache.
    db = tmp_path / "fleet.sqlite"
    a, b = Store(db), Store(db)
    try:
        a.ingest(*event("n", 1, 10.0), received=0.0)  # type: ignore[arg-type]
        b.ingest(*event("n", 2, 30.0), received=0.0)  # type: ignore[arg-type]
        assert [r.last_seen for r in a.records()] == [10.0]
    finally:
        a.close()
        b.close()


def test_acl_gives_collector_replicas_read_only_accounts() -> None:
    acl = render_acl("f", "srv", ["srv-c2", "srv-c3"])
    assert acl.startswith(render_acl("f", "srv"))
    tail = acl[len(render_acl("f", "srv")) :].splitlines()
    assert [ln for ln in tail if ln and not ln.startswith("#")] == [
        "user srv-c2",
        "topic read edgeai/v1/f/#",
        "user srv-c3",
        "topic read edgeai/v1/f/#",
    ]
    with pytest.raises(ValueError, match="user"):
        render_acl("f", "srv", ["bad user"])


def test_replica_config_needs_a_group_and_its_own_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = CollectorConfig(username="srv", password="server-pw", shared_group="g")  # noqa: S106
    with pytest.raises(ConfigError, match="shared_group"):
        replica_config(CollectorConfig(username="srv", password="x"), "srv-c2")  # noqa: S106
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(ConfigError, match="no password"):
        replica_config(base, "srv-c2")
    pw = tmp_path / "pw"
    pw.write_text("c2-pw\n")
    cfg = replica_config(base, "srv-c2", pw)
    assert (cfg.username, cfg.password, cfg.shared_group) == ("srv-c2", "c2-pw", "g")
    monkeypatch.setenv(PASSWORD_ENV, "env-pw")
    assert replica_config(base, "srv-c3").password == "env-pw"  # noqa: S105
    assert replica_config(base).username == "srv"
