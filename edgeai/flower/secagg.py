"""Distributed DP over Flower's SecAgg+: devices clip and noise their updates, the server sees sums.

Flower 1.42 ships SecAgg+ as a server *workflow* (``SecAggPlusWorkflow``) that runs inside
the legacy ``DefaultWorkflow`` (it needs a ``LegacyContext``: a ``Strategy`` with
``configure_fit``/``aggregate_fit`` and a client manager) and a client *mod*
(``secaggplus_mod``) that wraps a plain ``train`` handler and reads its reply in the legacy
``fitres.*`` record layout. Neither plugs into edgeai's Message-API round loop
(:mod:`edgeai.flower.loop`) without re-implementing the four server stages, so this
module runs a distributed-DP FedAvg on Flower's own SecAgg+ code, both sides:

- each device computes its update (a vector: a model delta), clips it to C and adds its
  noise share N(0, (zC')²/t) (:mod:`edgeai.privacy.distributed`), and returns it with
  weight 1; the mod quantizes and masks it;
- the server workflow unmasks only the sum (with t of the shares of every key), divides by
  the survivors; the strategy here adds that mean to the global vector and keeps nothing
  else. :class:`RecordingGrid` records every byte the server receives, for the test that
  an individual update cannot be read from it, and for the overhead bench.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import (
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

from edgeai.privacy.distributed import QUANTIZATION_BITS, NoiseShare, clip_and_share

# A device's update for a round, from its partition id, the round and the global vector.
UpdateFn = Callable[[int, int, np.ndarray], np.ndarray]


@dataclass
class ServerView:
    """Everything the server received and kept in a run, and what it cost."""

    # Copies as they arrived (the workflows empty the records they consume).
    received: list[Message] = field(default_factory=list)
    bytes_down: int = 0
    bytes_up: int = 0
    round_seconds: list[float] = field(default_factory=list)
    aggregates: list[np.ndarray] = field(default_factory=list)  # mean update per round
    survivors: list[int] = field(default_factory=list)


class RecordingGrid(Grid):
    """A grid that forwards to Flower's and records what crosses it (sizes, replies)."""

    def __init__(self, inner: Grid, view: ServerView) -> None:
        self.inner, self.view = inner, view

    def set_run(self, run: Any) -> None:  # noqa: D102
        self.inner.set_run(run)

    @property
    def run(self) -> Any:  # noqa: D102
        return self.inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # noqa: D102
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:  # noqa: D102
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        batch = list(messages)
        self.view.bytes_down += sum(message_to_proto(m).ByteSize() for m in batch)
        return self.inner.push_messages(batch)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        replies = list(self.inner.pull_messages(message_ids))
        self._record(replies)
        return replies

    def send_and_receive(  # noqa: D102
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        batch = list(messages)
        self.view.bytes_down += sum(message_to_proto(m).ByteSize() for m in batch)
        replies = list(self.inner.send_and_receive(batch, timeout=timeout))
        self._record(replies)
        return replies

    def _record(self, replies: list[Message]) -> None:
        for reply in replies:
            proto = message_to_proto(reply)
            self.view.bytes_up += proto.ByteSize()
            self.view.received.append(message_from_proto(proto))


def _round_config(server_round: int) -> dict[str, Scalar]:
    return {"server_round": server_round}


class _MeanUpdate(FedAvg):
    """FedAvg of updates: the workflow hands over the survivors' mean; add it, keep no more."""

    def __init__(self, start: np.ndarray, view: ServerView, clients: int) -> None:
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=clients,
            min_available_clients=clients,
            initial_parameters=ndarrays_to_parameters([start]),
            on_fit_config_fn=_round_config,
        )
        self.current, self.view, self._started = start.astype(np.float64), view, 0.0

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: Any
    ) -> list[tuple[ClientProxy, FitIns]]:
        self._started = time.perf_counter()
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        aggregated, _ = super().aggregate_fit(server_round, results, failures)
        if aggregated is None:
            return None, {}
        mean_update = parameters_to_ndarrays(aggregated)[0].astype(np.float64)
        self.current = self.current + mean_update
        self.view.aggregates.append(mean_update)
        self.view.survivors.append(len(results))
        self.view.round_seconds.append(time.perf_counter() - self._started)
        return ndarrays_to_parameters([self.current.astype(np.float32)]), {}


def server_app(
    start: np.ndarray,
    rounds: int,
    clients: int,
    view: ServerView,
    share: NoiseShare | None,
    *,
    reconstruction_threshold: int | None = None,
) -> ServerApp:
    """FedAvg of device updates for ``rounds``; over SecAgg+ when ``share`` is given."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = _MeanUpdate(start, view, clients)
        legacy = LegacyContext(context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        fit = None
        if share is not None:
            fit = SecAggPlusWorkflow(
                num_shares=clients,
                reconstruction_threshold=reconstruction_threshold or share.min_survivors,
                clipping_range=share.clip_range,
                quantization_range=2**QUANTIZATION_BITS,
                max_weight=1.0,  # every device weighs 1: the sum, not a data-weighted mean
            )
        DefaultWorkflow(fit_workflow=fit)(RecordingGrid(grid, view), legacy)

    return app


class _Device(NumPyClient):
    def __init__(self, partition: int, update: UpdateFn, share: NoiseShare | None) -> None:
        self.partition, self.update, self.share = partition, update, share

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        server_round = int(config.get("server_round", 0))
        delta = self.update(self.partition, server_round, parameters[0])
        if self.share is not None:
            rng = np.random.default_rng([self.partition, server_round, 7])
            delta = clip_and_share(delta, self.share, rng)
        # Weight 1, and no metrics: nothing per device reaches the server in the clear.
        return [np.asarray(delta, np.float32).reshape(parameters[0].shape)], 1, {}


def client_app(update: UpdateFn, share: NoiseShare | None) -> ClientApp:
    """Devices that send ``update(partition, round, global)``: clipped, noised and masked."""

    def client_fn(context: Context) -> Client:
        return _Device(int(str(context.node_config["partition-id"])), update, share).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if share is not None else [])
