"""Attacks on the fleet's broker by an enrolled node, against the generated Mosquitto config.

One managed broker (``ManagedBroker``: TLS, password file, ACL, ``use_username_as_clientid``)
serves the module; nodes ``a`` (the attacker), ``b`` (the victim), ``B`` (b's name in
another case) and ``ok`` (a bystander) and the server's accounts are enrolled before it
starts.  Each attack must be refused, and afterwards the broker must still serve a
legitimate node: ``ok`` publishes a command to itself and receives it (:func:`round_trip`).

Refused means, per attack: CONNACK 135 / 134 for a bad login; PUBACK 135, or the broker
closing a malformed connection, for a publish; no delivery for a subscription (Mosquitto
2.0 grants a SUBSCRIBE and applies the read ACL to every message); the victim staying
connected with its session and queued messages for a client-id takeover.  The module prints
how many attacks were tried, refused and survived (``-s`` shows it).

Some attacks need packets paho will not build (wildcards or NUL in a publish topic): those
go through :class:`RawMqtt`, a few lines of MQTT 5 over TLS.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import struct
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeai.server.broker import BrokerConfig, Credentials, ManagedBroker
from tests.mosquitto import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
FLEET = "sec"
BASE = f"edgeai/v1/{FLEET}"
NOT_AUTHORIZED = 135
BAD_LOGIN = (134, 135)  # bad user name or password / not authorized
TIMEOUT_S = 10.0


# -- the tally ------------------------------------------------------------------------------


@dataclass
class Tally:
    """Attacks tried, refused, and survived (the broker still served a node afterwards)."""

    rows: dict[str, tuple[bool, bool]] = field(default_factory=dict)

    def record(self, attack: str, *, refused: bool, survived: bool) -> None:
        self.rows[attack] = (refused, survived)

    def summary(self) -> str:
        refused = sum(r for r, _ in self.rows.values())
        survived = sum(s for _, s in self.rows.values())
        lines = [
            f"MQTT attacks: {len(self.rows)} tried, {refused} refused, "
            f"{survived} survived (broker served a node afterwards)"
        ]
        lines += [f"  {'ok  ' if r and s else 'FAIL'} {name}" for name, (r, s) in self.rows.items()]
        return "\n".join(lines)


TALLY = Tally()


# -- the broker -----------------------------------------------------------------------------


@dataclass
class Fleet:
    broker: ManagedBroker
    creds: dict[str, Credentials]

    @property
    def port(self) -> int:
        return self.broker.config.port

    @property
    def ca_file(self) -> Path:
        ca = self.creds["a"].ca_file
        assert ca is not None
        return ca

    def log(self) -> str:
        return self.broker.paths.log.read_text(errors="replace") if self.broker.paths.log else ""


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("broker")
    config = BrokerConfig(manage=True, fleet=FLEET, port=free_port(), data_dir=root)
    broker = ManagedBroker(config)
    creds = {name: broker.add_node(name) for name in ("a", "b", "B", "ok")}
    creds["server"] = broker.server_credentials()
    with broker:
        yield Fleet(broker, creds)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and TALLY.rows:
        reporter.write_line("")
        reporter.write_line(TALLY.summary())


class Client:
    """A paho MQTT 5 client that records CONNACK, PUBACK/SUBACK codes, messages, drops."""

    def __init__(
        self,
        fleet: Fleet,
        creds: Credentials | None,
        *,
        client_id: str = "",
        password: str | None = None,
        reconnect: bool = True,
    ) -> None:
        self.fleet = fleet
        self.name = creds.username if creds is not None else "anonymous"
        self.connack: ReasonCode | None = None
        self.session_present: bool | None = None
        self.acks: dict[int, int] = {}
        self.messages: list[tuple[str, bytes, bool]] = []
        self.disconnects: list[int] = []
        self._lock = threading.Lock()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=reconnect,
        )
        self.client.reconnect_delay_set(1, 1)
        if creds is not None:
            self.client.username_pw_set(
                creds.username, creds.password if password is None else password
            )
        self.client.tls_set(ca_certs=str(fleet.ca_file))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(
        self, _c: object, _u: object, flags: object, rc: ReasonCode, _p: object
    ) -> None:
        self.session_present = bool(getattr(flags, "session_present", False))
        self.connack = rc

    def _on_disconnect(
        self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        with self._lock:
            self.disconnects.append(int(rc.value))

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
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def connect(self, *, persistent: bool = False) -> Client:
        """Connect (a persistent session: clean start off, 10 min expiry) and wait."""
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 600
        self.connack = None
        self.client.connect(
            "127.0.0.1", self.fleet.port, 30, clean_start=not persistent, properties=props
        )
        self.client.loop_start()
        wait_for(lambda: self.connack is not None, TIMEOUT_S, "a CONNACK")
        return self

    def close(self) -> None:
        """DISCONNECT (waiting for it to leave, so the broker ends this login) and stop."""
        before = len(self.disconnects)
        if self.client.disconnect() == paho.MQTT_ERR_SUCCESS:
            with contextlib.suppress(AssertionError):
                wait_for(lambda: len(self.disconnects) > before, 2, "the DISCONNECT")
        self.client.loop_stop()

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def publish(self, topic: str, payload: bytes = b"{}", *, retain: bool = False) -> int:
        """Publish QoS 1: the PUBACK's reason code, or -1 if the broker dropped the client."""
        drops = len(self.disconnects)
        mid = self.client.publish(topic, payload, qos=1, retain=retain).mid
        wait_for(
            lambda: mid in self.acks or len(self.disconnects) > drops,
            TIMEOUT_S,
            f"the PUBACK of {topic[:80]}",
        )
        return self.acks.get(mid, -1)

    def subscribe(self, topic: str) -> int:
        """Subscribe QoS 1 and return the SUBACK's reason code."""
        rc, mid = self.client.subscribe(topic, qos=1)
        if mid is None:
            raise AssertionError(f"paho refused to subscribe to {topic[:80]}: {rc}")
        wait_for(lambda: mid in self.acks, TIMEOUT_S, f"the SUBACK of {topic[:80]}")
        return self.acks[mid]

    def received(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def wait_message(self, topic: str, payload: bytes) -> None:
        wait_for(lambda: payload in self.received(topic), TIMEOUT_S, f"{payload!r} on {topic}")


def round_trip(fleet: Fleet) -> bool:
    """Whether a legitimate node can still publish to itself and receive it."""
    topic = f"{BASE}/nodes/ok/cmd/ping"
    payload = uuid.uuid4().hex.encode()
    try:
        with Client(fleet, fleet.creds["ok"], client_id="edgeai-sec-ok") as ok:
            if not ok.accepted or ok.subscribe(topic) != 1:
                return False
            if ok.publish(topic, payload) >= 0x80:
                return False
            ok.wait_message(topic, payload)
    except (AssertionError, OSError):
        return False
    return fleet.broker.running


def forget_session(fleet: Fleet, node: str) -> None:
    """End ``node``'s persistent session (a clean start as itself), if it has one."""
    name = f"edgeai-{FLEET}-{node}"
    with Client(fleet, fleet.creds[node], client_id=name, reconnect=False) as client:
        assert client.accepted


def sentinel(fleet: Fleet, observer: Client) -> None:
    """Wait until ``observer`` got a message ``ok`` publishes now (orders what came before)."""
    topic = f"{BASE}/nodes/ok/telemetry"
    payload = uuid.uuid4().hex.encode()
    with Client(fleet, fleet.creds["ok"], client_id="edgeai-sec-ok") as ok:
        assert ok.publish(topic, payload) < 0x80
    observer.wait_message(topic, payload)


# -- MQTT 5 by hand, for packets paho refuses to build ---------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


class RawMqtt:
    """One MQTT 5 connection over TLS, packet by packet."""

    def __init__(self, fleet: Fleet) -> None:
        context = ssl.create_default_context(cafile=str(fleet.ca_file))
        raw = socket.create_connection(("127.0.0.1", fleet.port), timeout=TIMEOUT_S)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawMqtt:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, first: int, body: bytes) -> None:
        self.sock.sendall(bytes([first]) + _varint(len(body)) + body)

    def read(self) -> tuple[int, bytes] | None:
        """The next packet (first byte, body); None when the broker closed the connection."""
        try:
            head = self.sock.recv(1)
            if not head:
                return None
            length, shift = 0, 0
            while True:
                byte = self.sock.recv(1)
                if not byte:
                    return None
                length |= (byte[0] & 0x7F) << shift
                shift += 7
                if not byte[0] & 0x80:
                    break
            body = b""
            while len(body) < length:
                chunk = self.sock.recv(length - len(body))
                if not chunk:
                    return None
                body += chunk
        except (ConnectionResetError, ssl.SSLError):
            return None
        return head[0], body

    def connect(
        self,
        creds: Credentials,
        client_id: bytes,
        *,
        will: tuple[bytes, bytes] | None = None,
    ) -> int:
        """CONNECT (clean start, optionally a retained QoS 1 will); the CONNACK reason code."""
        flags = 0x02 | 0x80 | 0x40  # clean start, user name, password
        payload = _utf8(client_id)
        if will is not None:
            flags |= 0x04 | 0x08 | 0x20  # will, will QoS 1, will retain
            payload += b"\x00" + _utf8(will[0]) + _utf8(will[1])  # no will properties
        payload += _utf8(creds.username.encode()) + _utf8(creds.password.encode())
        header = _utf8(b"MQTT") + bytes([5, flags]) + struct.pack("!H", 30) + b"\x00"
        self.send(0x10, header + payload)
        reply = self.read()
        if reply is None or reply[0] != 0x20:
            return -1
        return reply[1][1]

    def publish(self, topic: bytes, payload: bytes = b"{}", *, retain: bool = False) -> int:
        """PUBLISH QoS 1; the PUBACK reason code, or -1 if the broker dropped the connection."""
        body = _utf8(topic) + struct.pack("!H", 7) + b"\x00" + payload
        self.send(0x32 | (0x01 if retain else 0), body)
        while (reply := self.read()) is not None:
            first, data = reply
            if first >> 4 == 4:  # PUBACK: packet id, then the reason code (0 if left out)
                return data[2] if len(data) > 2 else 0
            if first >> 4 == 14:  # DISCONNECT with a reason
                return -1
        return -1


# -- client-id takeover ---------------------------------------------------------------------


def test_a_node_cannot_take_over_a_connected_nodes_session(fleet: Fleet) -> None:
    """Node a, logged in as itself, claims b's client id while b is online: b stays."""
    cmd = f"{BASE}/nodes/b/cmd/restart"
    forget_session(fleet, "a")
    with Client(fleet, fleet.creds["server"]) as server:
        b = Client(fleet, fleet.creds["b"], client_id="edgeai-sec-b").connect(persistent=True)
        try:
            assert b.accepted
            assert b.subscribe(f"{BASE}/nodes/b/cmd/#") == 1
            attacker = Client(fleet, fleet.creds["a"], client_id="edgeai-sec-b", reconnect=False)
            attacker.connect(persistent=True)
            try:
                # a gets at most its own session, never b's.
                got_b_session = attacker.accepted and bool(attacker.session_present)
                assert server.publish(cmd, b"c1") < 0x80
                b.wait_message(cmd, b"c1")
                kicked = bool(b.disconnects)
                assert attacker.received(cmd) == []
            finally:
                attacker.close()
        finally:
            b.close()
    survived = round_trip(fleet)
    TALLY.record("takeover: b's client id while b is online", refused=not kicked, survived=survived)
    assert not kicked, f"b was disconnected when a claimed its client id: {b.disconnects}"
    assert not got_b_session, "a resumed b's session"
    assert survived


def test_queued_commands_survive_a_takeover_attempt(fleet: Fleet) -> None:
    """b is away with a persistent session and queued QoS 1 commands; a claims b's id."""
    cmd = f"{BASE}/nodes/b/cmd/update"
    b = Client(fleet, fleet.creds["b"], client_id="edgeai-sec-b").connect(persistent=True)
    assert b.accepted
    assert b.subscribe(f"{BASE}/nodes/b/cmd/#") == 1
    b.close()
    with Client(fleet, fleet.creds["server"]) as server:
        for i in range(3):
            assert server.publish(cmd, f"q{i}".encode()) < 0x80
    forget_session(fleet, "a")
    stolen = []
    for persistent in (True, False):  # resume b's session, then wipe it with a clean start
        attacker = Client(fleet, fleet.creds["a"], client_id="edgeai-sec-b", reconnect=False)
        attacker.connect(persistent=persistent)
        try:
            if attacker.accepted and attacker.session_present:
                stolen.append("session")
            if attacker.accepted:
                # Queued messages are sent right after the CONNACK, before anything newer.
                own = f"{BASE}/nodes/a/cmd/mark"
                assert attacker.subscribe(own) == 1
                assert attacker.publish(own, b"mark") < 0x80
                attacker.wait_message(own, b"mark")
            stolen += [p.decode() for p in attacker.received(cmd)]
        finally:
            attacker.close()
    b = Client(fleet, fleet.creds["b"], client_id="edgeai-sec-b").connect(persistent=True)
    try:
        resumed = bool(b.session_present)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: len(b.received(cmd)) >= 3, 5, "b's three queued commands")
        got = [p.decode() for p in b.received(cmd)]
    finally:
        b.close()
    survived = round_trip(fleet)
    refused = resumed and got == ["q0", "q1", "q2"] and not stolen
    TALLY.record(
        "takeover: b's id while b is away (queued commands)", refused=refused, survived=survived
    )
    assert not stolen, f"a got b's {stolen}"
    assert resumed, "b's persistent session did not survive"
    assert got == ["q0", "q1", "q2"], f"b's queued commands: {got}"
    assert survived


@pytest.mark.parametrize(
    "claimed",
    [
        "b",  # the victim's user name (the id the broker binds to b)
        "edgeai-sec-B",  # case
        "EDGEAI-SEC-b",
        "edgeai-sec-b ",  # trailing space
        "edgeai-sec-b/",  # prefix tricks
        "edgeai-sec-b/../b",
        "edgeai-server",  # the server's accounts
        "edgeai-server-releases",
        "edgeai-collector-sec",
        "edgeai-releases-sec",
    ],
)
def test_client_id_tricks_do_not_kick_anyone(fleet: Fleet, claimed: str) -> None:
    b = Client(fleet, fleet.creds["b"], client_id="edgeai-sec-b").connect(persistent=True)
    server = Client(fleet, fleet.creds["server"], client_id="edgeai-collector-sec").connect()
    try:
        assert b.accepted
        assert server.accepted
        assert b.subscribe(f"{BASE}/nodes/b/cmd/#") == 1
        with Client(fleet, fleet.creds["a"], client_id=claimed, reconnect=False) as attacker:
            assert attacker.accepted  # a logs in, as itself
            # A round trip through both victims: a kick would have reached them by then.
            ping = uuid.uuid4().hex.encode()
            assert server.publish(f"{BASE}/nodes/b/cmd/ping", ping) < 0x80
            b.wait_message(f"{BASE}/nodes/b/cmd/ping", ping)
            kicked = [v.name for v in (b, server) if v.disconnects]
    finally:
        server.close()
        b.close()
    survived = round_trip(fleet)
    TALLY.record(f"takeover: client id {claimed!r}", refused=not kicked, survived=survived)
    assert not kicked, f"a claiming {claimed!r} kicked {kicked}"
    assert survived


def test_a_user_name_differing_only_in_case_is_another_session(fleet: Fleet) -> None:
    """Node ``B`` (enrolled) is not ``b``: neither kicks the other, whatever ids they claim."""
    b = Client(fleet, fleet.creds["b"], client_id="edgeai-sec-b").connect(persistent=True)
    try:
        with Client(fleet, fleet.creds["B"], client_id="edgeai-sec-b", reconnect=False) as upper:
            assert upper.accepted
            assert upper.publish(f"{BASE}/nodes/b/status", b"offline") == NOT_AUTHORIZED
            ping = uuid.uuid4().hex.encode()
            assert b.subscribe(f"{BASE}/nodes/b/cmd/#") == 1
            assert b.publish(f"{BASE}/nodes/b/cmd/ping", ping) < 0x80
            b.wait_message(f"{BASE}/nodes/b/cmd/ping", ping)
            kicked = bool(b.disconnects)
    finally:
        b.close()
    survived = round_trip(fleet)
    TALLY.record("takeover: node 'B' claims b's id", refused=not kicked, survived=survived)
    assert not kicked
    assert survived


# -- logins ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "login",
    [
        "anonymous",
        "wrong password",
        "empty password",
        "b's user name, a's password",
        "unknown user",
        "a's name in upper case",
    ],
)
def test_bad_logins_are_refused(fleet: Fleet, login: str) -> None:
    a, b = fleet.creds["a"], fleet.creds["b"]
    url, ca = a.broker_url, a.ca_file
    creds, password = {
        "anonymous": (None, None),
        "wrong password": (a, "nope"),
        "empty password": (a, ""),
        "b's user name, a's password": (b, a.password),
        "unknown user": (Credentials("zed", "nope", url, FLEET, ca), None),
        "a's name in upper case": (Credentials("A", a.password, url, FLEET, ca), None),
    }[login]
    with Client(fleet, creds, password=password, reconnect=False) as client:
        assert client.connack is not None
        code = int(client.connack.value)
    survived = round_trip(fleet)
    TALLY.record(f"login: {login}", refused=code in BAD_LOGIN, survived=survived)
    assert code in BAD_LOGIN, f"{login}: CONNACK {code}"
    assert survived


# -- publishing outside the node's own subtree -----------------------------------------------

OUTSIDE = [
    f"{BASE}/nodes/b/status",
    f"{BASE}/nodes/b/telemetry",
    f"{BASE}/nodes/b/events/model_applied",
    f"{BASE}/nodes/b/cmd/restart",
    f"{BASE}/nodes/B/status",
    f"{BASE}/nodes/ｂ/status",  # noqa: RUF001 - a fullwidth b
    f"{BASE}/releases/x86-64-avx2",
    f"{BASE}/nodes/../nodes/b/status",
    f"{BASE}//nodes/b/status",
    f"/{BASE}/nodes/b/status",
    f"{BASE}/nodes",
    f"{BASE}/nodes/edgeai-server/status",
    "edgeai/v1/other/nodes/a/status",  # another fleet
    "$SYS/broker/clients/connected",
    "$SYS/broker/version",
    "$share/g/" + f"{BASE}/nodes/b/cmd/restart",
    "$CONTROL/dynamic-security/v1",
    f"{BASE}/nodes/b/" + "x" * 65_000,  # very long
    f"{BASE}/nodes/b" + "/x" * 20_000,  # very deep
]


@pytest.mark.parametrize("topic", OUTSIDE, ids=lambda t: t[:60])
def test_publishing_outside_the_own_subtree_is_refused(fleet: Fleet, topic: str) -> None:
    with Client(fleet, fleet.creds["a"], reconnect=False) as a:
        code = a.publish(topic)
    survived = round_trip(fleet)
    # 135 (not authorized), or -1: the broker closed the connection (a protocol error).
    refused = code in (NOT_AUTHORIZED, -1)
    TALLY.record(f"publish: {topic[:60]} ({code})", refused=refused, survived=survived)
    assert refused, f"{topic[:80]}: PUBACK {code}"
    assert survived


MALFORMED = [
    f"{BASE}/nodes/+/status".encode(),
    f"{BASE}/nodes/#".encode(),
    f"{BASE}/nodes/a/#".encode(),
    f"{BASE}/nodes/a/+".encode(),
    b"#",
    b"+",
    f"{BASE}/nodes/a/\x00/../b/status".encode(),  # NUL is not allowed in a topic
    f"{BASE}/nodes/a/".encode() + b"\xff\xfe",  # not UTF-8
    b"",  # an empty topic without a topic alias
]


@pytest.mark.parametrize("topic", MALFORMED, ids=lambda t: repr(t[-24:]))
def test_wildcards_and_malformed_publish_topics_are_refused(fleet: Fleet, topic: bytes) -> None:
    with RawMqtt(fleet) as raw:
        assert raw.connect(fleet.creds["a"], b"raw-a") == 0
        code = raw.publish(topic)
    survived = round_trip(fleet)
    # 135 (not authorized) or the connection dropped as malformed: either way refused.
    refused = code in (NOT_AUTHORIZED, -1)
    TALLY.record(f"publish (raw): {topic[-40:]!r}", refused=refused, survived=survived)
    assert refused, f"{topic[-40:]!r}: PUBACK {code}"
    assert survived


def test_a_topic_inside_the_own_subtree_with_dots_reaches_nobody_elses(fleet: Fleet) -> None:
    """``nodes/a/../b/status`` is a's topic: MQTT levels are names, ``..`` is not a path."""
    topic = f"{BASE}/nodes/a/../b/status"
    with Client(fleet, fleet.creds["server"]) as server:
        assert server.subscribe(f"{BASE}/nodes/b/#") == 1
        with Client(fleet, fleet.creds["a"], reconnect=False) as a:
            a.publish(topic, b"hijack")
        sentinel_topic = f"{BASE}/nodes/ok/telemetry"
        assert server.subscribe(sentinel_topic) == 1
        sentinel(fleet, server)
        leaked = [t for t, _, _ in server.messages if t.startswith(f"{BASE}/nodes/b/")]
    survived = round_trip(fleet)
    TALLY.record("publish: nodes/a/../b/status", refused=not leaked, survived=survived)
    assert not leaked
    assert survived


# -- subscriptions --------------------------------------------------------------------------

SUBSCRIPTIONS = [
    f"{BASE}/nodes/b/cmd/#",
    f"{BASE}/nodes/b/cmd/restart",
    f"{BASE}/nodes/+/cmd/#",
    f"{BASE}/nodes/#",
    f"{BASE}/#",
    "#",
    f"$share/g/{BASE}/nodes/b/cmd/#",
    f"{BASE}/nodes/B/cmd/#",
]


@pytest.mark.parametrize("pattern", SUBSCRIPTIONS)
def test_subscribing_to_another_nodes_commands_delivers_nothing(fleet: Fleet, pattern: str) -> None:
    cmd = f"{BASE}/nodes/b/cmd/restart"
    own = f"{BASE}/nodes/a/cmd/restart"
    with (
        Client(fleet, fleet.creds["server"]) as server,
        Client(fleet, fleet.creds["b"]) as b,
        Client(fleet, fleet.creds["a"], reconnect=False) as a,
    ):
        a.subscribe(pattern)  # granted or not, nothing of b's may arrive
        assert a.subscribe(own) == 1
        assert b.subscribe(cmd) == 1
        secret = uuid.uuid4().hex.encode()
        assert server.publish(cmd, secret) < 0x80
        assert server.publish(f"{BASE}/nodes/B/cmd/restart", secret) < 0x80
        b.wait_message(cmd, secret)
        # One client's messages arrive in order: a's own command comes after b's ones.
        assert server.publish(own, b"mine") < 0x80
        a.wait_message(own, b"mine")
        leaked = [t for t, p, _ in a.messages if p == secret]
    survived = round_trip(fleet)
    TALLY.record(f"subscribe: {pattern}", refused=not leaked, survived=survived)
    assert not leaked, f"{pattern}: a received {leaked}"
    assert survived


def test_subscribing_to_another_nodes_retained_status_delivers_nothing(fleet: Fleet) -> None:
    status = f"{BASE}/nodes/b/status"
    with Client(fleet, fleet.creds["b"]) as b:
        assert b.publish(status, b"online", retain=True) < 0x80
    with Client(fleet, fleet.creds["a"], reconnect=False) as a:
        a.subscribe(status)
        a.subscribe(f"{BASE}/nodes/+/status")
        own = f"{BASE}/nodes/a/cmd/x"
        assert a.subscribe(own) == 1
        assert a.publish(own, b"after") < 0x80
        a.wait_message(own, b"after")  # retained messages are sent with the SUBACK
        leaked = a.received(status)
    survived = round_trip(fleet)
    TALLY.record("subscribe: b's retained status", refused=not leaked, survived=survived)
    assert not leaked
    assert survived


# -- retained overwrite and wills -----------------------------------------------------------


def retained(fleet: Fleet, topic: str) -> list[bytes]:
    """The retained message on ``topic``, as the server account sees it."""
    with Client(fleet, fleet.creds["server"]) as server:
        server.subscribe(topic)
        sentinel_topic = f"{BASE}/nodes/ok/telemetry"
        assert server.subscribe(sentinel_topic) == 1
        sentinel(fleet, server)
        return [p for t, p, r in server.messages if t == topic and r]


@pytest.mark.parametrize("payload", [b"offline", b""], ids=["overwrite", "delete"])
def test_a_node_cannot_overwrite_another_nodes_retained_status(
    fleet: Fleet, payload: bytes
) -> None:
    status = f"{BASE}/nodes/b/status"
    with Client(fleet, fleet.creds["b"]) as b:
        assert b.publish(status, b"online", retain=True) < 0x80
    with Client(fleet, fleet.creds["a"], reconnect=False) as a:
        code = a.publish(status, payload, retain=True)
    kept = retained(fleet, status) == [b"online"]
    survived = round_trip(fleet)
    what = "overwrite" if payload else "delete"
    TALLY.record(
        f"retained: {what} b's status", refused=code == NOT_AUTHORIZED and kept, survived=survived
    )
    assert code == NOT_AUTHORIZED
    assert kept, retained(fleet, status)
    assert survived


WILLS = [
    f"{BASE}/nodes/b/status",
    f"{BASE}/nodes/b/cmd/restart",
    f"{BASE}/releases/x86-64-avx2",
    "$SYS/broker/version",
]


@pytest.mark.parametrize("topic", WILLS)
def test_a_will_on_another_nodes_topic_is_never_published(fleet: Fleet, topic: str) -> None:
    status = f"{BASE}/nodes/b/status"
    with Client(fleet, fleet.creds["b"]) as b:
        assert b.publish(status, b"online", retain=True) < 0x80
    with Client(fleet, fleet.creds["server"]) as server:
        assert server.subscribe(topic) == 1
        assert server.subscribe(f"{BASE}/nodes/ok/telemetry") == 1
        log_start = len(fleet.log())
        raw = RawMqtt(fleet)
        code = raw.connect(fleet.creds["a"], b"will-a", will=(topic.encode(), b"hijacked"))
        raw.close()  # no DISCONNECT: the broker must now decide about the will
        # Mosquitto logs the lost connection where it sends (or drops) the will.
        wait_for(
            lambda: (
                re.search(
                    r"Client \S+ (closed its connection|disconnected)", fleet.log()[log_start:]
                )
                is not None
            ),
            TIMEOUT_S,
            "the broker to notice the dropped connection",
        )
        sentinel(fleet, server)
        leaked = [p for t, p, _ in server.messages if t == topic and p == b"hijacked"]
    kept = topic != status or retained(fleet, status) == [b"online"]
    survived = round_trip(fleet)
    refused = (code in BAD_LOGIN or code == 0) and not leaked and kept
    TALLY.record(f"will: {topic}", refused=refused, survived=survived)
    assert not leaked, f"a's will on {topic} was published"
    assert kept
    assert survived
