"""What a server receives, recorded: for tests and benches of distributed DP over SecAgg+.

:class:`RecordingGrid` wraps the grid a ServerApp is given and keeps a copy of every
reply that reaches the server and the protobuf size of every message both ways: the
test that an individual update cannot be read from anything the server received
(``tests/integration/test_distributed_dp.py``) and the SecAgg+ overhead bench
(``bench/bench_secaggplus.py``) read it. Distributed DP itself is
:mod:`edgeai.flower.distributed`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid

from edgeai.flower.grids import ForwardingGrid


@dataclass
class ServerView:
    """Everything the server received in a run, and the bytes both ways."""

    # Copies as they arrived (the workflows empty the records they consume).
    received: list[Message] = field(default_factory=list)
    bytes_down: int = 0
    bytes_up: int = 0


class RecordingGrid(ForwardingGrid):
    """A grid that forwards to Flower's and records what crosses it (sizes, replies)."""

    def __init__(self, inner: Grid, view: ServerView) -> None:
        super().__init__(inner)
        self.view = view

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        batch = list(messages)
        self.view.bytes_down += sum(message_to_proto(m).ByteSize() for m in batch)
        return self.inner.push_messages(batch)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return self._record(self.inner.pull_messages(message_ids))

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        batch = list(messages)
        self.view.bytes_down += sum(message_to_proto(m).ByteSize() for m in batch)
        return self._record(self.inner.send_and_receive(batch, timeout=timeout))

    def _record(self, replies: Iterable[Message]) -> list[Message]:
        got = list(replies)
        for reply in got:
            proto = message_to_proto(reply)
            self.view.bytes_up += proto.ByteSize()
            self.view.received.append(message_from_proto(proto))
        return got
