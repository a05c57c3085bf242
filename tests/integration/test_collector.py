"""The collector against a real Mosquitto and the real agent-side ``Telemetry`` publisher.

Nodes appear with their profile, version, ε and p95; a SIGKILLed agent goes offline through
its last will; a collector stopped while agents publish, then restarted, misses nothing and
counts nothing twice (persistent session + unique index); a broker restart loses nothing;
``edgeai fleet status --json`` in another process prints the rows.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry

from edgeai.profiles import load_profile
from edgeai.server.collector import DUPLICATE, Collector, CollectorConfig
from edgeai.telemetry import Envelope, NodeTopics, Telemetry, TelemetryConfig
from tests.mosquitto import Mosquitto
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FLEET = "it"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as b:
        yield b


class Harness:
    """Collectors and in-process agents on one broker; everything started is stopped."""

    def __init__(self, broker: Mosquitto, root: Path) -> None:
        self.broker, self.root = broker, root
        self.db = root / "collector" / "fleet.sqlite"
        self.collectors: list[Collector] = []
        self.agents: list[Telemetry] = []

    def collector(self) -> Collector:
        config = CollectorConfig(
            broker_url=self.broker.url,
            fleet=FLEET,
            client_id="collector-under-test",  # stable: the broker keeps its session
            db_path=self.db,
            keepalive_s=5,
            session_expiry_s=600,
            reconnect_min_s=1,
            reconnect_max_s=1,
        )
        c = Collector(config, registry=CollectorRegistry())
        self.collectors.append(c)
        c.start()
        assert c.wait_ready(10), "collector did not subscribe"
        return c

    def agent(self, node: str) -> Telemetry:
        config = TelemetryConfig(
            broker_url=self.broker.url,
            fleet=FLEET,
            outbox_path=self.root / f"{node}-outbox.sqlite",
            metrics_interval_s=0,
            keepalive_s=5,
            reconnect_min_s=1,
            reconnect_max_s=1,
        )
        t = Telemetry(config, node)
        self.agents.append(t)
        t.start()
        return t

    def close(self) -> None:
        for t in self.agents:
            t.stop(flush_timeout_s=1)
        for c in self.collectors:
            c.stop()


@pytest.fixture
def fleet(broker: Mosquitto, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(broker, tmp_path)
    yield h
    h.close()


def ticks(collector: Collector) -> list[int]:
    return [e.fields["i"] for e in collector.events(kinds=["tick"])]


def drained(agent: Telemetry) -> Callable[[], bool]:
    return lambda: agent.stats()["queued"] == 0


def fleet_status_json(db: Path) -> list[dict[str, Any]]:
    code = "from edgeai.fleet.cli import app; app(prog_name='edgeai fleet')"
    out = subprocess.run(
        [sys.executable, "-c", code, "status", "--json", "--db", str(db)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def test_nodes_appear_with_profile_version_epsilon_and_p95(fleet: Harness) -> None:
    collector = fleet.collector()
    metrics_server = collector.serve_metrics("127.0.0.1", 0)
    for node, profile, eps, p95 in (("a", "x86-64-avx2", 0.8, 3.5), ("b", "rpi5", 1.6, 21.0)):
        t = fleet.agent(node)
        t.profile(load_profile(profile).model_dump(mode="json"))
        t.status("online", profile=profile, model_version="7", release=2, grpc_port=1, http_port=2)
        t.event("round_joined", run_id=1, round=3, epsilon=eps, delta=1e-5)
        t.metrics({"epsilon": eps, "delta": 1e-5, "p95_ms": p95, "model_version": "7"})

    def complete() -> bool:
        return [(n.node, n.p95_ms is not None) for n in collector.nodes()] == [
            ("a", True),
            ("b", True),
        ]

    wait_for(complete, 15, "both nodes with their metrics")
    rows = {r["node"]: r for r in fleet_status_json(fleet.db)}  # another process, WAL reader
    a, b = rows["a"], rows["b"]
    assert (a["profile"], a["online"], a["model_version"], a["release"]) == (
        "x86-64-avx2",
        True,
        "7",
        2,
    )
    assert (a["epsilon"], a["p95_ms"], a["last_round"]) == (0.8, 3.5, 3)
    assert (b["profile"], b["epsilon"], b["p95_ms"]) == ("rpi5", 1.6, 21.0)
    with urllib.request.urlopen(metrics_server.url, timeout=5) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    assert 'edgeai_fleet_node_online{node="b",profile="rpi5"} 1.0' in text
    assert collector.stats()[DUPLICATE] == 0

    fleet.agents[0].stop()  # a clean stop: retained "stopped"
    wait_for(lambda: not collector.nodes()[0].online, 10, "node a to go offline after stop")
    assert collector.nodes()[1].online


_AGENT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from edgeai.telemetry import Telemetry, TelemetryConfig
    url, fleet, node, outbox = sys.argv[1:5]
    t = Telemetry(TelemetryConfig(broker_url=url, fleet=fleet, outbox_path=Path(outbox),
                                  metrics_interval_s=0, keepalive_s=5), node)
    t.start()
    t.status("online", profile="rpi5")
    while t.stats()["delivered"] < 1:
        time.sleep(0.01)
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_sigkilled_agent_goes_offline_through_its_last_will(fleet: Harness, tmp_path: Path) -> None:
    collector = fleet.collector()
    args = [fleet.broker.url, FLEET, "k", str(tmp_path / "k.sqlite")]
    proc = subprocess.Popen(
        [sys.executable, "-c", _AGENT, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        wait_for(lambda: [n.online for n in collector.nodes()] == [True], 10, "node k online")
        proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker publishes the will
        proc.wait(10)
        wait_for(lambda: not collector.nodes()[0].online, 10, "the last will")
        assert collector.nodes()[0].profile == "rpi5"
        assert [r["online"] for r in fleet_status_json(fleet.db) if r["node"] == "k"] == [False]
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def test_collector_restart_loses_nothing_and_counts_nothing_twice(fleet: Harness) -> None:
    first = fleet.collector()
    agent = fleet.agent("a")
    seqs = {i: agent.event("tick", i=i) for i in range(10)}
    wait_for(lambda: len(ticks(first)) == 10, 15, "the first 10 ticks")
    first.stop()  # DISCONNECT: the broker keeps the session and queues for it

    seqs |= {i: agent.event("tick", i=i) for i in range(10, 30)}
    wait_for(drained(agent), 15, "the broker to take the ticks sent while no collector ran")
    second = fleet.collector()
    wait_for(lambda: len(ticks(second)) >= 30, 15, "the 20 ticks queued on the broker")

    # A QoS 1 re-delivery of an already stored message (same node, boot, seq).
    again = Envelope("a", agent.boot_id, seqs[5], time.time(), {"i": 5}).encode()
    pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.connect(fleet.broker.host, fleet.broker.port)
    pub.loop_start()
    try:
        pub.publish(NodeTopics(FLEET, "a").event("tick"), again, qos=1).wait_for_publish(10)
    finally:
        pub.disconnect()
        pub.loop_stop()
    wait_for(lambda: second.stats()[DUPLICATE] >= 1, 10, "the duplicate to arrive")
    assert ticks(second) == list(range(30))


def test_broker_restart_loses_nothing(fleet: Harness) -> None:
    collector = fleet.collector()
    agent = fleet.agent("a")
    agent.status("online")
    for i in range(10):
        agent.event("tick", i=i)
    wait_for(lambda: len(ticks(collector)) == 10, 15, "the first 10 ticks")

    fleet.broker.stop()  # SIGTERM: Mosquitto saves sessions and retained messages
    for i in range(10, 20):
        agent.event("tick", i=i)  # durable in the agent's outbox meanwhile
    fleet.broker.start()
    wait_for(lambda: len(ticks(collector)) >= 20, 20, "the ticks sent while the broker was down")

    # The collector's session (and what it queues) must outlive a broker restart too.
    collector.stop()
    for i in range(20, 25):
        agent.event("tick", i=i)
    wait_for(drained(agent), 15, "the broker to take the ticks sent while no collector ran")
    fleet.broker.restart()
    second = fleet.collector()
    wait_for(lambda: len(ticks(second)) >= 25, 15, "ticks queued across the broker restart")
    assert ticks(second) == list(range(25))
    # The broker published the agent's will when it went down; the agent said "online"
    # again on reconnect, so the node ends online.
    wait_for(lambda: second.nodes()[0].online, 10, "node a back online")


def test_collector_logs_in_and_a_wrong_password_never_subscribes(tmp_path: Path) -> None:
    users = {"server": "s3cret", "a": "pw-a"}  # throwaway credentials of a test broker
    with Mosquitto(tmp_path / "broker", users=users) as broker:
        base = {
            "broker_url": broker.url,
            "fleet": FLEET,
            "reconnect_min_s": 1,
            "reconnect_max_s": 1,
        }
        wrong = Collector(
            CollectorConfig(
                **base, username="server", password=users["a"], db_path=tmp_path / "w.db"
            ),
            registry=CollectorRegistry(),
        )
        right = Collector(
            CollectorConfig(
                **base, username="server", password=users["server"], db_path=tmp_path / "r.db"
            ),
            registry=CollectorRegistry(),
        )
        agent = Telemetry(
            TelemetryConfig(
                broker_url=broker.url,
                fleet=FLEET,
                username="a",
                password=users["a"],
                outbox_path=tmp_path / "a.sqlite",
                metrics_interval_s=0,
            ),
            "a",
        )
        try:
            wrong.start()
            right.start()
            assert right.wait_ready(10)
            agent.start()
            agent.status("online", profile="rpi5")
            wait_for(lambda: [n.profile for n in right.nodes()] == ["rpi5"], 10, "node a")
            assert not wrong.wait_ready(0.5)
            assert wrong.nodes() == []
        finally:
            agent.stop(flush_timeout_s=1)
            wrong.stop()
            right.stop()
