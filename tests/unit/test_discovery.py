"""Discovery's pure parts: TXT records, config, the re-query timer, the directory."""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeai.configfile import parse
from edgeai.discovery import (
    AgentInfo,
    Directory,
    Discovery,
    DiscoveryConfig,
    DiscoveryError,
    MemoryDiscovery,
    MemoryLan,
    Peer,
    Ports,
    ServerInfo,
    decode_txt,
    encode_txt,
    parse_agent_txt,
    parse_server_txt,
)
from edgeai.discovery.engine import PeriodicTask
from edgeai.discovery.records import agent_txt, server_txt, split_host_port
from edgeai.errors import ConfigError

SERVER = ServerInfo(
    fleet="lab",
    superlink="10.0.0.5:9092",
    artifact_url="https://10.0.0.5:8443/repo/",
    mqtt_url="mqtts://broker.lan:8883",
    version="0.1.0",
)
AGENT = AgentInfo(
    node="pi-7",
    fleet="lab",
    profile="rpi5",
    model_version="3",
    ports=Ports(grpc=8001, http=8000, artifact=8080),
)


def _txt(*items: bytes) -> bytes:
    return b"".join(bytes([len(i)]) + i for i in items)


# --- TXT records ------------------------------------------------------------------------


def test_server_txt_round_trip() -> None:
    data = server_txt(SERVER)
    assert data.startswith(b"\x09txtvers=1")  # RFC 6763 §6.7: version key first
    parsed = parse_server_txt(data, name="x._edgeai._tcp.local.", addresses=("10.0.0.5",))
    assert parsed is not None
    assert parsed.superlink == SERVER.superlink
    assert parsed.artifact_url == SERVER.artifact_url
    assert parsed.mqtt_url == SERVER.mqtt_url
    assert (parsed.fleet, parsed.version, parsed.addresses) == ("lab", "0.1.0", ("10.0.0.5",))
    assert parsed.superlink_port == 9092


def test_agent_txt_round_trip_and_absent_fields() -> None:
    assert parse_agent_txt(agent_txt(AGENT)) == AGENT
    bare = AgentInfo(node="n", fleet="lab", profile="rpi4")
    data = agent_txt(bare)
    assert b"model_version" not in data
    assert b"port" not in data
    assert parse_agent_txt(data) == bare


def test_decode_txt_rules() -> None:
    data = _txt(b"txtvers=1", b"Fleet=first", b"fleet=second", b"flag", b"bad=\xff", b"")
    # keys are case-insensitive and the first occurrence wins (RFC 6763 §6.4); a key
    # without '=' or a value that is not UTF-8 is skipped; empty strings are allowed
    assert decode_txt(data) == {"txtvers": "1", "fleet": "first"}
    assert decode_txt(b"") == {}
    assert decode_txt(b"\x05abc") is None  # length runs past the end


@pytest.mark.parametrize(
    "change",
    [
        {"txtvers": "2"},  # another schema
        {"superlink": "10.0.0.5"},  # no port
        {"superlink": "10.0.0.5:99999"},
        {"artifact_url": "ftp://x/"},
        {"mqtt_url": "mqtt://"},  # no host
        {"fleet": "has space"},
        {"version": ""},
    ],
)
def test_server_txt_with_a_bad_field_is_ignored(change: dict[str, str]) -> None:
    pairs = decode_txt(server_txt(SERVER))
    assert pairs is not None
    assert parse_server_txt(_raw(pairs)) is not None  # the unchanged record is fine
    assert parse_server_txt(_raw({**pairs, **change})) is None


def _raw(pairs: dict[str, str]) -> bytes:
    return _txt(*(f"{k}={v}".encode() for k, v in pairs.items()))


@pytest.mark.parametrize(
    "change",
    [
        {"grpc_port": "0"},
        {"http_port": "80a"},
        {"artifact_port": "٣"},
        {"node": ""},
        {"node": "a/b"},
    ],
)
def test_agent_txt_with_a_bad_field_is_ignored(change: dict[str, str]) -> None:
    pairs = decode_txt(agent_txt(AGENT))
    assert pairs is not None
    assert parse_agent_txt(_raw(pairs)) is not None
    assert parse_agent_txt(_raw({**pairs, **change})) is None


def test_missing_required_key_is_ignored() -> None:
    assert parse_agent_txt(encode_txt({"node": "n", "fleet": "lab"})) is None
    assert parse_server_txt(encode_txt({"fleet": "lab"})) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_parse_to_a_record_or_none(data: bytes) -> None:
    pairs = decode_txt(data)
    assert pairs is None or isinstance(pairs, dict)
    assert parse_server_txt(data) is None or isinstance(parse_server_txt(data), ServerInfo)
    assert parse_agent_txt(data) is None or isinstance(parse_agent_txt(data), AgentInfo)


_values = st.text(max_size=40)
_keys = st.sampled_from(
    ["txtvers", "node", "fleet", "profile", "model_version", "grpc_port", "http_port",
     "artifact_port", "superlink", "artifact_url", "mqtt_url", "version"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values))
def test_random_fields_parse_to_a_valid_record_or_none(pairs: dict[str, str]) -> None:
    # Well-framed TXT data with our keys and random values: the hard case for validation.
    data = _raw({"txtvers": "1", **pairs})
    server = parse_server_txt(data)
    if server is not None:  # whatever comes back re-encodes: it passed validation
        assert parse_server_txt(server_txt(server)) == server
    agent = parse_agent_txt(data)
    if agent is not None:
        assert parse_agent_txt(agent_txt(agent)) == agent


_name = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
_port = st.none() | st.integers(1, 65535)
_agents = st.builds(
    AgentInfo,
    node=_name,
    fleet=_name,
    profile=_name,
    model_version=st.none() | _name,
    ports=st.builds(Ports, grpc=_port, http=_port, artifact=_port),
)


@settings(max_examples=100, deadline=None)
@given(_agents)
def test_every_valid_agent_round_trips(info: AgentInfo) -> None:
    assert parse_agent_txt(agent_txt(info)) == info


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Ports(grpc=0), "grpc port 0 is not a TCP port"),
        (lambda: Ports(http=True), "http port True is not a TCP port"),
        (lambda: AgentInfo(node="a b", fleet="lab", profile="p"), "node 'a b'"),
        (lambda: AgentInfo(node="n", fleet="lab", profile="p", model_version=3), "model_version"),
        (lambda: AgentInfo(node="n", fleet="lab", profile="p", addresses=["1.2.3.4"]), "tuple"),
        (lambda: ServerInfo("lab", "h:1", "http://h/", "http://h/", "1"), "mqtt_url"),
        (lambda: ServerInfo("lab", "h:1", "http://[::1/", "mqtt://h", "1"), "artifact_url"),
    ],
    ids=["port-0", "port-bool", "node", "model-version", "addresses", "mqtt", "ipv6-url"],
)
def test_invalid_fields_are_rejected_with_the_fix(make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        make()  # type: ignore[operator]


def test_split_host_port() -> None:
    assert split_host_port("[fd00::1]:9092") == ("fd00::1", 9092)
    assert split_host_port("server.lan:1") == ("server.lan", 1)
    for bad in ("server.lan", ":9092", "a b:1", "h:0", "h:-1"):
        with pytest.raises(ConfigError, match=r"HOST:PORT|white space"):
            split_host_port(bad)


def test_encode_refuses_a_string_longer_than_255_bytes() -> None:
    with pytest.raises(ConfigError, match="limit is 255"):
        encode_txt({"artifact_url": "x" * 250})


# --- config ---------------------------------------------------------------------------


def test_config_defaults_and_errors_name_the_field() -> None:
    config = DiscoveryConfig()
    assert (config.server_type, config.agent_type) == (
        "_edgeai._tcp.local.",
        "_edgeai-agent._tcp.local.",
    )
    assert config.requery_interval_s == 10.0
    with pytest.raises(ConfigError, match=r"server_type = 'edgeai\.local\.'.*_edgeai\._tcp"):
        parse(DiscoveryConfig, {"server_type": "edgeai.local."}, "agent.toml")
    with pytest.raises(ConfigError, match=r"interfaces.*not an IP address"):
        parse(DiscoveryConfig, {"interfaces": ["eth0"]}, "agent.toml")
    with pytest.raises(ConfigError, match="requery_interval_s"):
        parse(DiscoveryConfig, {"requery_interval_s": 0}, "agent.toml")
    assert parse(DiscoveryConfig, {"requery_interval_s": None}, "x").requery_interval_s is None


# --- the re-query timer -----------------------------------------------------------------


def test_periodic_task_waits_an_interval_with_jitter_then_acts() -> None:
    calls: list[str] = []
    delays: list[float] = []

    def wait(delay: float) -> bool:  # an injected clock: no real time passes
        delays.append(delay)
        return len(delays) > 3  # stop on the 4th wait

    def action() -> None:
        calls.append("q")
        if len(calls) == 2:
            raise OSError("network down")  # must not end the schedule

    task = PeriodicTask(action, 10.0, name="t", jitter=0.1, rng=random.Random(1), wait=wait)  # noqa: S311
    task.run()
    assert calls == ["q", "q", "q"]
    assert len(delays) == 4
    assert all(10.0 <= d <= 11.0 for d in delays)
    assert len(set(delays)) > 1  # jittered, so a fleet does not query in lock-step


def test_periodic_task_thread_runs_and_stops() -> None:
    ticked = threading.Event()
    task = PeriodicTask(ticked.set, 0.01, name="edgeai-test-periodic")
    task.start()
    assert ticked.wait(5)
    task.stop()
    assert "edgeai-test-periodic" not in {t.name for t in threading.enumerate()}
    with pytest.raises(ValueError, match="interval_s"):
        PeriodicTask(ticked.set, 0, name="x")


# --- the directory ----------------------------------------------------------------------


def _peer(name: str, node: str, fleet: str = "lab") -> Peer:
    return Peer(name, node, fleet, "rpi5", None, (), Ports(), 0.0)


def test_directory_filters_by_fleet_and_excludes_self() -> None:
    d = Directory()
    d.put_peer(_peer("b.x", "b"))
    d.put_peer(_peer("a.x", "a"))
    d.put_peer(_peer("c.x", "c", fleet="other"))
    assert [p.node for p in d.peers("lab")] == ["a", "b"]
    assert [p.node for p in d.peers(None, exclude="a.x")] == ["b", "c"]
    d.remove("b.x")
    assert [p.node for p in d.peers("lab")] == ["a"]


def test_wait_server_returns_as_soon_as_one_arrives() -> None:
    d = Directory()
    assert d.wait_server("lab", 0.01) is None
    other = ServerInfo("other", "h:1", "http://h/", "mqtt://h", "1", name="o")
    ours = ServerInfo("lab", "h:1", "http://h/", "mqtt://h", "1", name="s")
    arrived = threading.Event()

    def later() -> None:
        d.put_server(other)
        d.put_server(ours)
        arrived.set()

    timer = threading.Timer(0.05, later)
    timer.start()
    try:
        found = d.wait_server("lab", 30)  # would take 30 s if the wake-up were missing
    finally:
        timer.join()
    assert arrived.is_set()
    assert found == ours
    assert d.servers(None) == [other, ours]


def test_discovery_refuses_use_before_start() -> None:
    discovery = Discovery(DiscoveryConfig())
    with pytest.raises(DiscoveryError, match="start"):
        discovery.find_server(0.01)
    with pytest.raises(DiscoveryError, match="start"):
        discovery.advertise_agent(AGENT)
    with pytest.raises(DiscoveryError, match="advertise_agent"):
        discovery.update_agent(model_version="4")
    assert discovery.peers() == []
    discovery.close()
    discovery.close()  # idempotent


# --- the in-memory LAN (for the agent's unit tests) ---------------------------------------


def test_memory_lan_behaves_like_discovery() -> None:
    lan = MemoryLan(clock=lambda: 42.0)
    a, b = MemoryDiscovery(lan, fleet="lab"), MemoryDiscovery(lan)
    a.start()
    b.start()
    assert a.find_server(0.01) is None
    name = lan.advertise_server(SERVER)
    assert a.find_server(1) == b.servers()[0]
    assert a.servers()[0].name == name == "edgeai-lab._edgeai._tcp.local."

    assert a.advertise_agent(AGENT) == "pi-7._edgeai-agent._tcp.local."
    assert b.advertise_agent(AGENT) == "pi-7-2._edgeai-agent._tcp.local."  # renamed
    assert [p.name for p in a.peers()] == ["pi-7-2._edgeai-agent._tcp.local."]
    b.update_agent(model_version="4")
    assert [(p.model_version, p.last_seen) for p in a.peers()] == [("4", 42.0)]
    with pytest.raises(ConfigError, match="cannot update"):
        b.update_agent(colour="red")
    with pytest.raises(ConfigError, match="model_version"):
        b.update_agent(model_version="not valid")

    b.close()
    assert a.peers() == []
    lan.withdraw(name)
    assert a.servers() == []
    with pytest.raises(DiscoveryError, match="start"):
        b.find_server(0.01)
