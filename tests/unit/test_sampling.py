"""Node sampling by stable keys: the same seed and round choose the same partitions."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from flwr.app import ConfigRecord, Error, Message, Metadata, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import given
from hypothesis import strategies as st

from edgeai.flower.sampling import (
    IDENTIFY,
    IDENTITY_KEY,
    NodeDirectory,
    NodeKey,
    identity_of,
    key_of,
    replies_in_order,
    sample_fixed,
    sample_poisson,
)


def _keys(partitions: Sequence[int], seed: int) -> dict[int, NodeKey]:
    # What the Simulation Engine does each run: a fresh random node id per partition.
    ids = random.Random(seed).sample(range(1, 2**62), len(partitions))  # noqa: S311
    return {
        node: key_of({"partition-id": p}, node) for node, p in zip(ids, partitions, strict=True)
    }


def _partitions(keys: dict[int, NodeKey], nodes: list[int]) -> list[int]:
    return [keys[n][1] for n in nodes]


@given(st.integers(0, 2**32), st.integers(1, 500), st.integers(2, 40), st.data())
def test_the_same_partitions_are_chosen_whatever_the_node_ids(
    seed: int, server_round: int, n: int, data: st.DataObject
) -> None:
    size = data.draw(st.integers(1, n))
    one, other = _keys(range(n), 1), _keys(range(n), 2)
    first = _partitions(one, sample_fixed(one, size, seed, server_round))
    assert first == _partitions(other, sample_fixed(other, size, seed, server_round))
    assert len(first) == size
    assert first == sorted(set(first))  # no repeats, in key order
    q = size / n
    assert _partitions(one, sample_poisson(one, q, seed, server_round)) == _partitions(
        other, sample_poisson(other, q, seed, server_round)
    )


def test_rounds_and_seeds_choose_differently_and_every_partition_gets_its_turn() -> None:
    keys = _keys(range(20), 0)
    picks = [tuple(sample_fixed(keys, 5, 7, r)) for r in range(1, 41)]
    assert len(set(picks)) > 30
    assert {n for p in picks for n in p} == set(keys)
    assert sample_fixed(keys, 5, 7, 1) != sample_fixed(keys, 5, 8, 1)
    assert sample_fixed(keys, 20, 7, 1) == sample_fixed(keys, 25, 7, 1)  # all of them
    counts = [len(sample_poisson(keys, 0.25, 7, r)) for r in range(1, 201)]
    assert 4.0 < sum(counts) / len(counts) < 6.0  # q·N = 5 on average
    assert len(set(counts)) > 3


def test_partition_ids_sort_as_numbers_before_names_before_node_ids() -> None:
    keys = {
        50: key_of({"partition-id": 10}, 50),
        40: key_of({"partition-id": 2}, 40),
        30: key_of({"node-name": "b"}, 30),
        20: key_of({"node-name": "a"}, 20),
        10: key_of({}, 10),
    }
    assert sample_fixed(keys, 5, 0, 1) == [40, 50, 20, 30, 10]
    assert identity_of({"partition-id": "3", "num-partitions": 9}) == {"partition-id": 3}
    assert identity_of({"node-name": "pi-1"}) == {"node-name": "pi-1"}
    assert identity_of({}) == {}


def _reply(src: int, content: RecordDict | None = None) -> Message:
    # A reply as the SuperLink hands it over: from `src`, to an identify query.
    meta = Metadata(0, f"r{src}", src, 0, f"q{src}", "", 0.0, 0.0, IDENTIFY)
    if content is None:  # a ClientApp without the `identify` query
        return Message(metadata=meta, error=Error(code=0, reason="no query"))
    return Message(metadata=meta, content=content)


def _said(partition: int) -> RecordDict:
    return RecordDict({IDENTITY_KEY: ConfigRecord({"partition-id": partition})})


def test_replies_are_aggregated_in_key_order_not_arrival_order() -> None:
    keys = {7: key_of({"partition-id": 1}, 7), 3: key_of({"partition-id": 0}, 3)}
    arrived = [_reply(9, RecordDict()), _reply(7, RecordDict()), _reply(3, RecordDict())]
    ordered = replies_in_order(arrived, keys)
    assert [m.metadata.src_node_id for m in ordered] == [3, 7, 9]  # unknown senders last


def test_the_directory_asks_each_node_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Flower stamps every Message with its process's run, node and task (a ServerApp's).
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    asked: list[list[int]] = []
    answers = {1: _said(4), 2: _said(3)}

    def ask(messages: Sequence[Message]) -> list[Message]:
        dst = [m.metadata.dst_node_id for m in messages]
        asked.append(dst)
        assert all(m.metadata.message_type == IDENTIFY for m in messages)
        # node 3 has no `identify` query (an error reply), node 4 never answers
        return [_reply(n, answers.get(n)) for n in dst if n != 4]

    directory = NodeDirectory(ask)
    keys = directory.keys_of([2, 1, 3, 4])
    assert keys == {1: (0, 4, ""), 2: (0, 3, ""), 3: (2, 3, ""), 4: (2, 4, "")}
    assert directory.keys_of([1, 2, 3, 4]) == keys
    assert asked == [[1, 2, 3, 4], [4]]  # the silent one is asked again, nobody else
    assert NodeDirectory().keys_of([5, 6]) == {5: (2, 5, ""), 6: (2, 6, "")}
