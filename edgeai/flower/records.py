"""What the round loop produces: one record per round, and the final state of a run.

The same records leave a simulation (``metrics.jsonl``) and a deployed run
(``rounds.jsonl``, the checkpoints' provenance), so both say the same thing the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord

from edgeai.flower.strategy import RoundStats
from edgeai.models.checkpoint import (
    ACCURACY_KEY,
    CLIENT_DELTA_KEY,
    CLIENT_EPSILON_KEY,
    DELTA_KEY,
    EPSILON_KEY,
    LOSS_KEY,
    PRIMARY_METRIC_KEY,
    ROUND_KEY,
    SCORE_KEY,
)


@dataclass(frozen=True)
class RoundRecord:
    """One line of ``metrics.jsonl`` (simulation) or ``rounds.jsonl`` (deployment)."""

    round: int
    accuracy: float | None  # None when the task has no "accuracy" metric
    loss: float
    epsilon: float | None
    client_epsilon: float | None
    bytes_up: int
    bytes_down: int
    seconds: float
    train_loss: float | None
    sampled: int
    accepted: int
    rejected: int
    failed: int
    refused: int = 0  # devices whose privacy budget is exhausted
    delta: float | None = None  # δ of the device-level ε (None without DP-SGD)
    client_delta: float | None = None  # δ of the client-level ε
    problems: tuple[str, ...] = ()  # why replies failed, were rejected or refused (first few)
    # Every metric of the task on the validation set, the primary one first.
    metrics: Mapping[str, float] = field(default_factory=dict)
    primary_metric: str = "accuracy"
    # [attack] (simulation): the sampled clients that attacked; [strategy]: the valid
    # replies the strategy left out of the aggregate (Krum, MultiKrum, Bulyan's selection).
    attackers: tuple[str, ...] = ()
    discarded: tuple[str, ...] = ()

    @property
    def score(self) -> float:
        """The primary metric's value (higher is better): what gates and summaries use."""
        value = self.metrics.get(self.primary_metric, self.accuracy)
        return float("nan") if value is None else float(value)

    @classmethod
    def of(  # noqa: PLR0917  (the round's numbers, in the order of the record)
        cls,
        server_round: int,
        accuracy: float | None,
        loss: float,
        epsilon: float | None,
        stats: RoundStats,
        seconds: float,
        delta: float | None,
        client_delta: float | None,
        metrics: Mapping[str, float] | None = None,
    ) -> RoundRecord:
        """The record of a round from its evaluation and the strategy's statistics.

        ``metrics``: all the task's metrics, the primary first (default: ``accuracy``).
        """
        if metrics is None:
            metrics = {} if accuracy is None else {"accuracy": accuracy}
        return cls(
            round=server_round,
            accuracy=accuracy,
            loss=loss,
            epsilon=epsilon,
            client_epsilon=stats.client_epsilon,
            bytes_up=stats.bytes_up,
            bytes_down=stats.bytes_down,
            seconds=seconds,
            train_loss=stats.train_loss,
            sampled=stats.sampled,
            accepted=stats.accepted,
            rejected=stats.rejected,
            failed=stats.failed,
            refused=stats.refused,
            delta=delta,
            client_delta=client_delta,
            problems=tuple(stats.reasons[:5]),
            metrics=dict(metrics),
            primary_metric=next(iter(metrics), "accuracy"),
            attackers=tuple(stats.attackers),
            discarded=tuple(stats.discarded),
        )

    def provenance(self) -> dict[str, object]:
        """What a checkpoint of this round's model records about it (the release gate's input)."""
        return {
            ROUND_KEY: self.round,
            ACCURACY_KEY: self.accuracy,
            PRIMARY_METRIC_KEY: self.primary_metric,
            SCORE_KEY: self.score,
            LOSS_KEY: self.loss,
            EPSILON_KEY: self.epsilon,
            DELTA_KEY: self.delta,
            CLIENT_EPSILON_KEY: self.client_epsilon,
            CLIENT_DELTA_KEY: self.client_delta,
        }


@dataclass(frozen=True)
class FinalState:
    """What the round loop hands back when the run ends."""

    arrays: ArrayRecord
    rejected_total: int
    # node id -> latest DP report of that client (epsilon, delta, noise-multiplier, ...)
    client_privacy: dict[int, dict[str, float]]
    stopped: str | None = None  # why the run ended before its last round
    # client-level DP: z, q, rounds, δ, ε and the accountant, to recompute ε independently
    client_level: dict[str, Any] | None = None
    first_round: int = 1  # > 1: the run resumed after a checkpoint
    round: int = 0  # the last round reached (the one that stopped it, when stopped)
