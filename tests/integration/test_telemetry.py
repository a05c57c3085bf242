"""Telemetry against a real Mosquitto on loopback: delivery, retained state, last will,
broker outages and restarts, agent SIGKILLs, and the outbox bound.

A persistent-session subscriber collects everything of the fleet and drops QoS 1
duplicates by (node, boot id, seq) with :class:`edgeai.telemetry.Deduplicator`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeai.telemetry import (
    Deduplicator,
    Envelope,
    MqttOptions,
    Outbox,
    PahoTransport,
    Telemetry,
    TelemetryConfig,
    decode,
    fleet_filter,
)
from tests.mosquitto import Mosquitto
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FLEET = "test"


class Collector:
    """A QoS 1 subscriber with a persistent session that keeps one copy of each message."""

    def __init__(self, broker: Mosquitto, client_id: str | None = None) -> None:
        self.dedup = Deduplicator()
        self.messages: list[tuple[str, Envelope, bool]] = []
        self.duplicates = 0
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"collector-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.broker = broker
        self.client_id = self.client._client_id.decode()

    def start(self) -> Collector:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.subscribed.clear()
        self.client.connect_async(
            self.broker.host, self.broker.port, 5, clean_start=False, properties=props
        )
        self.client.loop_start()
        assert self.subscribed.wait(10), "collector did not subscribe"
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe(fleet_filter(FLEET), qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        env = decode(msg.payload)
        with self._lock:
            if self.dedup.accept(env):
                self.messages.append((msg.topic, env, bool(msg.retain)))
            else:
                self.duplicates += 1

    def ticks(self, boot_id: str | None = None) -> set[int]:
        with self._lock:
            return {
                env.body["i"]
                for topic, env, _ in self.messages
                if topic.endswith("/events/tick") and boot_id in (None, env.boot_id)
            }

    def bodies(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [env.body for topic, env, _ in self.messages if topic.endswith(suffix)]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def collector(broker: Mosquitto) -> Iterator[Collector]:
    c = Collector(broker).start()
    yield c
    c.stop()


def make_config(broker: Mosquitto, tmp_path: Path, **kw: Any) -> TelemetryConfig:
    return TelemetryConfig(
        broker_url=broker.url,
        fleet=FLEET,
        outbox_path=tmp_path / "outbox.db",
        metrics_interval_s=0,
        keepalive_s=5,
        reconnect_min_s=1,
        reconnect_max_s=1,
        **kw,
    )


def agent(broker: Mosquitto, tmp_path: Path, node: str, *args: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tests.integration.telemetry_agent", "--broker-url", broker.url]
    cmd += ["--fleet", FLEET, "--node", node, "--outbox", str(tmp_path / f"{node}.db"), *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def mosquitto_sub(broker: Mosquitto, *args: str) -> list[str]:
    return ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), *args]


def progress(path: Path) -> set[int]:
    if not path.exists():
        return set()
    return {int(line) for line in path.read_text().split("\n") if line.strip()}


def test_everything_arrives_and_retained_state_reaches_a_late_cli_subscriber(
    broker: Mosquitto, collector: Collector, tmp_path: Path
) -> None:
    t = Telemetry(make_config(broker, tmp_path), "node-a")
    base = f"edgeai/v1/{FLEET}/nodes/node-a"
    status_topic, profile_topic = f"{base}/status", f"{base}/profile"
    t.start()
    try:
        t.status("online", model="v1")
        t.profile({"name": "x86-64-avx2", "memory_mb": 4096})
        for i in range(100):
            t.event("tick", i=i)
            if i % 20 == 0:
                t.metrics({"i": i})
        wait_for(lambda: len(collector.ticks()) == 100, 30, "100 events")
        wait_for(lambda: len(collector.bodies("/telemetry")) == 5, 10, "5 metrics")
    finally:
        assert t.stop(flush_timeout_s=10)
    assert collector.ticks() == set(range(100))
    assert [b["metrics"]["i"] for b in collector.bodies("/telemetry")] == [0, 20, 40, 60, 80]
    assert t.stats()["delivered"] == 108  # status, profile, 100 events, 5 metrics, "stopped"
    # A subscriber arriving later still sees the retained status and profile.
    out = subprocess.run(
        mosquitto_sub(
            broker,
            "-V",
            "mqttv5",
            "-v",
            "-C",
            "2",
            "-W",
            "10",
            "-t",
            status_topic,
            "-t",
            profile_topic,
        ),
        capture_output=True,
        text=True,
        timeout=15,
        check=True,
    ).stdout
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert decode(lines[status_topic]).body == {"state": "stopped"}
    assert decode(lines[profile_topic]).body["memory_mb"] == 4096


def test_sigkilled_agent_leaves_its_retained_last_will(
    broker: Mosquitto, collector: Collector, tmp_path: Path
) -> None:
    proc = agent(broker, tmp_path, "node-k", "--count", "5", "--linger")
    try:
        wait_for(lambda: len(collector.ticks()) == 5, 30, "the agent's events")
        assert collector.bodies("/status") == [{"state": "online"}]
        proc.send_signal(signal.SIGKILL)
        wait_for(lambda: len(collector.bodies("/status")) == 2, 15, "the last will")
    finally:
        proc.kill()
        proc.communicate()
    assert collector.bodies("/status")[-1] == {"state": "offline"}
    retained = subprocess.run(
        mosquitto_sub(
            broker, "-C", "1", "-W", "10", "-t", f"edgeai/v1/{FLEET}/nodes/node-k/status"
        ),
        capture_output=True,
        timeout=15,
        check=True,
    ).stdout
    will = decode(retained.strip())
    assert (will.seq, will.body) == (0, {"state": "offline"})


def emit_through_outage(
    broker: Mosquitto, collector: Collector, tmp_path: Path, outage_s: float
) -> None:
    t = Telemetry(make_config(broker, tmp_path), "node-o")
    t.start()
    try:
        for i in range(20):
            t.event("tick", i=i)
        wait_for(lambda: len(collector.ticks()) == 20, 30, "events before the outage")
        broker.stop()
        i, end = 20, time.monotonic() + outage_s
        while time.monotonic() < end:  # the agent keeps emitting, 20 per second
            t.event("tick", i=i)
            i += 1
            time.sleep(0.05)
        assert t.stats()["queued"] >= i - 20 - t.config.transport_window
        assert not t.stats()["connected"]
        broker.start()
        wait_for(lambda: len(collector.ticks()) == i, 60, f"all {i} events after the outage")
    finally:
        assert t.stop(flush_timeout_s=20)
    assert collector.ticks() == set(range(i))
    assert t.stats()["queued"] == 0


@pytest.mark.parametrize("outage_s", [3.0])
def test_broker_outage_loses_nothing(
    broker: Mosquitto, collector: Collector, tmp_path: Path, outage_s: float
) -> None:
    emit_through_outage(broker, collector, tmp_path, outage_s)


@pytest.mark.slow
def test_broker_down_60_s_loses_nothing(
    broker: Mosquitto, collector: Collector, tmp_path: Path
) -> None:
    emit_through_outage(broker, collector, tmp_path, 60.0)


def test_agent_killed_during_outage_delivers_both_boots(
    broker: Mosquitto, collector: Collector, tmp_path: Path
) -> None:
    prog = tmp_path / "progress"
    first = agent(
        broker,
        tmp_path,
        "node-r",
        "--count",
        "100000",
        "--interval",
        "0.01",
        "--progress",
        str(prog),
    )
    try:
        wait_for(lambda: len(collector.ticks()) >= 20, 30, "events before the outage")
        broker.stop()
        n = len(progress(prog))
        wait_for(lambda: len(progress(prog)) >= n + 100, 30, "events enqueued during the outage")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
        first.communicate()
    enqueued = progress(prog)
    boot1 = {env.boot_id for _, env, _ in collector.messages}
    broker.start()
    second = agent(broker, tmp_path, "node-r", "--count", "20", "--start", "1000000")
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err.decode()
    # The outbox is empty once the second run exits 0: everything reached the broker, and
    # reaches the collector (another connection) soon after.
    second_boot = set(range(1_000_000, 1_000_020))
    wait_for(lambda: enqueued | second_boot <= collector.ticks(), 30, "both boots' events")
    ticks = collector.ticks()
    assert enqueued <= ticks
    assert second_boot <= ticks
    boots = {env.boot_id for _, env, _ in collector.messages}
    assert len(boots) == 2
    assert len(boot1) == 1
    first_boot = next(iter(boot1))
    assert max(collector.ticks(first_boot)) >= max(enqueued)  # incl. what the outage held back


def test_broker_restart_keeps_what_it_acknowledged(broker: Mosquitto, tmp_path: Path) -> None:
    late = Collector(broker).start()  # registers a persistent session, then goes away
    late.stop()
    t = Telemetry(make_config(broker, tmp_path), "node-p")
    t.start()
    try:
        for i in range(200):
            t.event("tick", i=i)
        wait_for(lambda: t.stats()["queued"] == 0, 30, "every PUBACK")
        # The outbox has forgotten these 200: only the broker holds them now.
        broker.restart()
        for i in range(200, 300):
            t.event("tick", i=i)
        wait_for(lambda: t.stats()["queued"] == 0, 30, "every PUBACK after the restart")
    finally:
        assert t.stop(flush_timeout_s=10)
    back = Collector(broker, client_id=late.client_id).start()  # the same session
    try:
        wait_for(lambda: len(back.ticks()) == 300, 30, "300 events from the broker's store")
    finally:
        back.stop()
    assert back.ticks() == set(range(300))


def test_overflow_drops_the_oldest_and_metrics_report_it(broker: Mosquitto, tmp_path: Path) -> None:
    broker.stop()  # an outage from the start
    t = Telemetry(make_config(broker, tmp_path, outbox_max_messages=20), "node-b")
    try:
        for i in range(50):  # queued while nothing could be sent
            t.event("tick", i=i)
        t.metrics({"load": 1.0})
        assert t.stats()["dropped"] == 31
        broker.start()
        c = Collector(broker).start()  # subscribed before the node connects
        t.start()
        try:
            wait_for(lambda: len(c.bodies("/telemetry")) == 1, 30, "the metrics message")
            wait_for(lambda: c.ticks() == set(range(31, 50)), 30, "the newest events")
        finally:
            c.stop()
    finally:
        assert t.stop(flush_timeout_s=10)
    (report,) = c.bodies("/telemetry")
    assert report == {"metrics": {"load": 1.0}, "outbox": {"queued": 20, "dropped": 30}}


_WRITER = """
import sys
from edgeai.telemetry.outbox import Outbox
box = Outbox(sys.argv[1], sys.argv[2])
while True:
    seq = box.enqueue("t", b"x" * 100)
    sys.stdout.write(f"{seq}\\n")
    sys.stdout.flush()
"""


@pytest.mark.parametrize("delay_s", [0.3, 0.7, 1.1])
def test_outbox_keeps_every_returned_enqueue_through_sigkill(
    tmp_path: Path, delay_s: float
) -> None:
    path = tmp_path / "o.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), "boot"],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # running and writing: now kill it mid-stream
    assert first.strip() == b"1"
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=10)
    acked = [int(s) for s in (first + out).split()]
    assert len(acked) > 10
    with Outbox(path, "next") as box:
        stored = {r.seq for r in box.pending(10**7) if r.boot_id == "boot"}
    assert set(acked) <= stored
    assert stored <= set(range(1, max(acked) + 2))  # at most the one in flight at the kill


def test_acl_denied_publish_is_rejected_with_reason_135(tmp_path: Path) -> None:
    acl = ["pattern write edgeai/v1/+/nodes/%u/#"]
    secret = uuid.uuid4().hex
    with Mosquitto(tmp_path / "acl-broker", users={"node-x": secret}, acl=acl) as b:
        config = make_config(b, tmp_path, username="node-x", password=secret)
        t = Telemetry(config, "node-y")  # writes under another node's topics: denied
        t.start()
        try:
            t.event("tick", i=0)
            wait_for(lambda: t.stats()["rejected"] >= 1, 15, "a rejected PUBACK")
        finally:
            t.stop(flush_timeout_s=5)
        # Nothing of node-y's can be delivered; rejected rows are not retried forever.
        assert t.stats()["delivered"] == 0


def test_paho_transport_sends_without_waiting_for_select_timeouts(broker: Mosquitto) -> None:
    # PahoTransport skips the wake-up byte when paho's own network thread queues the next
    # message (after a PUBACK).  If that message then waited for paho's 1 s select timeout,
    # 150 messages one at a time on the wire (max_inflight 1) would take ~150 s; and a
    # publish from another thread into an idle loop must still wake it.
    opts = MqttOptions(broker.host, broker.port, f"t-{uuid.uuid4().hex[:8]}", max_inflight=1)
    link = PahoTransport(opts)
    acked: list[int] = []
    up = threading.Event()
    link.set_callbacks(lambda handle, _reason: acked.append(handle), lambda ok: ok and up.set())
    link.connect()
    try:
        assert up.wait(10), "no connection"
        t0 = time.monotonic()
        handles = [link.publish(f"edgeai/v1/{FLEET}/x", b"p", 1, False) for _ in range(150)]
        wait_for(lambda: len(acked) == 150, 60, "150 PUBACKs")
        burst_s = time.monotonic() - t0
        t0 = time.monotonic()
        for _ in range(10):  # the loop is idle in select now: each publish must wake it
            handles.append(link.publish(f"edgeai/v1/{FLEET}/x", b"p", 1, False))
            wait_for(lambda: acked[-1] == handles[-1], 10, "the PUBACK")
        one_by_one_s = time.monotonic() - t0
    finally:
        link.disconnect()
    assert acked == handles  # in order, each once
    assert burst_s < 30, f"150 sequential publishes took {burst_s:.1f} s: lost wake-ups"
    assert one_by_one_s < 8, f"10 idle publishes took {one_by_one_s:.1f} s: lost wake-ups"


def test_paho_transport_bursts_arrive_intact_and_in_order(
    broker: Mosquitto, collector: Collector
) -> None:
    # PahoTransport's client merges the PUBLISHes that a burst of PUBACKs releases into one
    # socket write: a subscriber must still see every message whole, once, in order.
    opts = MqttOptions(broker.host, broker.port, f"t-{uuid.uuid4().hex[:8]}", max_inflight=20)
    link = PahoTransport(opts)
    client = link._client
    merged = []
    append = client._append_to_last_publish

    def counting_append(packet: bytes | bytearray) -> bool:
        merged.append(append(packet))
        return merged[-1]

    client._append_to_last_publish = counting_append  # type: ignore[method-assign]
    acked: list[int] = []
    up = threading.Event()
    link.set_callbacks(lambda handle, _reason: acked.append(handle), lambda ok: ok and up.set())
    link.connect()
    topic = f"edgeai/v1/{FLEET}/nodes/burst/events/tick"
    try:
        assert up.wait(10), "no connection"
        for i in range(2000):  # bodies of different lengths, so a torn merge cannot go unseen
            payload = Envelope("burst", "b1", i + 1, 0.0, {"i": i, "pad": "x" * (i % 97)})
            link.publish(topic, payload.encode(), 1, False)
        wait_for(lambda: len(acked) == 2000, 60, "2000 PUBACKs")
        wait_for(lambda: len(collector.ticks()) == 2000, 30, "2000 messages at the subscriber")
    finally:
        link.disconnect()
    assert any(merged), "no PUBLISH was merged: the test did not exercise the merge"
    got = [env.body for topic_, env, _ in collector.messages if topic_ == topic]
    assert [(b["i"], len(b["pad"])) for b in got] == [(i, i % 97) for i in range(2000)]
    assert collector.duplicates == 0
