"""A heterogeneous simulated fleet: device classes, links, availability, a round deadline.

``[simulation.fleet] mix`` assigns a device profile to every client (shares rounded by
largest remainder, clients shuffled by the experiment's seed). Each round:

- a client is online with its profile's ``availability`` (an independent draw per
  client and round, seeded by (seed, round)); offline clients are not among the grid's
  nodes that round, so the strategy never samples them;
- a trained client's simulated time is download + compute + upload: the weights'
  bytes over the profile's downlink and uplink, and its samples trained
  (``steps`` * batch size) * ``sample_seconds`` / ``relative_compute``;
- a reply later than ``round_deadline_s`` is dropped: it reaches the strategy as an error
  reply (code :data:`DEADLINE_MISSED`), so it is counted as failed and left out of the
  aggregate; with DP-SGD its spend is already in its ledger (it trained);
- the round's simulated time is its slowest kept reply, or the deadline when any missed.

:class:`FleetGrid` wraps any Flower ``Grid`` (the vmap grid or the Simulation Engine's),
so both backends simulate the same fleet.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from edgeai.errors import SimulationError
from edgeai.flower.experiment import FleetConfig
from edgeai.flower.loop import send_and_receive
from edgeai.flower.sampling import IDENTIFY, IDENTITY_KEY
from edgeai.profiles.loader import load_profile
from edgeai.simulation.vmap import LocalGrid
from edgeai.task import Task

DEADLINE_MISSED = 4202
_REDRAWS = 100  # availability windows tried before a round gives up on finding enough


@dataclass(frozen=True)
class DeviceClass:
    """A profile's simulation traits."""

    name: str
    relative_compute: float
    uplink_mbps: float
    downlink_mbps: float
    availability: float


@dataclass
class FleetRound:
    """What the fleet did in one round (simulated time, who was there, who was dropped)."""

    round: int
    online: int = 0
    sampled: list[int] = field(default_factory=list)  # partition ids
    offline: list[int] = field(default_factory=list)  # partition ids
    client_seconds: dict[int, float] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)
    seconds: float = 0.0  # simulated wall-clock time of the round


def assign_profiles(mix: dict[str, float], num_clients: int, seed: int) -> list[str]:
    """Each client's profile: shares by largest remainder, clients shuffled by ``seed``."""
    names = sorted(mix)
    total = sum(mix.values())
    exact = [mix[n] / total * num_clients for n in names]
    counts = [int(e) for e in exact]
    for i in sorted(range(len(names)), key=lambda i: (counts[i] - exact[i], names[i]))[
        : num_clients - sum(counts)
    ]:
        counts[i] += 1
    labels = [n for n, c in zip(names, counts, strict=True) for _ in range(c)]
    order = np.random.default_rng([seed % 2**63, 0xF1EE7]).permutation(num_clients)
    return [labels[i] for i in order]


def online_mask(availability: Sequence[float], seed: int, rnd: int, attempt: int = 0) -> list[bool]:
    """Which clients are online in round ``rnd`` (independent draws, seeded by the round)."""
    draws = np.random.default_rng([seed % 2**63, rnd, attempt, 0xA7A1]).random(len(availability))
    return [bool(d < a) for d, a in zip(draws, availability, strict=True)]


def client_seconds(
    cls: DeviceClass, samples: int, sample_seconds: float, bytes_down: int, bytes_up: int
) -> float:
    """Simulated time of one client's round: download, train, upload."""
    down = bytes_down * 8 / (cls.downlink_mbps * 1e6)
    up = bytes_up * 8 / (cls.uplink_mbps * 1e6)
    return down + samples * sample_seconds / cls.relative_compute + up


def measure_sample_seconds(task: Task, batch_size: int, steps: int = 5) -> float:
    """Seconds per training sample of ``task``'s model on this host (the 1.0 reference)."""
    model = task.build_model()
    x = task.example_input()
    x = x[:1].expand(batch_size, *x.shape[1:]).clone()
    out = model(x)
    y = torch.zeros(batch_size, dtype=torch.long) if out.dim() == 2 else out.detach()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        task.loss(model(x), y).backward()  # type: ignore[no-untyped-call]
        opt.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:])) / batch_size


class Fleet:
    """The fleet of one experiment: who is what, who is online, how long each takes."""

    def __init__(
        self,
        config: FleetConfig,
        num_clients: int,
        *,
        seed: int,
        needed: int,
        batch_size: int,
        sample_seconds: float,
    ) -> None:
        self.config = config
        self.seed = seed
        self.needed = needed
        self.batch_size = batch_size
        self.sample_seconds = sample_seconds
        classes = {}
        for name in config.mix:
            sim = load_profile(name).simulation
            classes[name] = DeviceClass(
                name, sim.relative_compute, sim.uplink_mbps, sim.downlink_mbps, sim.availability
            )
        self.profiles = assign_profiles(config.mix, num_clients, seed)
        self.classes = [classes[p] for p in self.profiles]

    def online(self, rnd: int) -> list[int]:
        """The partitions online in round ``rnd`` (redrawn, as a later window, if too few)."""
        availability = [c.availability for c in self.classes]
        for attempt in range(_REDRAWS):
            mask = online_mask(availability, self.seed, rnd, attempt)
            if sum(mask) >= self.needed:
                return [p for p, up in enumerate(mask) if up]
        raise SimulationError(
            f"round {rnd}: fewer than {self.needed} clients online in {_REDRAWS} tries; "
            "lower clients_per_round or use more available profiles in simulation.fleet.mix"
        )

    def seconds(self, partition: int, steps: int, bytes_down: int, bytes_up: int) -> float:
        """Simulated time of ``partition``'s round."""
        samples = steps * self.batch_size
        return client_seconds(
            self.classes[partition], samples, self.sample_seconds, bytes_down, bytes_up
        )


class FleetGrid(LocalGrid):
    """A grid that shows only the online nodes and drops replies past the deadline."""

    def __init__(self, inner: Grid, fleet: Fleet, *, identify_timeout_s: float = 600.0) -> None:
        self.inner = inner
        self.fleet = fleet
        self.identify_timeout_s = identify_timeout_s
        self.partition: dict[int, int] = {}  # node id -> partition id
        self.rounds: dict[int, FleetRound] = {}
        self.next_round = 1
        self._sent: dict[str, tuple[Message, int]] = {}  # train message id -> (it, round)

    def set_run(self, run: Any) -> None:  # noqa: D102
        self.inner.set_run(run)

    @property
    def run(self) -> Any:  # noqa: D102
        return self.inner.run

    def get_node_ids(self) -> Iterable[int]:
        """The nodes online in the coming round."""
        nodes = list(self.inner.get_node_ids())
        self._identify([n for n in nodes if n not in self.partition])
        rnd = self.next_round
        up = set(self.fleet.online(rnd))
        record = self.rounds.setdefault(rnd, FleetRound(rnd))
        record.online = len(up)
        record.offline = sorted(set(range(len(self.fleet.classes))) - up)
        return [n for n in nodes if self.partition.get(n) in up]

    def _identify(self, nodes: list[int]) -> None:
        if not nodes:
            return
        query = RecordDict({IDENTITY_KEY: ConfigRecord({})})
        asks = [Message(query, dst_node_id=n, message_type=IDENTIFY) for n in nodes]
        replies, _ = send_and_receive(
            self.inner, asks, timeout_s=self.identify_timeout_s, poll_s=0.02
        )
        for reply in replies:
            if not reply.has_error() and IDENTITY_KEY in reply.content.config_records:
                said = reply.content.config_records[IDENTITY_KEY]
                if "partition-id" in said:
                    self.partition[reply.metadata.src_node_id] = int(str(said["partition-id"]))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Send through the inner grid; note each train message's round."""
        messages = list(messages)
        ids = list(self.inner.push_messages(messages))
        for msg in messages:
            if msg.metadata.message_type != MessageType.TRAIN:
                continue
            rnd = int(str(msg.content.config_records["config"].get("server-round", 0)))
            self._sent[msg.metadata.message_id] = (msg, rnd)
            self.rounds.setdefault(rnd, FleetRound(rnd)).sampled.append(
                self.partition.get(msg.metadata.dst_node_id, -1)
            )
            self.next_round = rnd + 1
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Replies of the inner grid; a train reply past the deadline becomes an error."""
        out = []
        for reply in self.inner.pull_messages(message_ids):
            sent = self._sent.pop(reply.metadata.reply_to_message_id, None)
            out.append(reply if sent is None else self._timed(reply, *sent))
        return out

    def _timed(self, reply: Message, msg: Message, rnd: int) -> Message:
        if reply.has_error() or len(reply.content.metric_records) != 1:
            return reply
        record = self.rounds.setdefault(rnd, FleetRound(rnd))
        partition = self.partition.get(msg.metadata.dst_node_id, -1)
        metrics = next(iter(reply.content.metric_records.values()))
        down = sum(r.count_bytes() for r in msg.content.array_records.values())
        up = sum(r.count_bytes() for r in reply.content.array_records.values())
        took = self.fleet.seconds(partition, int(str(metrics.get("steps", 0))), down, up)
        record.client_seconds[partition] = took
        deadline = self.fleet.config.round_deadline_s
        if deadline is not None and took > deadline:
            record.dropped.append(partition)
            record.seconds = deadline
            name = self.fleet.profiles[partition]
            why = f"missed the round deadline ({name}: {took:.1f} s simulated > {deadline:g} s)"
            return Message(Error(code=DEADLINE_MISSED, reason=why), reply_to=msg)
        if not record.dropped:
            record.seconds = max(record.seconds, took)
        return reply

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies, _ = send_and_receive(
            self, list(messages), timeout_s=timeout or self.identify_timeout_s, poll_s=0.02
        )
        return replies


def simulated_hours(rounds: dict[int, FleetRound]) -> dict[int, float]:
    """Cumulative simulated hours at the end of each round."""
    total, out = 0.0, {}
    for rnd in sorted(rounds):
        total += rounds[rnd].seconds
        out[rnd] = total / 3600
    return out


def time_to(scores: dict[int, float], rounds: dict[int, FleetRound], target: float) -> float | None:
    """Simulated hours until the score first reaches ``target`` (None: never)."""
    hours = simulated_hours(rounds)
    for rnd in sorted(scores):
        if scores[rnd] >= target:
            return hours.get(rnd)
    return None
