"""Private names of dependencies we rely on: each test fails loudly when one moves.

pyproject.toml pins paho-mqtt and zeroconf to the minor version these pass on; when a pin is
raised, these say what to re-check, where (Flower's seam is tested in test_warm_exec.py).
"""

from __future__ import annotations

import collections
import importlib
import inspect
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from zeroconf import BadTypeInNameException, DNSCache, DNSOutgoing, current_time_millis

from edgeai.telemetry.mqtt import _Client

MQTT_PY = "edgeai/telemetry/mqtt.py"
DISCOVERY = "edgeai/discovery/engine.py and config.py"


def moved(dist: str, name: str, where: str, detail: str = "") -> str:
    """The failure message: which release moved what, and the file to re-check."""
    return f"{dist} {version(dist)} moved `{name}`; re-check {where}" + (
        f" ({detail})" if detail else ""
    )


def private(module: str, name: str, dist: str, where: str) -> Any:
    """``module.name``, or a failure naming the release and the file that relies on it."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(moved(dist, f"{module}.{name}", where, str(exc)))


# -- paho-mqtt: _Client in edgeai/telemetry/mqtt.py ---------------------------------------


@pytest.fixture
def client() -> paho.Client:
    return paho.Client(CallbackAPIVersion.VERSION2, client_id="private-api", protocol=paho.MQTTv5)


def test_paho_packet_queue_keeps_its_signature() -> None:
    method = getattr(paho.Client, "_packet_queue", None)
    assert callable(method), moved("paho-mqtt", "Client._packet_queue", MQTT_PY)
    params = list(inspect.signature(method).parameters)
    assert params == ["self", "command", "packet", "mid", "qos", "info"], moved(
        "paho-mqtt", "Client._packet_queue", MQTT_PY, f"its parameters are now {params}"
    )
    # Our override must still be the one paho's publish path calls.
    assert _Client._packet_queue is not paho.Client._packet_queue


@pytest.mark.parametrize(
    ("name", "kind"),
    [("_sockpairW", type(None)), ("_thread", type(None)), ("_out_packet", collections.deque)],
)
def test_paho_client_attributes_exist_before_connecting(
    client: paho.Client, name: str, kind: type
) -> None:
    assert hasattr(client, name), moved("paho-mqtt", f"Client.{name}", MQTT_PY)
    value = getattr(client, name)
    assert isinstance(value, kind), moved(
        "paho-mqtt", f"Client.{name}", MQTT_PY, f"a fresh client holds {type(value).__name__}"
    )


def test_paho_out_packet_entries_have_the_shape_we_merge_into(client: paho.Client) -> None:
    packet = bytearray(b"\x32\x05abcde")
    client._packet_queue(paho.PUBLISH, packet, 7, 1)  # not connected: it stays queued
    entry = client._out_packet[-1]
    expected = {"command": paho.PUBLISH, "qos": 1, "pos": 0, "to_process": len(packet)}
    got = {key: entry.get(key) for key in expected}
    assert got == expected, moved("paho-mqtt", "Client._out_packet", MQTT_PY, f"entry {entry}")
    assert entry.get("packet") is packet, moved(
        "paho-mqtt", "Client._out_packet", MQTT_PY, "the packet is no longer kept as given"
    )


def test_paho_still_writes_queued_packets_in_packet_write() -> None:
    # _Client's merge is safe because only _packet_write (on the network thread) pops entries.
    assert callable(getattr(paho.Client, "_packet_write", None)), moved(
        "paho-mqtt", "Client._packet_write", MQTT_PY
    )


# -- zeroconf: edgeai/discovery ------------------------------------------------------------


def test_zeroconf_generate_service_query_builds_a_ptr_query_and_suppresses_repeats() -> None:
    build = private("zeroconf._services.browser", "generate_service_query", "zeroconf", DISCOVERY)
    history = private("zeroconf._history", "QuestionHistory", "zeroconf", DISCOVERY)
    zc = SimpleNamespace(cache=DNSCache(), question_history=history())
    now = current_time_millis()
    service = "_edgeai._tcp.local."
    try:
        out = build(zc, now, {service}, True, None)
        again = build(zc, now + 10, {service}, True, None)
    except (TypeError, AttributeError) as exc:
        pytest.fail(moved("zeroconf", "generate_service_query", DISCOVERY, str(exc)))
    assert all(isinstance(o, DNSOutgoing) for o in out), moved(
        "zeroconf", "generate_service_query", DISCOVERY, f"it returned {out!r}"
    )
    questions = [(q.name, q.type, q.unicast) for o in out for q in o.questions]
    assert questions == [(service, 12, False)], moved(
        "zeroconf", "generate_service_query", DISCOVERY, f"questions {questions}"
    )
    # Duplicate question suppression (RFC 6762 §7.3) is why we use it instead of our own query.
    assert again == [], moved(
        "zeroconf", "generate_service_query", DISCOVERY, "a repeat within 1 s was sent again"
    )


def test_zeroconf_service_type_name_validates_types() -> None:
    check = private("zeroconf._utils.name", "service_type_name", "zeroconf", DISCOVERY)
    assert check("_edgeai._tcp.local.") == "_edgeai._tcp.local."
    with pytest.raises(BadTypeInNameException):
        check("not a service type")


def test_zeroconf_get_all_addresses_lists_ipv4_strings() -> None:
    addresses = private("zeroconf._utils.net", "get_all_addresses", "zeroconf", DISCOVERY)()
    assert isinstance(addresses, list), moved("zeroconf", "get_all_addresses", DISCOVERY)
    assert all(isinstance(a, str) and a.count(".") == 3 for a in addresses), moved(
        "zeroconf", "get_all_addresses", DISCOVERY, f"it returned {addresses!r}"
    )
