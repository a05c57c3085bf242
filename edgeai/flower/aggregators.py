"""Flower's strategies as the aggregation step behind our reply validation.

:class:`~edgeai.flower.strategy.ValidatingFedAvg` samples nodes by stable keys, validates
every reply and keeps the round's statistics; what it then does with the accepted replies
is an :class:`Aggregator`: one instance of Flower's own strategy
(``flwr.serverapp.strategy``), whose ``aggregate_train`` is called on those replies only.

Flower's ``configure_train`` is never called (it samples by random node id and waits
without bound); the state it would set up is set in :meth:`Aggregator.begin` instead:
FedOpt's ``current_arrays`` every round (``fedopt.py``, ``FedOpt.configure_train``) and
FedAvgM's on the first round (``fedavgm.py``, ``FedAvgM.configure_train``).

Krum and MultiKrum keep some replies and drop the rest, and Bulyan first keeps
``n - 2f`` of them by MultiKrum: which ones is recorded (:attr:`Aggregate.kept`), so a
run's ``metrics.jsonl`` says whose updates never reached the model. For Krum and MultiKrum
this uses Flower's own ``select_multikrum`` and ``aggregate_arrayrecords`` (the two steps
of ``MultiKrum.aggregate_train``); Bulyan takes a selection rule, which is wrapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
)
from flwr.serverapp.strategy.fedopt import FedOpt
from flwr.serverapp.strategy.multikrum import select_multikrum
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from edgeai.flower.strategy_config import StrategyConfig

# The Flower class behind each name (Krum and MultiKrum: their selection, see below).
FLOWER: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedavgm": FedAvgM,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "bulyan": Bulyan,
}


@dataclass(frozen=True)
class Aggregate:
    """A round's new global model and whose replies it was made of."""

    arrays: ArrayRecord | None  # None: keep the current model
    kept: tuple[int, ...] | None = None  # node ids whose updates entered; None: all of them


class _KeptArrayRecord(ArrayRecord):
    """An ArrayRecord whose ``to_numpy_ndarrays`` never empties it nor forces a collection.

    Flower's ``ArrayRecord.to_numpy_ndarrays(keep_input=False)`` (``flwr/app/message/
    arrayrecord.py``) pops every array and calls ``gc.collect()`` once per record, and
    ``Bulyan.aggregate_train`` calls it for each of its n - 2f selected replies: a full
    collection of the server's heap per reply (1.6 s each on a 50-client round here,
    97 of the 196 s of a profiled 2-round run). The arrays are the same either way.
    """

    def to_numpy_ndarrays(self, *, keep_input: bool = True) -> list[Any]:  # noqa: ARG002
        """The arrays, in order; the record keeps them."""
        return [v.numpy() for v in self.values()]


class Aggregator:
    """One Flower strategy's aggregation, applied to replies that passed validation."""

    def __init__(self, config: StrategyConfig, weighted_by_key: str = "num-examples") -> None:
        self.config = config
        self.weighted_by_key = weighted_by_key
        self._selected: list[RecordDict] = []
        options: dict[str, Any] = dict(config.options())
        options["weighted_by_key"] = weighted_by_key
        if config.name == "bulyan":
            options["selection_rule"] = self._recording_multikrum
        self.flower: FedAvg | None = None
        if config.name in FLOWER:
            self.flower = FLOWER[config.name](**options)

    def begin(self, arrays: ArrayRecord) -> None:
        """The round's global model: set what Flower's ``configure_train`` would have."""
        if isinstance(self.flower, FedOpt):
            self.flower.current_arrays = {k: a.numpy() for k, a in arrays.items()}
        elif isinstance(self.flower, FedAvgM) and self.flower.current_arrays is None:
            self.flower.current_arrays = arrays

    def aggregate(
        self, server_round: int, replies: Sequence[Message], removed: int = 0
    ) -> Aggregate:
        """The new global model from ``replies`` (all valid, in key order).

        ``removed``: faulty replies already taken out (rejected, crashed); the Krum family
        counts them against its f (:meth:`StrategyConfig.faulty_left`).
        """
        if not replies:
            return Aggregate(None)
        f = self.config.faulty_left(removed)
        if isinstance(self.flower, Bulyan):
            self.flower.num_malicious_nodes = f
        if self.flower is None:  # krum, multikrum
            contents = [m.content for m in replies]
            kept = select_multikrum(
                contents,
                num_malicious_nodes=f,
                num_nodes_to_select=1
                if self.config.name == "krum"
                else self.config.num_nodes_to_select or 1,  # MultiKrum's default
            )
            arrays = aggregate_arrayrecords(kept, self.weighted_by_key)
            return Aggregate(arrays, _node_ids(replies, kept))
        self._selected = []
        new, _ = self.flower.aggregate_train(server_round, replies)
        if self.config.name == "bulyan":
            return Aggregate(new, _node_ids(replies, self._selected))
        return Aggregate(new)

    def _recording_multikrum(
        self, contents: list[RecordDict], num_malicious_nodes: int, num_nodes_to_select: int
    ) -> list[RecordDict]:
        self._selected = select_multikrum(contents, num_malicious_nodes, num_nodes_to_select)
        return [
            RecordDict(
                {
                    **{k: _KeptArrayRecord(dict(r.items())) for k, r in c.array_records.items()},
                    **dict(c.metric_records.items()),
                }
            )
            for c in self._selected
        ]


def _node_ids(replies: Sequence[Message], kept: Sequence[RecordDict]) -> tuple[int, ...]:
    chosen = {id(c) for c in kept}
    return tuple(m.metadata.src_node_id for m in replies if id(m.content) in chosen)
