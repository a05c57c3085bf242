"""FedAvg that validates every reply before it aggregates, and keeps per-round stats."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import WARNING, getLogger
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from edgeai.errors import EdgeAIError
from edgeai.flower.aggregators import Aggregator
from edgeai.flower.attacks import AttackPlan
from edgeai.flower.client_app import BUDGET_EXHAUSTED
from edgeai.flower.sampling import NodeKey, key_of, replies_in_order, sample_fixed, sample_poisson
from edgeai.flower.strategy_config import StrategyConfig
from edgeai.flower.validation import Reference, check_update
from edgeai.plumbing.files import atomic_write
from edgeai.plumbing.processes import wait_until
from edgeai.privacy.central import ClientLevelAccountant, aggregate_with_noise
from edgeai.privacy.config import CentralPrivacyConfig

log = getLogger(__name__)


class NotEnoughNodesError(EdgeAIError, TimeoutError):
    """Too few nodes connected within the configured wait."""


@dataclass
class RoundStats:
    """What happened in one training round, as the server saw it."""

    sampled: int = 0
    accepted: int = 0
    failed: int = 0  # error replies: the client crashed
    refused: int = 0  # error replies: the device's privacy budget is exhausted
    rejected: int = 0  # replies that failed validation
    reasons: list[str] = field(default_factory=list)  # one line per failed or rejected reply
    bytes_down: int = 0
    bytes_up: int = 0
    epsilon: float | None = None  # worst client's cumulative ε after this round
    client_epsilon: float | None = None  # client-level (server) ε after this round
    train_loss: float | None = None
    attackers: list[str] = field(default_factory=list)  # sampled clients that attack (simulation)
    discarded: list[str] = field(default_factory=list)  # valid replies the strategy left out


KeysOf = Callable[[Iterable[int]], dict[int, NodeKey]]


def _node_id_keys(node_ids: Iterable[int]) -> dict[int, NodeKey]:
    return {n: key_of({}, n) for n in node_ids}


def key_name(key: NodeKey) -> str:
    """How records name a node: ``client-<partition id>``, its node name, or ``node-<id>``."""
    kind, number, name = key
    return f"client-{number}" if kind == 0 else name if kind == 1 else f"node-{number}"


class ValidatingFedAvg(FedAvg):
    """FedAvg whose ``aggregate_train`` rejects malformed, non-finite or absurd replies.

    Flower's FedAvg averages whatever arrives: one NaN reply poisons the
    global model and one absurd ``num-examples`` outweighs the fleet. It also samples
    by node id, which is random in simulation: here nodes are sampled by the stable key
    ``keys_of`` gives them, with ``sampling_seed`` and the round
    (:mod:`edgeai.flower.sampling`), and replies are aggregated in key order.

    The accepted replies go to ``aggregator``: one of Flower's strategies
    (:mod:`edgeai.flower.aggregators`; default FedAvg). ``attack`` only names, in the
    records, which sampled clients attack (simulation).
    """

    def __init__(
        self,
        *,
        reference: Reference,
        max_examples: int,
        node_wait_s: float = 300.0,
        sampling_seed: int = 0,
        keys_of: KeysOf = _node_id_keys,
        aggregator: Aggregator | None = None,
        attack: AttackPlan | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.aggregator = aggregator or Aggregator(StrategyConfig(), self.weighted_by_key)
        self.attack = attack or AttackPlan.of(None, 0, 0)
        self.reference = reference
        self.node_wait_s = node_wait_s
        self.max_examples = max_examples
        self.sampling_seed = sampling_seed
        self.keys_of = keys_of
        self.node_keys: dict[int, NodeKey] = {}  # of the nodes connected at the last sampling
        self.stats: dict[int, RoundStats] = {}
        self.rejected_total = 0
        # node id -> its latest DP report (cumulative ε, σ, q, steps): who is most exposed
        self.client_privacy: dict[int, dict[str, float]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample as many clients as FedAvg does, by key; record how many, how much is sent."""
        self._wait_for_nodes(grid)
        keys = self._sampling_keys(grid)
        # FedAvg.configure_train's sample size, and its `min_available_nodes` wait above.
        size = max(int(len(keys) * self.fraction_train), self.min_train_nodes)
        chosen = sample_fixed(keys, size, self.sampling_seed, server_round)
        return self._train_messages(server_round, arrays, config, chosen)

    def _sampling_keys(self, grid: Grid) -> dict[int, NodeKey]:
        self.node_keys = self.keys_of(grid.get_node_ids())
        return self.node_keys

    def _train_messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, chosen: list[int]
    ) -> list[Message]:
        config["server-round"] = server_round  # as FedAvg.configure_train does
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        self.stats[server_round] = RoundStats(
            sampled=len(chosen), bytes_down=len(chosen) * arrays.count_bytes()
        )
        self.aggregator.begin(arrays)
        for node in chosen:
            key = self.node_keys.get(node, key_of({}, node))
            if key[0] == 0 and self.attack.attacks(key[1]):  # attackers are partition ids
                self.stats[server_round].attackers.append(key_name(key))
        return list(self._construct_messages(record, chosen, MessageType.TRAIN))

    def _wait_for_nodes(self, grid: Grid) -> None:
        # FedAvg's own wait polls once a second and never gives up; poll finely, bounded.
        needed = max(self.min_available_nodes, self.min_train_nodes)
        connected = 0

        def enough() -> bool:
            nonlocal connected
            connected = len(list(grid.get_node_ids()))
            return connected >= needed

        try:
            wait_until(enough, self.node_wait_s, f"{needed} nodes", poll_s=0.02)
        except TimeoutError as exc:
            raise NotEnoughNodesError(
                f"{connected} of {needed} nodes connected after {self.node_wait_s:.0f} s; "
                "start more nodes or lower clients per round"
            ) from exc

    def _reject_reason(self, msg: Message) -> str | None:
        content = msg.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            return "reply must hold exactly one ArrayRecord and one MetricRecord"
        arrays = next(iter(content.array_records.values()))
        metrics = next(iter(content.metric_records.values()))
        try:
            numpy_arrays = {k: v.numpy() for k, v in arrays.items()}
        except (ValueError, TypeError) as exc:  # undecodable bytes from the wire
            return f"arrays could not be decoded: {exc}"
        return check_update(
            numpy_arrays, metrics.get(self.weighted_by_key), self.reference, self.max_examples
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, then aggregate the accepted replies with the strategy."""
        stats = self.stats.setdefault(server_round, RoundStats())
        accepted: list[Message] = []
        # In key order, not arrival order: the same floating-point sums every run.
        for msg in replies_in_order(replies, self.node_keys):
            if msg.has_error():
                node = msg.metadata.src_node_id
                if msg.error.code == BUDGET_EXHAUSTED:
                    stats.refused += 1
                    stats.reasons.append(f"node {node} refused: {msg.error.reason}")
                    continue
                stats.failed += 1
                stats.reasons.append(f"node {node} failed: {msg.error.reason}")
                log.warning(
                    "round %d: node %d failed: %s",
                    server_round,
                    msg.metadata.src_node_id,
                    msg.error.reason,
                )
                continue
            stats.bytes_up += sum(r.count_bytes() for r in msg.content.array_records.values())
            reason = self._reject_reason(msg)
            if reason is not None:
                stats.rejected += 1
                stats.reasons.append(f"node {msg.metadata.src_node_id} rejected: {reason}")
                log.log(
                    WARNING,
                    "round %d: rejected reply of node %d: %s",
                    server_round,
                    msg.metadata.src_node_id,
                    reason,
                )
                continue
            accepted.append(msg)
            reply_metrics = next(iter(msg.content.metric_records.values()))
            if "epsilon" in reply_metrics:
                self.client_privacy[msg.metadata.src_node_id] = {
                    k: float(v)  # type: ignore[arg-type]
                    for k, v in reply_metrics.items()
                    if k in ("epsilon", "delta", "noise-multiplier", "sample-rate", "dp-steps")
                }
        stats.accepted = len(accepted)
        self.rejected_total += stats.rejected
        if not accepted:
            return self._combine(server_round, accepted), None
        metrics = [next(iter(m.content.metric_records.values())) for m in accepted]
        weights = np.array([float(m[self.weighted_by_key]) for m in metrics])  # type: ignore[arg-type]
        losses = np.array([float(m.get("train-loss", np.nan)) for m in metrics])  # type: ignore[arg-type]
        stats.train_loss = float(np.average(losses, weights=weights))
        epsilons = [float(m["epsilon"]) for m in metrics if "epsilon" in m]  # type: ignore[arg-type]
        stats.epsilon = max(epsilons) if epsilons else None
        summary: dict[str, int | float] = {
            "train-loss": stats.train_loss,
            "accepted": len(accepted),
        }
        if stats.epsilon is not None:
            summary["epsilon-max"] = stats.epsilon
        return self._combine(server_round, accepted), MetricRecord({**summary})

    def _combine(self, server_round: int, accepted: list[Message]) -> ArrayRecord | None:
        """The new global model from the accepted replies (None: keep the current one)."""
        stats = self.stats[server_round]
        removed = stats.rejected + stats.failed  # faulty replies: they count against f
        need = self.aggregator.config.min_replies(removed)
        if 0 < len(accepted) < need:
            stats.reasons.append(
                f"{len(accepted)} valid replies, fewer than the {need} "
                f"{self.aggregator.config.name} needs for its guarantee"
            )
        result = self.aggregator.aggregate(server_round, accepted, removed)
        if result.kept is not None:
            kept = set(result.kept)
            stats.discarded = [
                key_name(self.node_keys.get(n, key_of({}, n)))
                for m in accepted
                if (n := m.metadata.src_node_id) not in kept
            ]
        return result.arrays


class ServerBudgetExhaustedError(EdgeAIError, RuntimeError):
    """The next round would take client-level ε past the server's budget."""


class ClientLevelDPFedAvg(ValidatingFedAvg):
    """DP-FedAvg: Poisson-sampled clients, clipped updates, Gaussian noise, accounted ε.

    Unlike Flower's DP wrappers it keeps going through dropouts and error replies
    (the noise is calibrated to the expected number of clients, not the number
    that answered), takes all-zero updates, and never lets a non-finite update
    reach the clipping (it is rejected by validation first).
    """

    def __init__(
        self,
        *,
        central: CentralPrivacyConfig,
        num_clients: int,
        clients_per_round: int,
        num_rounds: int,
        state_path: Path | None,
        seed: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.central = central
        # What the server may claim: amplification by its Poisson sampling (unless a
        # subclass says the sampling is not hidden), at δ less what it reserves.
        self.sample_rate = clients_per_round / num_clients if self.amplified else 1.0
        self.delta = central.delta - self.delta_reserved
        self.expected_clients = clients_per_round
        self.state_path = state_path
        self.rng = np.random.default_rng(seed)  # the noise (sampling: sampling_seed)
        self.accountant = ClientLevelAccountant("poisson")
        if state_path is not None and state_path.exists():  # resume after a restart
            saved = json.loads(state_path.read_text(encoding="utf-8"))
            self.accountant = ClientLevelAccountant.from_dict(saved)
        if central.noise_multiplier is not None:
            self.noise_multiplier = central.noise_multiplier
        else:
            if central.target_epsilon is None:
                raise ValueError("client-level DP needs noise_multiplier or target_epsilon")
            remaining = num_rounds - sum(h[2] for h in self.accountant.history)
            self.noise_multiplier = self.accountant.noise_for_target(
                central.target_epsilon, self.delta, self.sample_rate, max(1, remaining)
            )
        self._global: ArrayRecord | None = None

    amplified = True  # the sampling is Poisson and hidden from whoever the ε is against
    delta_reserved = 0.0  # part of δ spent elsewhere than on the Gaussian mechanism

    def epsilon(self) -> float:
        """Client-level ε released so far."""
        return float(self.accountant.epsilon(self.delta))

    def check_budget(self, server_round: int) -> None:
        """Raise :class:`ServerBudgetExhaustedError` if the round would pass the budget."""
        budget = self.central.budget
        if budget is not None:
            after = ClientLevelAccountant("poisson", self.accountant.history)
            after.step(self.noise_multiplier, self.sample_rate)
            if after.epsilon(self.delta) > budget:
                raise ServerBudgetExhaustedError(
                    f"round {server_round} would raise client-level ε from "
                    f"{self.epsilon():.3f} to {after.epsilon(self.delta):.3f}, past "
                    f"the budget {budget}; no further model is released"
                )

    def save_accountant(self) -> None:
        """Persist the accountant (a restart resumes it)."""
        if self.state_path is not None:
            atomic_write(self.state_path, json.dumps(self.accountant.to_dict()))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Refuse a round past the budget; else Poisson-sample the clients."""
        self.check_budget(server_round)
        self._wait_for_nodes(grid)
        self._global = arrays
        keys = self._sampling_keys(grid)
        chosen = sample_poisson(keys, self.sample_rate, self.sampling_seed, server_round)
        return self._train_messages(server_round, arrays, config, chosen)

    def _combine(self, server_round: int, accepted: list[Message]) -> ArrayRecord | None:
        if self._global is None:
            raise RuntimeError("configure_train must run before aggregate_train")
        base = {k: v.numpy() for k, v in self._global.items()}
        updates = [
            {
                k: v.numpy() - base[k]
                for k, v in next(iter(m.content.array_records.values())).items()
            }
            for m in accepted
        ]
        # The sampled round is released (and accounted) even when nobody answered.
        self.accountant.step(self.noise_multiplier, self.sample_rate)
        self.save_accountant()
        self.stats[server_round].client_epsilon = self.epsilon()
        if not updates:
            return None
        noisy = aggregate_with_noise(
            updates,
            self.central.clip_norm,
            self.noise_multiplier,
            self.expected_clients,
            self.rng,
        )
        return ArrayRecord(
            {k: Array((base[k] + noisy.arrays[k]).astype(base[k].dtype)) for k in base}
        )
