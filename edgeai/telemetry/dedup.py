"""Drop QoS 1 duplicates on the consumer side, in bounded memory.

QoS 1 is "at least once": a message is re-sent when its PUBACK was lost, and the outbox
re-sends everything unacknowledged after a restart.  Each envelope carries
``(node, boot_id, seq)`` with ``seq`` counting 1, 2, 3, ... within a boot, so a consumer keeps
per stream (node, boot) a *floor* (every seq at or below it has been seen) and the few seqs
seen above it.  Memory is bounded twice: at most ``window`` seqs above the floor per stream
(a gap older than that is taken as lost for good, e.g. dropped by the outbox bound), and at
most ``max_streams`` streams (least recently used forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict

from edgeai.telemetry.topics import WILL_SEQ, Envelope


class _Stream:
    __slots__ = ("floor", "seen", "will_seen")

    def __init__(self) -> None:
        self.floor = 0  # the outbox numbers from 1
        self.seen: set[int] = set()
        self.will_seen = False  # the last will has seq 0, outside the outbox's numbering


class Deduplicator:
    """Says whether an envelope is new, remembering a bounded amount of history.

    Parameters
    ----------
    window
        The most out-of-order seqs remembered per (node, boot) stream.
    max_streams
        The most (node, boot) streams remembered.
    """

    def __init__(self, window: int = 4096, max_streams: int = 10_000) -> None:
        if window < 1 or max_streams < 1:
            raise ValueError("window and max_streams must be ≥ 1")
        self.window = window
        self.max_streams = max_streams
        self._streams: OrderedDict[tuple[str, str], _Stream] = OrderedDict()

    def is_new(self, node: str, boot_id: str, seq: int) -> bool:
        """True the first time ``(node, boot_id, seq)`` is offered, False for a repeat."""
        key = (node, boot_id)
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream()
            if len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
        else:
            self._streams.move_to_end(key)
        if seq == WILL_SEQ:
            new, stream.will_seen = not stream.will_seen, True
            return new
        if seq <= stream.floor or seq in stream.seen:
            return False
        stream.seen.add(seq)
        if len(stream.seen) > self.window:
            # Give up on the oldest gap: raise the floor to the smallest seq still held.
            stream.floor = min(stream.seen) - 1
        while stream.floor + 1 in stream.seen:
            stream.floor += 1
            stream.seen.discard(stream.floor)
        return True

    def accept(self, envelope: Envelope) -> bool:
        """:meth:`is_new` for a decoded envelope."""
        return self.is_new(envelope.node, envelope.boot_id, envelope.seq)

    def __len__(self) -> int:
        return len(self._streams)
