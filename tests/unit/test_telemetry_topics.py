"""Topic builders/parsers and the envelope: round-trips and rejections, property-tested."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeai.telemetry import (
    Envelope,
    NodeTopics,
    TelemetryError,
    check_name,
    decode,
    fleet_filter,
    parse_topic,
    release_topic,
)

names = st.text(
    st.characters(blacklist_characters="+#/\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=40,
)
bad_names = st.one_of(
    st.just(""),
    st.builds(
        lambda a, c, b: a + c + b,
        st.text(max_size=5),
        st.sampled_from("+#/\x00"),
        st.text(max_size=5),
    ),
)


@settings(deadline=None)  # a shared CI core must not turn slowness into failure
@given(fleet=names, node=names, kind=names, cmd=names)
def test_node_topics_round_trip(fleet: str, node: str, kind: str, cmd: str) -> None:
    t = NodeTopics(fleet, node)
    assert t.status.startswith(f"edgeai/v1/{fleet}/nodes/{node}/")
    for topic, expected_kind, name in (
        (t.status, "status", None),
        (t.profile, "profile", None),
        (t.telemetry, "telemetry", None),
        (t.event(kind), "events", kind),
        (t.cmd(cmd), "cmd", cmd),
    ):
        parsed = parse_topic(topic)
        assert (parsed.fleet, parsed.node, parsed.kind, parsed.name) == (
            fleet,
            node,
            expected_kind,
            name,
        )


@settings(deadline=None)  # a shared CI core must not turn slowness into failure
@given(fleet=names, profile=names)
def test_release_topic_round_trip(fleet: str, profile: str) -> None:
    parsed = parse_topic(release_topic(fleet, profile))
    assert (parsed.fleet, parsed.kind, parsed.name, parsed.node) == (
        fleet,
        "releases",
        profile,
        None,
    )
    assert fleet_filter(fleet) == f"edgeai/v1/{fleet}/#"


@settings(deadline=None)  # a shared CI core must not turn slowness into failure
@given(bad=bad_names, good=names)
def test_bad_names_are_rejected_everywhere(bad: str, good: str) -> None:
    with pytest.raises(TelemetryError):
        check_name(bad)
    with pytest.raises(TelemetryError):
        NodeTopics(bad, good)
    with pytest.raises(TelemetryError):
        NodeTopics(good, bad)
    with pytest.raises(TelemetryError):
        NodeTopics(good, good).event(bad)
    with pytest.raises(TelemetryError):
        release_topic(good, bad)


@pytest.mark.parametrize(
    "topic",
    [
        "edgeai/v2/f/nodes/n/status",
        "edgeai/v1/f/nodes/n",
        "edgeai/v1/f/nodes/n/status/extra",
        "edgeai/v1/f/nodes/n/events",
        "edgeai/v1/f/nodes/n/unknown",
        "edgeai/v1/f/releases",
        "edgeai/v1/f/nodes/+/status",
        "edgeai/v1//nodes/n/status",
        "other/v1/f/nodes/n/status",
    ],
)
def test_parse_rejects_foreign_topics(topic: str) -> None:
    with pytest.raises(TelemetryError):
        parse_topic(topic)


def test_long_names_are_rejected() -> None:
    check_name("x" * 128)
    with pytest.raises(TelemetryError, match="128"):
        check_name("x" * 129)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(deadline=None)  # a shared CI core must not turn slowness into failure
@given(
    node=names,
    boot=st.text(min_size=1, max_size=32),
    seq=st.integers(0, 2**62),
    ts=st.floats(0, 4e9),
    body=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)
def test_envelope_round_trip(
    node: str, boot: str, seq: int, ts: float, body: dict[str, object]
) -> None:
    env = Envelope(node, boot, seq, ts, body)
    back = decode(env.encode())
    assert back == env
    assert back.key == (node, boot, seq)


@pytest.mark.parametrize(
    "doc",
    [
        "not json",
        "[]",
        {"schema": 2, "node": "n", "boot_id": "b", "seq": 1, "ts": 1.0, "body": {}},
        {"schema": 1, "node": "n/x", "boot_id": "b", "seq": 1, "ts": 1.0, "body": {}},
        {"schema": 1, "node": "n", "boot_id": "", "seq": 1, "ts": 1.0, "body": {}},
        {"schema": 1, "node": "n", "boot_id": "b", "seq": -1, "ts": 1.0, "body": {}},
        {"schema": 1, "node": "n", "boot_id": "b", "seq": True, "ts": 1.0, "body": {}},
        {"schema": 1, "node": "n", "boot_id": "b", "seq": 1, "ts": "now", "body": {}},
        {"schema": 1, "node": "n", "boot_id": "b", "seq": 1, "ts": 1.0, "body": []},
        {"schema": 1, "node": "n", "boot_id": "b", "seq": 1, "ts": 1.0},
    ],
)
def test_decode_rejects_bad_payloads(doc: object) -> None:
    raw = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(TelemetryError):
        decode(raw.encode())


def test_non_json_bodies_are_refused_when_encoding() -> None:
    with pytest.raises(TelemetryError, match="plain JSON"):
        Envelope("n", "b", 1, 0.0, {"x": float("nan")}).encode()
    with pytest.raises(TelemetryError, match="plain JSON"):
        Envelope("n", "b", 1, 0.0, {"x": object()}).encode()
