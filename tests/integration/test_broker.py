"""The managed Mosquitto on loopback: TLS only, passwords, and the per-node ACL.

One broker (TLS, generated CA) serves the module: nodes ``a`` and ``b`` and the server's
account are enrolled before it starts; tests enrolling more nodes use their own names.
Mosquitto 2.0 grants a SUBSCRIBE and applies the read ACL per delivered message, so "cannot
subscribe to another node's topics" is checked as "receives none of them".
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edgeai.plumbing.pki import make_ca
from edgeai.server.announcer import Announcer, announcer_options
from edgeai.server.broker import (
    BrokerConfig,
    BrokerError,
    Credentials,
    ManagedBroker,
    add_node,
    remove_node,
)
from edgeai.server.collector import Collector, CollectorConfig
from edgeai.telemetry import Envelope, Telemetry, TelemetryConfig
from edgeai.telemetry.mqtt import REASON_NOT_AUTHORIZED, PahoTransport
from tests.mosquitto import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
FLEET = "sec"
BASE = f"edgeai/v1/{FLEET}"


class Fleet:
    def __init__(self, broker: ManagedBroker, creds: dict[str, Credentials]) -> None:
        self.broker = broker
        self.creds = creds


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("broker")
    config = BrokerConfig(manage=True, fleet=FLEET, port=free_port(), data_dir=root)
    broker = ManagedBroker(config)
    creds = {name: broker.add_node(name) for name in ("a", "b")}
    creds["server"] = broker.server_credentials()
    with broker:
        yield Fleet(broker, creds)


class Client:
    """A paho MQTT 5 client that records CONNACK, PUBACK and SUBACK reason codes."""

    def __init__(
        self,
        port: int,
        creds: Credentials | None,
        *,
        ca_file: Path | None = None,
        tls: bool = True,
        client_id: str = "",
    ) -> None:
        self.connack: ReasonCode | None = None
        self.acks: dict[int, int] = {}
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        if creds is not None:
            self.client.username_pw_set(creds.username, creds.password)
        if tls:
            self.client.tls_set(ca_certs=str(ca_file or (creds and creds.ca_file)))
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.port = port

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        self.connack = rc

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        with self._lock:
            self.acks[mid] = int(rc.value)

    def _on_subscribe(
        self, _c: object, _u: object, mid: int, rcs: list[ReasonCode], _p: object
    ) -> None:
        with self._lock:
            self.acks[mid] = int(rcs[0].value)

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(msg.topic)

    def __enter__(self) -> Client:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        wait_for(lambda: self.connack is not None, 10, "a CONNACK")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str) -> int:
        """Publish QoS 1 and return the PUBACK's reason code."""
        mid = self.client.publish(topic, b"{}", qos=1).mid
        wait_for(lambda: mid in self.acks, 10, f"the PUBACK of {topic}")
        return self.acks[mid]

    def subscribe(self, topic: str) -> int:
        """Subscribe QoS 1 and return the SUBACK's reason code."""
        _, mid = self.client.subscribe(topic, qos=1)
        wait_for(lambda: mid in self.acks, 10, f"the SUBACK of {topic}")
        return self.acks[mid]


def test_agent_telemetry_over_tls_reaches_the_collector(fleet: Fleet, tmp_path: Path) -> None:
    server = fleet.creds["server"]
    collector = Collector(CollectorConfig(**server.settings(), db_path=tmp_path / "fleet.sqlite"))
    collector.start()
    try:
        assert collector.wait_ready(10), "the collector never subscribed over TLS"
        config = TelemetryConfig(
            **fleet.creds["a"].settings(), outbox_path=tmp_path / "outbox.sqlite"
        )
        assert config.broker_url.startswith("mqtts://")
        with Telemetry(config, "a") as telemetry:
            telemetry.status("online", profile="x86-64-avx2")
            telemetry.event("agent_started", version="1", profile="x86-64-avx2")
            wait_for(lambda: telemetry.stats()["delivered"] >= 2, 10, "two PUBACKs")
            assert telemetry.stats()["rejected"] == 0
            wait_for(lambda: any(n.online for n in collector.nodes()), 10, "node a online")
        assert [n.node for n in collector.nodes()] == ["a"]
    finally:
        collector.stop()


def test_the_servers_collector_and_announcer_share_the_broker(fleet: Fleet, tmp_path: Path) -> None:
    """Two accounts, two connections: the client id is the user name, so neither kicks the
    other; the collector's persistent session still resumes across its restart."""
    server = fleet.creds["server"]
    config = CollectorConfig(
        **server.settings(), db_path=tmp_path / "fleet.sqlite", reconnect_max_s=1
    )
    log = fleet.broker.paths.log
    assert log is not None
    log_start = len(log.read_bytes())
    collector = Collector(config)
    collector.start()
    announcer = Announcer(PahoTransport(announcer_options(config)), FLEET)
    try:
        assert collector.wait_ready(10), "the collector never subscribed"
        announcer("x86-64-avx2", {"version": "1"})
        wait_for(lambda: "x86-64-avx2" in collector.releases(), 10, "the announcement")
        collector.stop()  # its session (and what it queues) stays on the broker
        announcer("rpi5", {"version": "2"})
        with Client(fleet.broker.config.port, fleet.creds["a"]) as a:
            body = Envelope("a", "boot", 1, time.time(), {"state": "online"}).encode()
            mid = a.client.publish(f"{BASE}/nodes/a/status", body, qos=1).mid  # not retained
            wait_for(lambda: mid in a.acks, 10, "the PUBACK")
        collector = Collector(config)
        collector.start()
        assert collector.wait_ready(10)
        wait_for(lambda: "rpi5" in collector.releases(), 10, "the queued announcement")
        # Not retained: only a resumed session delivers what came while it was away.
        wait_for(lambda: [n.node for n in collector.nodes()] == ["a"], 10, "a's status")
    finally:
        announcer.close()
        collector.stop()
    assert b"already connected, closing old connection" not in log.read_bytes()[log_start:]


def test_plain_tcp_is_refused_on_the_tls_listener(fleet: Fleet) -> None:
    # An MQTT 3.1.1 CONNECT in clear text: the TLS listener must close the connection
    # (at most after a TLS alert) and never answer with a CONNACK (0x20).
    connect = bytes([0x10, 12, 0, 4, *b"MQTT", 4, 2, 0, 60, 0, 0])
    reply = b""
    with socket.create_connection(("127.0.0.1", fleet.broker.config.port), timeout=5) as sock:
        sock.sendall(connect)
        try:
            while chunk := sock.recv(4096):  # b"": the broker closed the connection
                reply += chunk
        except ConnectionResetError:
            pass
    assert not reply.startswith(b"\x20"), "a plain-TCP client got a CONNACK"
    assert reply[:1] in (b"", b"\x15"), f"expected nothing or a TLS alert, got {reply[:8]!r}"


def test_a_broker_certificate_from_another_ca_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    other = make_ca(tmp_path / "other-ca")
    client = Client(fleet.broker.config.port, fleet.creds["a"], ca_file=other.cert)
    with pytest.raises(ssl.SSLCertVerificationError):
        client.client.connect("127.0.0.1", fleet.broker.config.port)


@pytest.mark.parametrize("login", ["anonymous", "wrong password", "unknown user"])
def test_clients_without_a_valid_login_are_refused(fleet: Fleet, login: str) -> None:
    good = fleet.creds["a"]
    creds = {
        "anonymous": None,
        "wrong password": Credentials("a", "nope", good.broker_url, FLEET, good.ca_file),
        "unknown user": Credentials("zed", "nope", good.broker_url, FLEET, good.ca_file),
    }[login]
    with Client(fleet.broker.config.port, creds, ca_file=good.ca_file) as client:
        assert client.connack is not None
        assert int(client.connack.value) == REASON_NOT_AUTHORIZED


def test_a_node_publishes_only_under_its_own_topics(fleet: Fleet) -> None:
    with Client(fleet.broker.config.port, fleet.creds["a"]) as a:
        assert a.publish(f"{BASE}/nodes/b/status") == REASON_NOT_AUTHORIZED
        assert a.publish(f"{BASE}/nodes/b/events/model_applied") == REASON_NOT_AUTHORIZED
        assert a.publish(f"{BASE}/releases/x86-64-avx2") == REASON_NOT_AUTHORIZED
        # 0 success, or 16 "no matching subscribers": both below 0x80, i.e. accepted.
        assert a.publish(f"{BASE}/nodes/a/status") < 0x80
        assert a.publish(f"{BASE}/nodes/a/events/model_applied") < 0x80


def test_telemetry_counts_puback_135_as_rejected(fleet: Fleet, tmp_path: Path) -> None:
    settings = fleet.creds["a"].settings()
    config = TelemetryConfig(**settings, outbox_path=tmp_path / "o.sqlite", metrics_interval_s=0)
    telemetry = Telemetry(config, "b")  # logged in as a, writing under b's topics
    telemetry.start()
    try:
        for i in range(3):
            telemetry.event("tick", i=i)
        wait_for(lambda: telemetry.stats()["rejected"] >= 3, 10, "three rejected PUBACKs")
    finally:
        telemetry.stop(flush_timeout_s=5)
    assert telemetry.stats()["delivered"] == 0


def test_a_node_receives_none_of_another_nodes_topics(fleet: Fleet) -> None:
    port = fleet.broker.config.port
    with (
        Client(port, fleet.creds["a"]) as a,
        Client(port, fleet.creds["b"]) as b,
        Client(port, fleet.creds["server"]) as server,
    ):
        a.subscribe(f"{BASE}/nodes/b/#")
        a.subscribe(f"{BASE}/#")
        assert a.subscribe(f"{BASE}/nodes/a/cmd/#") == 1  # granted QoS 1
        assert b.publish(f"{BASE}/nodes/b/telemetry") < 0x80
        assert server.publish(f"{BASE}/nodes/b/cmd/restart") < 0x80
        assert server.publish(f"{BASE}/nodes/a/cmd/restart") < 0x80
        # The broker delivers to one client in order: a's own command arrives after the
        # two messages of b's, so by then those were dropped, not late.
        wait_for(lambda: f"{BASE}/nodes/a/cmd/restart" in a.messages, 10, "a's command")
        assert all("/nodes/b/" not in topic for topic in a.messages), a.messages


def test_a_node_enrolled_while_running_logs_in_after_the_reload(fleet: Fleet) -> None:
    broker = fleet.broker
    port = broker.config.port
    late = add_node(broker.config, "late")  # on disk only: the broker has not re-read it
    with Client(port, late) as client:
        assert int(client.connack.value) == REASON_NOT_AUTHORIZED
    broker.reload()
    with Client(port, late) as client:
        assert client.connack is not None
        assert not client.connack.is_failure
        assert client.publish(f"{BASE}/nodes/late/status") < 0x80
    assert remove_node(broker.config, "late")
    broker.reload()
    with Client(port, late) as client:
        assert int(client.connack.value) == REASON_NOT_AUTHORIZED


def test_removing_a_node_disconnects_it(fleet: Fleet) -> None:
    creds = fleet.broker.add_node("gone")
    with Client(fleet.broker.config.port, creds) as client:
        assert client.connack is not None
        assert not client.connack.is_failure
        assert fleet.broker.remove_node("gone")
        wait_for(lambda: not client.client.is_connected(), 10, "the broker to drop 'gone'")


def test_retained_state_survives_a_restart(fleet: Fleet) -> None:
    port = fleet.broker.config.port
    with Client(port, fleet.creds["b"]) as b:
        b.client.publish(f"{BASE}/nodes/b/profile", b'{"name": "rpi5"}', qos=1, retain=True)
        wait_for(lambda: len(b.acks) == 1, 10, "the PUBACK")
    fleet.broker.restart()
    with Client(port, fleet.creds["server"]) as server:
        server.subscribe(f"{BASE}/nodes/b/profile")
        wait_for(lambda: bool(server.messages), 10, "the retained profile")


def test_start_fails_clearly_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        taken.listen()
        config = BrokerConfig(
            manage=True, port=port, data_dir=tmp_path, tls=False, start_timeout_s=5
        )
        broker = ManagedBroker(config)
        with pytest.raises(BrokerError, match="taken"):
            broker.start()
        assert not broker.running
