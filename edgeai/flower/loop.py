"""The one round loop, for simulation and deployment alike.

Written once, as Flower's ``Strategy.start`` is (``flwr/serverapp/strategy/strategy.py``):
configure → send and receive → aggregate → evaluate centrally → record, round after
round. What differs between a simulation and a deployed run is plugged in:

- where the run starts (:class:`Start`: round 1, or after a checkpoint on resume);
- where its results go (:class:`RoundSink` objects: checkpoints, ``rounds.jsonl``,
  ``status.json``, the simulation's in-memory result);
- how long it waits for nodes and replies (:class:`ServerPlan`).

A run ends one way: the loop returns a :class:`~edgeai.flower.records.FinalState`, whose
``stopped`` says why when it ended before its last round (the client-level budget would
be passed, or every sampled device refused to train). Too few nodes is an error
(:class:`~edgeai.flower.strategy.NotEnoughNodesError`), raised after the sinks were told.

Unlike ``Strategy.start`` the loop polls replies every ``reply_poll_s`` (Flower's HTTP
grid sleeps 3 s between pulls: ``flwr/superlink/grid/http_grid.py``), skips the unused
federated-evaluation step (``fraction_evaluate`` is 0: the server evaluates centrally) and
does not evaluate the initial model.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid
from numpy.typing import NDArray

from edgeai.flower.aggregators import Aggregator
from edgeai.flower.attacks import AttackPlan
from edgeai.flower.client_app import plan_config
from edgeai.flower.distributed import DistributedDPFedAvg
from edgeai.flower.plan import ClientPlan
from edgeai.flower.records import FinalState, RoundRecord
from edgeai.flower.sampling import NodeDirectory
from edgeai.flower.strategy import (
    ClientLevelDPFedAvg,
    KeysOf,
    NotEnoughNodesError,
    RoundStats,
    ServerBudgetExhaustedError,
    ValidatingFedAvg,
)
from edgeai.flower.tasks import build_seeded, load_config, task_datasets
from edgeai.flower.training import evaluate
from edgeai.flower.validation import reference_of
from edgeai.plumbing.processes import wait_until
from edgeai.privacy.config import CentralPrivacyConfig

ALL_REFUSED = "every sampled device's privacy budget is exhausted"


@dataclass(frozen=True)
class ServerPlan:
    """How the server runs the federation."""

    client: ClientPlan
    num_clients: int
    clients_per_round: int
    round_timeout_s: float = 600.0
    max_examples: int = 1_000_000
    central: CentralPrivacyConfig = field(default_factory=CentralPrivacyConfig)
    # Client-level DP accountant state, persisted every round (a restart resumes it).
    central_state_path: Path | None = None
    # Nodes that must be connected before a round (None: all ``num_clients`` must be, and
    # ``clients_per_round`` are sampled at least: the simulation's fixed population).
    min_nodes: int | None = None
    node_wait_s: float = 300.0  # then the run fails with NotEnoughNodesError
    reply_poll_s: float = 0.1  # Flower's in-memory grid polls at 0.1 s too
    # Sample and aggregate by each node's partition id, asked once (simulation: node ids
    # are random every run); else by node id (deployment: stable, see flower/sampling.py).
    identify_nodes: bool = False


@dataclass(frozen=True)
class Start:
    """Where a run begins: round 1 with fresh weights, or after a checkpoint."""

    round: int = 1
    # Seeds client-level DP's noise. Node sampling is seeded by the experiment's seed
    # and the round alone (``plan.client.seed``), so a resumed run samples as an
    # uninterrupted one would.
    seed: int = 0
    state: Mapping[str, NDArray[Any]] | None = None  # weights to resume from
    worst_epsilon: float | None = None  # the device-level ε reported so far


@dataclass(frozen=True)
class RoundOutcome:
    """A finished round, as the sinks see it."""

    record: RoundRecord
    arrays: ArrayRecord  # the global model after the round
    missing: int  # replies that never came within the round timeout
    wait_s: float  # from the round's start to its last reply
    timing: Mapping[str, float]  # what the replies say about their time (see reply_timing)


class RoundSink:
    """Where a run's progress and results go; override the hooks you need.

    Every hook does nothing here. A hook that raises ends the run with that error.
    """

    def round_started(self, server_round: int, needed: int) -> None:
        """A round begins: it waits for ``needed`` nodes, then samples them."""

    def round_sampled(self, server_round: int, sampled: int) -> None:
        """The round's messages go out to ``sampled`` nodes."""

    def round_done(self, outcome: RoundOutcome) -> None:
        """The round's model is aggregated and evaluated."""

    def run_failed(self, server_round: int, error: Exception) -> None:
        """The run cannot go on (``error`` is raised next)."""

    def run_ended(self, final: FinalState) -> None:
        """The run ended: after its last round, or stopped (``final.stopped`` says why)."""


class MessageGrid(Protocol):
    """The part of Flower's ``Grid`` the reply polling uses."""

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]: ...  # noqa: D102
    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]: ...  # noqa: D102


def send_and_receive(
    grid: MessageGrid,
    messages: Sequence[Message],
    *,
    timeout_s: float,
    poll_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[Message], int]:
    """Push ``messages``; pull replies every ``poll_s`` until all came or ``timeout_s`` passed.

    Returns the replies and how many never came. A node the SuperLink declares
    unavailable (missed heartbeats) comes back as an error reply, not a missing one.
    """
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []

    def all_replied() -> bool:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        return not pending

    if pending:
        with contextlib.suppress(TimeoutError):  # the missing ones are counted, not raised
            wait_until(all_replied, timeout_s, "replies", poll_s=poll_s, clock=clock, sleep=sleep)
    return replies, len(pending)


def reply_timing(replies: Iterable[Message]) -> dict[str, float]:
    """The slowest client's training time and ClientApp start-up, from its reply metrics."""
    # The ClientApp reports its own training time and how old its process was when it
    # replied: the difference is the process start (Python, torch, Flower, data).
    train, startup = [], []
    for msg in replies:
        if msg.has_error() or len(msg.content.metric_records) != 1:
            continue
        metrics = next(iter(msg.content.metric_records.values()))
        if "train-seconds" in metrics:
            train.append(float(metrics["train-seconds"]))  # type: ignore[arg-type]
            if "process-seconds" in metrics:
                startup.append(float(metrics["process-seconds"]) - train[-1])  # type: ignore[arg-type]
    timing: dict[str, float] = {}
    if train:
        timing["compute_s"] = max(train)
    if startup:
        timing["clientapp_start_s"] = max(startup)
    return timing


def build_strategy(
    plan: ServerPlan, start: Start, initial: ArrayRecord, keys_of: KeysOf | None = None
) -> ValidatingFedAvg:
    """The strategy of ``plan``: validation, then ``[strategy]`` (or client-level DP FedAvg).

    It samples nodes by the keys ``keys_of`` gives them (default: their node ids).
    """
    common: dict[str, Any] = {
        "reference": reference_of({k: v.numpy() for k, v in initial.items()}),
        "max_examples": plan.max_examples,
        "node_wait_s": plan.node_wait_s,
        "sampling_seed": plan.client.seed,
        "fraction_train": plan.clients_per_round / plan.num_clients,
        "min_train_nodes": plan.min_nodes or plan.clients_per_round,
        "min_available_nodes": plan.min_nodes or plan.num_clients,
        "fraction_evaluate": 0.0,  # central evaluation on the validation split instead
    }
    if keys_of is not None:
        common["keys_of"] = keys_of
    common["attack"] = AttackPlan.of(plan.client.attack, plan.num_clients, plan.client.seed)
    if not plan.central.enabled:
        return ValidatingFedAvg(aggregator=Aggregator(plan.client.strategy), **common)
    dp: dict[str, Any] = {
        "central": plan.central,
        "num_clients": plan.num_clients,
        "clients_per_round": plan.clients_per_round,
        "num_rounds": plan.client.num_rounds,
        "state_path": plan.central_state_path,  # persisted each round; resumed from here
        "seed": start.seed,
    }
    if plan.central.mode == "distributed":
        return DistributedDPFedAvg(
            dimension=sum(int(np.prod(a.shape)) for a in initial.values()),
            round_timeout_s=plan.round_timeout_s,
            **dp,
            **common,
        )
    return ClientLevelDPFedAvg(**dp, **common)


class RoundLoop:
    """Runs the rounds of ``plan`` from ``start``, telling ``sinks`` as it goes."""

    def __init__(self, plan: ServerPlan, start: Start, sinks: Sequence[RoundSink]) -> None:
        self.plan = plan
        self.start = start
        self.sinks = tuple(sinks)

    def run(self, grid: Grid) -> FinalState:
        """Train until the last round or a stop; return the final state.

        Raises
        ------
        NotEnoughNodesError
            Too few nodes connected within ``plan.node_wait_s``.
        """
        plan, cp, start = self.plan, self.plan.client, self.start
        task = load_config(cp.task)  # central evaluation uses the task's metrics
        _, validation = task_datasets(cp.task)
        model = build_seeded(task, cp.seed)
        if start.state is not None:
            model.load_state_dict(
                {k: torch.from_numpy(np.array(v)) for k, v in start.state.items()}
            )
        arrays = ArrayRecord(model.state_dict())
        directory = NodeDirectory(self._asker(grid) if plan.identify_nodes else None)
        strategy = build_strategy(plan, start, arrays, directory.keys_of)
        train_config = plan_config(cp)
        worst_eps = start.worst_epsilon  # ε only grows, so the worst device so far
        needed = plan.min_nodes or plan.num_clients
        stopped: str | None = None
        rnd = cp.num_rounds  # the last round reached (a resumed, finished run reaches none)
        for rnd in range(start.round, cp.num_rounds + 1):
            began = time.perf_counter()
            for sink in self.sinks:
                sink.round_started(rnd, needed)
            try:
                messages = list(strategy.configure_train(rnd, arrays, train_config, grid))
            except ServerBudgetExhaustedError as exc:
                stopped = str(exc)
                break
            except NotEnoughNodesError as exc:
                for sink in self.sinks:
                    sink.run_failed(rnd, exc)
                raise
            for sink in self.sinks:
                sink.round_sampled(rnd, len(messages))
            new, replies, missing = self._train(strategy, rnd, messages, grid)
            replied = time.perf_counter()
            if new is not None:
                arrays = new
            model.load_state_dict(arrays.to_torch_state_dict())
            metrics, loss = evaluate(model, validation, task)
            stats = strategy.stats.get(rnd, RoundStats())
            if stats.epsilon is not None:
                worst_eps = max(stats.epsilon, worst_eps or 0.0)
            record = RoundRecord.of(
                rnd,
                metrics.get("accuracy"),
                loss,
                worst_eps,
                stats,
                time.perf_counter() - began,
                cp.privacy.delta if cp.privacy.enabled else None,
                plan.central.delta if plan.central.enabled else None,
                metrics,
            )
            outcome = RoundOutcome(record, arrays, missing, replied - began, reply_timing(replies))
            for sink in self.sinks:
                sink.round_done(outcome)
            if stats.sampled and stats.refused == stats.sampled:
                stopped = f"stopped after round {rnd}: {ALL_REFUSED}"
                break
        final = FinalState(
            arrays=arrays,
            rejected_total=strategy.rejected_total,
            client_privacy=strategy.client_privacy,
            stopped=stopped,
            client_level=_client_level(strategy, plan.central),
            first_round=start.round,
            round=rnd,
        )
        for sink in self.sinks:
            sink.run_ended(final)
        return final

    def _train(
        self, strategy: ValidatingFedAvg, rnd: int, messages: list[Message], grid: Grid
    ) -> tuple[ArrayRecord | None, list[Message], int]:
        """Send a round's messages; the new model, the replies and how many never came."""
        if isinstance(strategy, DistributedDPFedAvg):
            # SecAgg+: the server gets only the sum, no reply of its own.
            new, missing = strategy.secure_round(rnd, messages, grid, self._exchange(grid))
            return new, [], missing
        replies, missing = send_and_receive(
            grid, messages, timeout_s=self.plan.round_timeout_s, poll_s=self.plan.reply_poll_s
        )
        new, _ = strategy.aggregate_train(rnd, replies)
        return new, replies, missing

    def _asker(self, grid: Grid) -> Callable[[Sequence[Message]], list[Message]]:
        exchange = self._exchange(grid)
        return lambda messages: exchange(messages, self.plan.round_timeout_s)

    def _exchange(self, grid: Grid) -> Callable[[Sequence[Message], float], list[Message]]:
        def exchange(messages: Sequence[Message], timeout_s: float) -> list[Message]:
            replies, _ = send_and_receive(
                grid, messages, timeout_s=timeout_s, poll_s=self.plan.reply_poll_s
            )
            return replies

        return exchange


def _client_level(
    strategy: ValidatingFedAvg, central: CentralPrivacyConfig
) -> dict[str, Any] | None:
    # z, q, rounds, δ, ε and the accountant: enough to recompute client-level ε independently.
    if not isinstance(strategy, ClientLevelDPFedAvg):
        return None
    summary = {
        "scope": "client-level DP on the server (DP-FedAvg), per participating device",
        "mode": central.mode,
        "noise_multiplier": strategy.noise_multiplier,
        "sample_rate": strategy.sample_rate,
        "rounds": sum(h[2] for h in strategy.accountant.history),
        "history": strategy.accountant.history,
        "clip_norm": central.clip_norm,
        "delta": central.delta,
        "epsilon": strategy.epsilon(),
        "accountant": "rdp (dp-accounting), Poisson-sampled Gaussian",
        "sampling": "poisson",
    }
    if isinstance(strategy, DistributedDPFedAvg):
        share = strategy.share
        summary |= {
            "scope": "client-level DP, distributed: devices add the noise, SecAgg+ sums",
            "sensitivity": share.sensitivity,  # C plus the rounding of SecAgg+'s quantization
            "min_survivors": share.min_survivors,
            "share_std": share.share_std,
            "clip_range": share.clip_range,
            "delta_mechanism": strategy.delta,  # δ less the range-overflow probability
            "accountant": "rdp (dp-accounting), Gaussian at q = 1: no amplification",
            "sampling": "fixed-size, chosen by the server: no amplification is claimed",
        }
    return summary
