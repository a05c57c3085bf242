"""Discovery over real mDNS on 127.0.0.1: several Zeroconf instances in one process.

Every test uses service types unique to the run, so parallel runs and other mDNS traffic
on the machine do not interfere.  A sniffer socket joined to 224.0.0.251 sees the
queries on the wire, which is how the re-query test shows what the library itself sends.
"""

from __future__ import annotations

import asyncio
import secrets
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import psutil
import pytest
from zeroconf import DNSIncoming, ServiceInfo, Zeroconf

from edgeai.discovery import (
    AgentInfo,
    Discovery,
    DiscoveryConfig,
    FederationAdvert,
    Ports,
    ServerInfo,
)
from edgeai.discovery.engine import open_zeroconf
from edgeai.discovery.records import server_txt

pytestmark = pytest.mark.integration

MDNS_GROUP, MDNS_PORT = "224.0.0.251", 5353
# One loopback address per simulated device (all of 127.0.0.0/8 is on ``lo``).
DEVICE_ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
T = TypeVar("T")

SERVER = ServerInfo(
    fleet="lab",
    superlink="127.0.0.1:9092",
    artifact_url="http://127.0.0.1:8080/repo/",
    mqtt_url="mqtt://127.0.0.1:1883",
    version="0.1.0",
)


def _eventually(probe: Callable[[], T], timeout_s: float, interval_s: float = 0.05) -> T:
    """Poll ``probe`` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


def _join_group(sock: socket.socket) -> None:
    membership = socket.inet_aton(MDNS_GROUP) + socket.inet_aton("127.0.0.1")
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)


@pytest.fixture(scope="module", autouse=True)
def _loopback_multicast() -> None:
    """Skip, with the reason and the fix, where multicast on loopback does not work.

    Zeroconf sets IP_MULTICAST_IF to the interface address and IP_MULTICAST_LOOP, which
    works here even though ``lo`` lacks the MULTICAST flag; other kernels may need it.
    Checked from every loopback address a test uses as a device's own address.
    """
    fix = "as root: ip link set lo multicast on; ip route add 224.0.0.0/4 dev lo"
    for address in DEVICE_ADDRESSES:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
        ):
            try:
                rx.bind((MDNS_GROUP, 0))
                _join_group(rx)
                tx.bind((address, 0))
                tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
                tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
                tx.sendto(b"edgeai-probe", (MDNS_GROUP, rx.getsockname()[1]))
            except OSError as exc:
                pytest.skip(f"multicast from {address} is not available ({exc}); {fix}")
            if not select.select([rx], [], [], 2.0)[0]:
                pytest.skip(f"a multicast datagram from {address} did not loop back; {fix}")


def _config(tag: str = "", *, requery_interval_s: float | None = 0.5) -> DiscoveryConfig:
    # Service names are at most 15 characters (RFC 6335): "e" + 12 hex + tag + role.
    unique = "e" + secrets.token_hex(6) + tag
    return DiscoveryConfig(
        server_type=f"_{unique}s._tcp.local.",
        agent_type=f"_{unique}a._tcp.local.",
        interfaces=("127.0.0.1",),
        ip_version="v4",
        requery_interval_s=requery_interval_s,
        resolve_timeout_s=2.0,
    )


@pytest.fixture
def closing() -> Iterator[list[Discovery | FederationAdvert]]:
    """Close everything a test opened, even when it fails."""
    opened: list[Discovery | FederationAdvert] = []
    yield opened
    for item in reversed(opened):
        item.close()


def _on_address(config: DiscoveryConfig, address: str) -> DiscoveryConfig:
    """The same service types, with mDNS bound to ``address``: one device of a LAN."""
    return config.model_copy(update={"interfaces": (address,)})


def _agent(config: DiscoveryConfig, opened: list[Discovery | FederationAdvert]) -> Discovery:
    discovery = Discovery(config)
    opened.append(discovery)
    discovery.start()
    return discovery


def test_agent_finds_the_server_and_its_txt_fields(
    closing: list[Discovery | FederationAdvert],
) -> None:
    config = _config()
    advert = FederationAdvert(config)
    closing.append(advert)
    name = advert.advertise(SERVER)
    agent = _agent(config, closing)

    started = time.monotonic()
    found = agent.find_server(timeout_s=10)
    assert found is not None, "the agent did not find the advertised server within 10 s"
    assert time.monotonic() - started < 5  # returns when found, not at the deadline
    assert found.name == name == f"edgeai-lab.{config.server_type}"
    assert (found.fleet, found.superlink, found.version) == ("lab", "127.0.0.1:9092", "0.1.0")
    assert (found.artifact_url, found.mqtt_url) == (SERVER.artifact_url, SERVER.mqtt_url)
    assert found.addresses == ("127.0.0.1",)
    assert agent.find_server(timeout_s=0.2, fleet="elsewhere") is None

    advert.update(version="0.2.0")
    assert _eventually(lambda: [s.version for s in agent.servers()] == ["0.2.0"], 10)

    advert.close()  # goodbye packets (TTL 0) take the server out of the table
    assert _eventually(lambda: agent.servers() == [], 10), agent.servers()


def test_two_agents_see_each_other_and_a_new_model_version(
    closing: list[Discovery | FederationAdvert],
) -> None:
    """Three devices, each with its own address, as on a real LAN.

    On one shared address the renaming would be left to chance: python-zeroconf probes
    with QU questions (``Zeroconf.generate_service_query`` in ``zeroconf/_core.py``, RFC
    6762 §8.1) and the owner of the name defends it by unicast only once it has multicast
    the record recently (``_QueryResponse.add_qu_question_response`` in
    ``zeroconf/_handlers/query_handler.py``), to 127.0.0.1:5353, where every instance's
    responder socket is bound with SO_REUSEPORT; the kernel hands each such datagram to
    one socket of the group, by a hash, so the prober hears the defence only by chance
    (see docs/DISCOVERY.md, "Several responders on one address").
    """
    config = _config()
    a = _agent(_on_address(config, DEVICE_ADDRESSES[0]), closing)
    b = _agent(_on_address(config, DEVICE_ADDRESSES[1]), closing)
    a.advertise_agent(
        AgentInfo("pi-1", "lab", "rpi5", "1", Ports(grpc=8001, http=8000, artifact=8080))
    )
    b.advertise_agent(AgentInfo("nuc-2", "lab", "x86-64-avx2", None, Ports(grpc=9001)))

    seen_by_b = _eventually(b.peers, 10)
    seen_by_a = _eventually(a.peers, 10)
    assert [(p.node, p.profile, p.model_version) for p in seen_by_b] == [("pi-1", "rpi5", "1")]
    assert seen_by_b[0].ports == Ports(grpc=8001, http=8000, artifact=8080)
    assert seen_by_b[0].addresses == ("127.0.0.1",)
    assert [(p.node, p.profile, p.model_version) for p in seen_by_a] == [
        ("nuc-2", "x86-64-avx2", None)
    ]
    assert seen_by_a[0].ports == Ports(grpc=9001)
    assert seen_by_a[0].addresses == ("127.0.0.2",)

    before = seen_by_b[0].last_seen
    a.update_agent(model_version="2")
    updated = _eventually(lambda: [p for p in b.peers() if p.model_version == "2"], 10)
    assert updated, f"b never saw version 2: {b.peers()}"
    assert updated[0].last_seen >= before

    # A second node with the same name is renamed by probing, and both stay visible.
    c = _agent(_on_address(config, DEVICE_ADDRESSES[2]), closing)
    name_c = c.advertise_agent(AgentInfo("pi-1", "lab", "rpi4"))
    assert name_c == f"pi-1-2.{config.agent_type}"
    assert _eventually(lambda: len(b.peers()) == 2, 10), b.peers()
    assert {(p.profile, p.addresses) for p in b.peers()} == {
        ("rpi5", ("127.0.0.1",)),
        ("rpi4", ("127.0.0.3",)),
    }


@dataclass
class _Sniffer:
    """Counts the mDNS PTR questions on 127.0.0.1, by service type, with their times."""

    sock: socket.socket
    questions: dict[str, list[float]]

    @classmethod
    def open(cls) -> _Sniffer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Bound to the group address, not 0.0.0.0, so it never takes unicast replies
        # meant for the Zeroconf sockets sharing port 5353 through SO_REUSEPORT.
        sock.bind((MDNS_GROUP, MDNS_PORT))
        _join_group(sock)
        sock.setblocking(False)
        return cls(sock, {})

    def count(self, service_type: str, since: float = 0.0) -> int:
        self._drain()
        return sum(1 for t in self.questions.get(service_type, []) if t >= since)

    def _drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(9000)
            except BlockingIOError:
                return
            message = DNSIncoming(data)
            if message.is_query():
                for question in message.questions:
                    self.questions.setdefault(question.name, []).append(time.monotonic())


def _add_silently(zc: Zeroconf, info: ServiceInfo) -> None:
    """Register without announcing: like a server whose announcements we missed.

    ``registry.async_add`` is the step of ``Zeroconf.async_register_service`` that makes
    it answer queries; the probes and announcements around it are skipped.
    """
    assert zc.loop is not None

    async def add() -> None:
        zc.registry.async_add(info)

    asyncio.run_coroutine_threadsafe(add(), zc.loop).result(5)


def test_a_server_appearing_late_is_found_only_with_requery(
    closing: list[Discovery | FederationAdvert],
) -> None:
    """The library stops asking after 4 start-up queries (~14 s); re-query finds it.

    Two agents start together before any server exists: ``control`` without re-query
    (types T1), ``requery`` asking every 0.5 s (types T2, so that answers to its
    queries cannot reach the control's browser).  After the library's schedule is over,
    a server appears on both types without announcing itself.
    """
    sniffer = _Sniffer.open()
    try:
        control_config = _config("c", requery_interval_s=None)
        requery_config = _config("r", requery_interval_s=0.5)
        control = _agent(control_config, closing)
        requery = _agent(requery_config, closing)
        t1 = control_config.server_type

        # python-zeroconf 0.154 _services/browser.py: STARTUP_QUERIES = 4, sent ~20-120 ms
        # after start and then 1, 4 and 9 s apart (call_later(sent**2)); after that
        # QueryScheduler only refreshes records already in the cache.
        assert _eventually(lambda: sniffer.count(t1) >= 4, 30), sniffer.questions
        startup_over = time.monotonic()

        server_zc = open_zeroconf(control_config)
        try:
            for config in (control_config, requery_config):
                _add_silently(
                    server_zc,
                    ServiceInfo(
                        config.server_type,
                        f"late.{config.server_type}",
                        port=9092,
                        properties=server_txt(SERVER),
                        server="late-server.local.",
                        parsed_addresses=["127.0.0.1"],
                    ),
                )
            appeared = time.monotonic()

            found = _eventually(requery.servers, 5)
            assert found, "the re-querying agent did not find the late server within 5 s"
            assert found[0].superlink == SERVER.superlink
            # Give the control a fair chance too (four re-query intervals); it hears
            # nothing because nobody asks for T1 any more.
            assert not _eventually(control.servers, 2.0)
            assert sniffer.count(t1, since=startup_over) == 0
            assert sniffer.count(requery_config.server_type, since=appeared) >= 1

            control.requery()  # one question is all the control was missing
            assert _eventually(control.servers, 5), "asked explicitly, the control found nothing"
        finally:
            server_zc.close()
    finally:
        sniffer.sock.close()


def _udp_sockets() -> Counter[tuple[str, int]]:
    return Counter(tuple(c.laddr) for c in psutil.Process().net_connections(kind="udp4"))


def test_close_leaves_no_threads_and_no_sockets() -> None:
    before = set(threading.enumerate())
    sockets_before = _udp_sockets()
    config = _config()
    advert = FederationAdvert(config)
    agent = Discovery(config)
    try:
        advert.advertise(SERVER)
        agent.start()
        agent.advertise_agent(AgentInfo("pi-1", "lab", "rpi5"))
        assert agent.find_server(10) is not None
        assert set(threading.enumerate()) - before  # zeroconf, browser, re-query threads
        assert _udp_sockets() - sockets_before  # the mDNS sockets
    finally:
        agent.close()
        advert.close()
    assert set(threading.enumerate()) - before == set()
    assert _udp_sockets() - sockets_before == Counter()
    agent.close()  # idempotent
    advert.close()
