"""The kit's Mosquitto bridge (server/mosquitto-bridge.conf) forwards the fleet to a cloud broker.

Two real Mosquittos on loopback: the fleet's (passwords, the generated ACL, the kit's bridge
section appended with only the address, the upstream CA and the password replaced) and an
"upstream" one with TLS and its own accounts.  A node's telemetry, published by the agent's
real ``Telemetry`` client on the fleet broker, arrives upstream under ``sites/plant-7/``;
a command the server sends to the node does not leave the site.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgeai.plumbing.pki import issue, make_ca
from edgeai.server.broker import render_acl
from edgeai.telemetry import Telemetry, TelemetryConfig
from edgeai.telemetry.topics import decode
from tests.mosquitto import Mosquitto

pytestmark = pytest.mark.integration
KIT = Path(__file__).resolve().parents[2] / "server" / "mosquitto-bridge.conf"
SITE = "sites/plant-7/edgeai/v1/default"


def bridge_section(upstream_port: int, ca: Path, password: str) -> list[str]:
    """The kit's file with the three site-specific values replaced, everything else as is."""
    values = {
        "address": f"localhost:{upstream_port}",  # the name its certificate carries
        "bridge_cafile": str(ca),
        "remote_password": password,
    }
    out = []
    for line in KIT.read_text(encoding="utf-8").splitlines():
        key = line.split(" ", 1)[0]
        out.append(f"{key} {values[key]}" if key in values else line)
    assert sum(line.split(" ", 1)[0] in values for line in out) == len(values)
    return out


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[tuple[Mosquitto, Mosquitto]]:
    tls = tmp_path / "cloud-tls"
    ca = make_ca(tls)
    issue(ca, "upstream", ["localhost", "127.0.0.1"], tls)
    upstream = Mosquitto(
        tmp_path / "upstream",
        users={"site-plant-7": "bridge-pw", "cloud-reader": "reader-pw"},
        acl=[
            "user site-plant-7",
            "topic write sites/plant-7/#",
            "user cloud-reader",
            "topic read sites/#",
        ],
        extra=[
            f"cafile {tls / 'ca.pem'}",
            f"certfile {tls / 'upstream.pem'}",
            f"keyfile {tls / 'upstream.key'}",
        ],
    )
    fleet = Mosquitto(
        tmp_path / "fleet",
        users={"rpi-1": "node-pw", "edgeai-server": "server-pw"},
        acl=render_acl("default").splitlines(),
        extra=bridge_section(upstream.port, tls / "ca.pem", "bridge-pw"),
    )
    with upstream, fleet:
        yield fleet, upstream


def reader(upstream: Mosquitto, ca: Path) -> tuple[paho.Client, queue.Queue[paho.MQTTMessage]]:
    got: queue.Queue[paho.MQTTMessage] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="reader", protocol=paho.MQTTv5)
    client.username_pw_set("cloud-reader", "reader-pw")
    client.tls_set(str(ca))
    client.on_message = lambda _c, _u, msg: got.put(msg)
    client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe("sites/plant-7/#", qos=1)
    client.connect("127.0.0.1", upstream.port)
    client.loop_start()
    return client, got


def next_on(
    got: queue.Queue[paho.MQTTMessage],
    topic: str,
    logs: tuple[Mosquitto, ...],
    timeout_s: float = 60,
) -> bytes:
    """The payload of the next message on ``topic``; fails on a command or after the timeout."""
    while True:
        try:
            msg = got.get(timeout=timeout_s)
        except queue.Empty:
            pytest.fail(f"nothing on {topic} upstream:\n" + "\n".join(b.log() for b in logs))
        assert "/cmd/" not in msg.topic, f"a command left the site: {msg.topic}"
        if msg.topic == topic:
            return bytes(msg.payload)


def test_node_telemetry_reaches_the_upstream_broker_and_commands_stay_home(
    brokers: tuple[Mosquitto, Mosquitto], tmp_path: Path
) -> None:
    fleet, upstream = brokers
    client, got = reader(upstream, tmp_path / "cloud-tls" / "ca.pem")
    node = None
    server = paho.Client(CallbackAPIVersion.VERSION2, client_id="srv", protocol=paho.MQTTv5)
    try:
        # The bridge announces itself upstream ("1" retained) once its link is up.
        assert next_on(got, "sites/plant-7/bridge/state", brokers) == b"1"
        config = TelemetryConfig(
            broker_url=fleet.url,
            fleet="default",
            username="rpi-1",
            password="node-pw",  # noqa: S106 - a test account
            outbox_path=tmp_path / "outbox.sqlite",
            metrics_interval_s=0,
            reconnect_min_s=1,
            reconnect_max_s=1,
        )
        node = Telemetry(config, "rpi-1")
        node.start()
        node.metrics({"epsilon": 1.5, "p95_ms": 4.0})
        env = decode(next_on(got, f"{SITE}/nodes/rpi-1/telemetry", brokers))
        assert (env.node, env.body["metrics"]["epsilon"]) == ("rpi-1", 1.5)
        # A command to the node, then an event: the event arrives, the command never does
        # (one bridge connection, QoS 1, in order: had it been forwarded it would be first).
        server.username_pw_set("edgeai-server", "server-pw")
        server.connect("127.0.0.1", fleet.port)
        server.loop_start()
        server.publish("edgeai/v1/default/nodes/rpi-1/cmd/reboot", b"{}", qos=1).wait_for_publish(
            30
        )
        node.event("model_applied", release=3)
        env = decode(next_on(got, f"{SITE}/nodes/rpi-1/events/model_applied", brokers))
        assert env.body["release"] == 3
    finally:
        server.disconnect()
        server.loop_stop()
        if node is not None:
            node.stop(flush_timeout_s=1)
        client.disconnect()
        client.loop_stop()
