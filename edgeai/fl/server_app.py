"""The ServerApp: FedAvg rounds with reply validation and central evaluation."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from edgeai.data.datasets import load_dataset
from edgeai.fl.client_app import plan_config
from edgeai.fl.plan import ClientPlan
from edgeai.fl.strategy import (
    ClientLevelDPFedAvg,
    RoundStats,
    ServerBudgetExhaustedError,
    ValidatingFedAvg,
)
from edgeai.fl.training import evaluate
from edgeai.fl.validation import reference_of
from edgeai.models import build_model
from edgeai.privacy.config import CentralPrivacyConfig


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


@dataclass(frozen=True)
class RoundRecord:
    """One line of ``metrics.jsonl``."""

    round: int
    accuracy: float
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

    @classmethod
    def of(  # noqa: PLR0917  (the round's numbers, in the order of the record)
        cls,
        server_round: int,
        accuracy: float,
        loss: float,
        epsilon: float | None,
        stats: RoundStats,
        seconds: float,
        delta: float | None,
        client_delta: float | None,
    ) -> RoundRecord:
        """The record of a round from its evaluation and the strategy's statistics."""
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
        )


@dataclass(frozen=True)
class FinalState:
    """What the server hands back when the run ends."""

    arrays: ArrayRecord
    rejected_total: int
    # node id -> latest DP report of that client (epsilon, delta, noise-multiplier, ...)
    client_privacy: dict[int, dict[str, float]]
    stopped: str | None = None  # why the run ended before its last round
    # client-level DP: z, q, rounds, δ, ε and the accountant, to recompute ε independently
    client_level: dict[str, Any] | None = None


RoundObserver = Callable[[RoundRecord], None]
FinishObserver = Callable[[FinalState], None]


class _BudgetsExhaustedError(Exception):
    # Ends Flower's round loop from inside it: every sampled device refused to train.
    def __init__(self, server_round: int) -> None:
        super().__init__(
            f"stopped after round {server_round}: every sampled device's privacy budget "
            "is exhausted"
        )


def make_server_app(
    plan: ServerPlan, on_round: RoundObserver, on_finish: FinishObserver
) -> ServerApp:
    """Build a ServerApp that reports each round to ``on_round`` and the model to ``on_finish``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:  # noqa: ARG001  (Flower's signature)
        cp = plan.client
        random.seed(cp.seed)  # Flower samples nodes with the global `random`
        split = load_dataset(cp.data.dataset, cp.data.validation_fraction, cp.data.split_seed)
        model = build_model(cp.model, cp.input_shape, cp.num_classes, seed=cp.seed)
        initial = ArrayRecord(model.state_dict())
        common: dict[str, Any] = {
            "reference": reference_of({k: v.numpy() for k, v in initial.items()}),
            "max_examples": plan.max_examples,
            "fraction_train": plan.clients_per_round / plan.num_clients,
            "min_train_nodes": plan.clients_per_round,
            "min_available_nodes": plan.num_clients,
            "fraction_evaluate": 0.0,  # central evaluation on the validation split instead
        }
        strategy: ValidatingFedAvg
        if plan.central.enabled:
            strategy = ClientLevelDPFedAvg(
                central=plan.central,
                num_clients=plan.num_clients,
                clients_per_round=plan.clients_per_round,
                num_rounds=cp.num_rounds,
                state_path=plan.central_state_path,
                seed=cp.seed,
                **common,
            )
        else:
            strategy = ValidatingFedAvg(**common)
        worst_eps: float | None = None  # ε only grows, so the worst device so far
        started = time.perf_counter()
        latest = initial

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            nonlocal worst_eps, started, latest
            model.load_state_dict(arrays.to_torch_state_dict())
            accuracy, loss = evaluate(model, split.validation)
            if server_round > 0:
                stats = strategy.stats.get(server_round, RoundStats())
                if stats.epsilon is not None:
                    worst_eps = max(stats.epsilon, worst_eps or 0.0)
                now = time.perf_counter()
                on_round(
                    RoundRecord.of(
                        server_round,
                        accuracy,
                        loss,
                        worst_eps,
                        stats,
                        now - started,
                        cp.privacy.delta if cp.privacy.enabled else None,
                        plan.central.delta if plan.central.enabled else None,
                    )
                )
                started = now
                latest = arrays
                if stats.sampled and stats.refused == stats.sampled:
                    raise _BudgetsExhaustedError(server_round)
            return MetricRecord({"accuracy": accuracy, "loss": loss})

        stopped = None
        try:
            strategy.start(
                grid=grid,
                initial_arrays=initial,
                num_rounds=cp.num_rounds,
                timeout=plan.round_timeout_s,
                train_config=plan_config(cp),
                evaluate_fn=evaluate_fn,
            )
        except (_BudgetsExhaustedError, ServerBudgetExhaustedError) as exc:
            stopped = str(exc)
        client_level = None
        if isinstance(strategy, ClientLevelDPFedAvg):
            client_level = {
                "scope": "client-level DP on the server (DP-FedAvg), per participating device",
                "noise_multiplier": strategy.noise_multiplier,
                "sample_rate": strategy.sample_rate,
                "rounds": sum(h[2] for h in strategy.accountant.history),
                "history": strategy.accountant.history,
                "clip_norm": plan.central.clip_norm,
                "delta": plan.central.delta,
                "epsilon": strategy.epsilon(),
                "accountant": "rdp (dp-accounting), Poisson-sampled Gaussian",
                "sampling": "poisson",
            }
        on_finish(
            FinalState(
                arrays=latest,
                rejected_total=strategy.rejected_total,
                client_privacy=strategy.client_privacy,
                stopped=stopped,
                client_level=client_level,
            )
        )

    return app
