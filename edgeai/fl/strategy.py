"""FedAvg that validates every reply before it aggregates, and keeps per-round stats."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import WARNING, getLogger

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from edgeai.errors import EdgeAIError
from edgeai.fl.validation import Reference, check_update

log = getLogger(__name__)


class NotEnoughNodesError(EdgeAIError, TimeoutError):
    """Too few nodes connected within the configured wait."""


@dataclass
class RoundStats:
    """What happened in one training round, as the server saw it."""

    sampled: int = 0
    accepted: int = 0
    failed: int = 0  # error replies (the client crashed or refused)
    rejected: int = 0  # replies that failed validation
    reasons: list[str] = field(default_factory=list)  # one line per failed or rejected reply
    bytes_down: int = 0
    bytes_up: int = 0
    epsilon: float | None = None  # worst client's cumulative ε after this round
    train_loss: float | None = None


class ValidatingFedAvg(FedAvg):
    """FedAvg whose ``aggregate_train`` rejects malformed, non-finite or absurd replies.

    Flower's FedAvg averages whatever arrives: one NaN reply poisons the
    global model and one absurd ``num-examples`` outweighs the fleet.
    """

    def __init__(
        self,
        *,
        reference: Reference,
        max_examples: int,
        node_wait_s: float = 300.0,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.reference = reference
        self.node_wait_s = node_wait_s
        self.max_examples = max_examples
        self.stats: dict[int, RoundStats] = {}
        self.rejected_total = 0
        # node id -> its latest DP report (cumulative ε, σ, q, steps): who is most exposed
        self.client_privacy: dict[int, dict[str, float]] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients as FedAvg does, recording how many and how much is sent."""
        self._wait_for_nodes(grid)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.stats[server_round] = RoundStats(
            sampled=len(messages), bytes_down=len(messages) * arrays.count_bytes()
        )
        return messages

    def _wait_for_nodes(self, grid: Grid) -> None:
        # FedAvg's own wait polls once a second and never gives up; poll finely, bounded.
        needed = max(self.min_available_nodes, self.min_train_nodes)
        deadline = time.monotonic() + self.node_wait_s
        while (connected := len(list(grid.get_node_ids()))) < needed:
            if time.monotonic() > deadline:
                raise NotEnoughNodesError(
                    f"{connected} of {needed} nodes connected after {self.node_wait_s:.0f} s; "
                    "start more nodes or lower clients per round"
                )
            time.sleep(0.02)

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
        """Validate, then average the accepted replies weighted by ``num-examples``."""
        stats = self.stats.setdefault(server_round, RoundStats())
        accepted = []
        for msg in replies:
            if msg.has_error():
                stats.failed += 1
                stats.reasons.append(f"node {msg.metadata.src_node_id} failed: {msg.error.reason}")
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
            accepted.append(msg.content)
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
            return None, None
        metrics = [next(iter(c.metric_records.values())) for c in accepted]
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
        return aggregate_arrayrecords(accepted, self.weighted_by_key), MetricRecord({**summary})
