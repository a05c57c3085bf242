"""Telemetry against the in-memory transport: pumping, acks, outages, restarts, the bound."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeai.configfile import parse
from edgeai.errors import ConfigError
from edgeai.telemetry import MemoryTransport, Telemetry, TelemetryConfig, decode
from tests.support.waiting import wait_for


@pytest.fixture
def config(tmp_path: Path) -> TelemetryConfig:
    return TelemetryConfig(
        fleet="f1", outbox_path=tmp_path / "outbox.db", metrics_interval_s=0, transport_window=8
    )


@pytest.fixture
def made() -> Iterator[list[Telemetry]]:
    """Telemetry objects a test creates; stopped at the end even when it fails."""
    made: list[Telemetry] = []
    yield made
    for t in made:
        t.stop(flush_timeout_s=0)


def telemetry(
    made: list[Telemetry], config: TelemetryConfig, transport: MemoryTransport, **kw: Any
) -> Telemetry:
    t = Telemetry(config, "node-1", transport=transport, clock=lambda: 1000.0, **kw)
    made.append(t)
    return t


def bodies(transport: MemoryTransport, suffix: str = "") -> list[dict[str, Any]]:
    return [decode(m.payload).body for m in transport.received if m.topic.endswith(suffix)]


def test_events_are_delivered_in_order_and_deleted(
    config: TelemetryConfig, made: list[Telemetry]
) -> None:
    link = MemoryTransport()
    t = telemetry(made, config, link)
    t.start()
    t.status("online", version="1")
    t.profile({"name": "x86-64-avx2"})
    seqs = [t.event("tick", i=i) for i in range(20)]
    t.metrics({"cpu": 0.5})
    wait_for(lambda: t.stats()["queued"] == 0)
    assert seqs == list(range(3, 23))
    envs = [decode(m.payload) for m in link.received]
    assert [e.seq for e in envs] == list(range(1, 24))
    assert {e.boot_id for e in envs} == {t.boot_id}
    assert {e.node for e in envs} == {"node-1"}
    assert [b["i"] for b in bodies(link, "/events/tick")] == list(range(20))
    status, profile = link.received[0], link.received[1]
    assert (status.topic, status.retain, status.qos) == (
        "edgeai/v1/f1/nodes/node-1/status",
        True,
        1,
    )
    assert decode(status.payload).body == {"state": "online", "version": "1"}
    assert profile.retain
    assert not link.received[2].retain
    (report,) = bodies(link, "/telemetry")
    assert report["metrics"] == {"cpu": 0.5}
    assert report["outbox"]["dropped"] == 0
    assert 0 <= report["outbox"]["queued"] <= 23  # the pump runs concurrently
    stats = t.stats()
    assert (stats["delivered"], stats["dropped"], stats["connected"]) == (23, 0, True)
    assert t.stop(flush_timeout_s=5)
    assert bodies(link, "/status")[-1] == {"state": "stopped"}
    assert link.will is not None
    will = decode(link.will.payload)
    assert (link.will.topic, link.will.retain, will.seq, will.body) == (
        "edgeai/v1/f1/nodes/node-1/status",
        True,
        0,
        {"state": "offline"},
    )
    assert not [th for th in threading.enumerate() if th.name.startswith("edgeai-telemetry")]


def test_the_window_caps_what_the_transport_holds(
    config: TelemetryConfig, made: list[Telemetry]
) -> None:
    link = MemoryTransport(auto_ack=False)
    t = telemetry(made, config, link)
    t.start()
    for i in range(30):
        t.event("e", i=i)
    wait_for(lambda: len(link.received) == 8)
    time.sleep(0.05)  # give a buggy pump the chance to overfill
    assert link.unacked == 8
    delivered = 0
    while delivered < 30:
        wait_for(lambda: link.unacked > 0)
        delivered += link.ack()
    wait_for(lambda: t.stats()["queued"] == 0)
    assert [b["i"] for b in bodies(link)] == list(range(30))


def test_outage_queues_and_reconnect_delivers_and_restates_status(
    config: TelemetryConfig, made: list[Telemetry]
) -> None:
    link = MemoryTransport(reachable=False)
    t = telemetry(made, config, link)
    t.start()
    t.status("online")
    for i in range(50):
        t.event("e", i=i)
    assert t.stats()["queued"] == 51
    assert not t.stats()["connected"]
    link.set_reachable(True)
    wait_for(lambda: t.stats()["queued"] == 0)
    link.set_reachable(False)
    link.set_reachable(True)  # a reconnect: the broker may have published the will
    wait_for(lambda: len(bodies(link, "/status")) == 2)
    assert bodies(link, "/status") == [{"state": "online"}, {"state": "online"}]
    assert [b["i"] for b in bodies(link, "/events/e")] == list(range(50))


def test_unflushed_rows_survive_stop_and_go_out_first_next_boot(
    config: TelemetryConfig, made: list[Telemetry]
) -> None:
    down = MemoryTransport(reachable=False)
    first = telemetry(made, config, down)
    first.start()
    for i in range(5):
        first.event("e", i=i)
    t0 = time.monotonic()
    assert not first.stop(flush_timeout_s=0.2)  # nothing could be delivered
    assert time.monotonic() - t0 < 3
    assert down.received == []
    link = MemoryTransport()
    second = telemetry(made, config, link)
    second.start()
    second.event("e", i=100)
    wait_for(lambda: second.stats()["queued"] == 0)
    envs = [decode(m.payload) for m in link.received]
    old = [e for e in envs if e.boot_id == first.boot_id]
    assert [e.body.get("i") for e in old] == [0, 1, 2, 3, 4, None]  # None: the "stopped" status
    assert old[-1].body == {"state": "stopped"}
    assert envs[-1].boot_id == second.boot_id
    assert envs[-1].body == {"i": 100}
    assert (envs[-1].seq, second.boot_id != first.boot_id) == (1, True)


def test_a_burst_of_events_is_one_call_and_arrives_in_order(
    config: TelemetryConfig, made: list[Telemetry]
) -> None:
    link = MemoryTransport()
    t = telemetry(made, config, link)
    t.start()
    t.event("e", i=-1)
    assert t.events("e", ({"i": i} for i in range(30))) == list(range(2, 32))
    wait_for(lambda: t.stats()["queued"] == 0)
    envs = [decode(m.payload) for m in link.received]
    assert [e.body["i"] for e in envs] == list(range(-1, 30))
    assert [e.seq for e in envs] == list(range(1, 32))
    assert {m.topic for m in link.received} == {"edgeai/v1/f1/nodes/node-1/events/e"}


def test_flush_waits_for_the_acks(config: TelemetryConfig, made: list[Telemetry]) -> None:
    link = MemoryTransport(auto_ack=False)
    t = telemetry(made, config, link)
    t.start()
    for i in range(20):  # more than the window of 8: the pump tops it up as acks arrive
        t.event("e", i=i)
    assert not t.flush(0.05)
    assert t.stats()["queued"] == 20
    done = threading.Event()

    def broker_acks() -> None:
        while not done.wait(0.005):
            link.ack()

    acker = threading.Thread(target=broker_acks)
    acker.start()
    try:
        assert t.flush(5)
    finally:
        done.set()
        acker.join()
    assert t.stats()["queued"] == 0
    assert [b["i"] for b in bodies(link)] == list(range(20))


def test_unflushed_stop_asks_the_broker_for_the_will(
    config: TelemetryConfig, made: list[Telemetry]
) -> None:
    link = MemoryTransport(auto_ack=False)
    t = telemetry(made, config, link)
    t.start()
    t.event("e")
    assert not t.stop(flush_timeout_s=0.1)
    assert decode(link.received[-1].payload).body == {"state": "offline"}


def test_rejected_messages_are_counted_and_not_retried(
    config: TelemetryConfig, made: list[Telemetry]
) -> None:
    link = MemoryTransport(reason=135)
    t = telemetry(made, config, link)
    t.start()
    t.event("e")
    wait_for(lambda: t.stats()["rejected"] == 1)
    assert t.stats()["queued"] == 0
    assert t.stats()["delivered"] == 0


def test_overflow_is_counted_and_reported_in_metrics(tmp_path: Path, made: list[Telemetry]) -> None:
    config = TelemetryConfig(
        outbox_path=tmp_path / "o.db", outbox_max_messages=10, metrics_interval_s=0
    )
    link = MemoryTransport(reachable=False)
    t = telemetry(made, config, link)
    t.start()
    for i in range(25):
        t.event("e", i=i)
    assert t.stats()["dropped"] == 15
    t.metrics({})
    assert t.stats()["dropped"] == 16  # the metrics row itself pushed one more out
    link.set_reachable(True)
    wait_for(lambda: t.stats()["queued"] == 0)
    assert [b["i"] for b in bodies(link, "/events/e")] == list(range(16, 25))
    assert bodies(link, "/telemetry") == [{"metrics": {}, "outbox": {"queued": 10, "dropped": 15}}]


def test_periodic_metrics_report_the_outbox(tmp_path: Path, made: list[Telemetry]) -> None:
    config = TelemetryConfig(outbox_path=tmp_path / "o.db", metrics_interval_s=0.05)
    link = MemoryTransport()
    t = telemetry(made, config, link)
    t.start()
    wait_for(lambda: len(bodies(link, "/telemetry")) >= 2)
    assert bodies(link, "/telemetry")[0]["outbox"]["dropped"] == 0


def test_stop_without_start_keeps_rows(config: TelemetryConfig) -> None:
    t = Telemetry(config, "node-1", transport=MemoryTransport())
    t.event("e")
    assert not t.stop()
    assert not t.stop()  # idempotent


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"broker_url": "http://x"}, "mqtt://"),
        ({"broker_url": "mqtt://"}, "mqtt://"),
        ({"broker_url": "mqtt://h:99999"}, "port"),
        ({"fleet": "a/b"}, "fleet"),
        ({"fleet": "#"}, "fleet"),
        ({"ca_file": "/ca.pem"}, "mqtts://"),
        ({"broker_url": "mqtts://h", "keyfile": "/k.pem"}, "certfile"),
        ({"password": "x"}, "username"),
        ({"outbox_max_messages": 0}, "outbox_max_messages"),
        ({"brokerurl": "mqtt://h"}, "did you mean 'broker_url'"),
    ],
)
def test_config_errors_name_the_field_and_fix(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(TelemetryConfig, data, "agent.toml")


def test_config_urls_map_to_transport_options() -> None:
    plain = TelemetryConfig(broker_url="mqtt://broker.local").mqtt_options("c")
    assert (plain.host, plain.port, plain.tls) == ("broker.local", 1883, False)
    tls = TelemetryConfig(
        broker_url="mqtts://10.0.0.1",
        ca_file=Path("/ca.pem"),
        certfile=Path("/c.pem"),
        username="u",
    ).mqtt_options("c")
    assert (tls.port, tls.tls, tls.ca_file, tls.username) == (8883, True, "/ca.pem", "u")
    assert TelemetryConfig(broker_url="mqtt://h:1999").mqtt_options("c").port == 1999
