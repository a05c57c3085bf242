"""Distributed DP in the round loop: every round is Flower's SecAgg+ over the sampled devices.

``[central_privacy] mode = "distributed"``: client-level DP-FedAvg in which the server is
trusted with sums only. Each round the server samples ``clients_per_round`` devices (by
the same seeded sampler as every other strategy) and runs Flower's own SecAgg+ server
workflow (``SecAggPlusWorkflow``: setup, key sharing, masked vectors, unmasking) on them,
through the grid the loop was given — the simulation's or a deployed SuperLink's. Each
device trains as usual, clips its model update to C, adds its share of the noise
(:mod:`edgeai.privacy.distributed`) and hands it to Flower's ``secaggplus_mod``
(:func:`edgeai.flower.client_app.secagg_when_asked`), which masks it. The server unmasks
the sum of the survivors, divides it by the devices a round expects, as trusted DP-FedAvg
does, and adds it to the global model. What the server keeps of a round: the sum, who was
sampled and who replied; each reply's record is emptied by the workflow once added in.

Flower's SecAgg+ is a *legacy* workflow: it asks a ``Strategy`` for ``configure_fit`` /
``aggregate_fit`` and reads a ``LegacyContext``. :class:`_OneRound` is that strategy for
one round: the nodes and the instructions edgeai already chose, and a place to put the
unmasked mean.

Privacy (docs/PRIVACY.md, "Distributed DP over secure aggregation"): the accountant is the
client-level one with no sampling amplification (q = 1 per round): the server chose who
took part, so it cannot be hidden from it. A device's ε composes the rounds it took part
in; the run's ε is that of a device in every round.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters
from flwr.common import parameters_to_ndarrays as to_ndarrays
from flwr.common.serde import message_to_proto
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from edgeai.flower.client_app import PLAN_KEY, SHARE_KEY, STATE_KEYS_KEY
from edgeai.flower.grids import ForwardingGrid
from edgeai.flower.strategy import ClientLevelDPFedAvg, RoundStats, ValidatingFedAvg
from edgeai.privacy.distributed import QUANTIZATION_BITS, NoiseShare, plan_noise_share

CLIP_FAILURE = 1e-9  # P(any coordinate leaves SecAgg+'s range in the run): added to δ
# SecAgg+ shares each device's keys with this many neighbours (itself included) when a
# round has more devices: the masking and secret-sharing cost grows with it, not with the
# round (Bell et al. 2020's logarithmic neighbourhoods); a majority of them can unmask.
NEIGHBOURS = 21


# Pushes messages, returns the replies that came within the timeout (seconds).
Exchange = Callable[[Sequence[Message], float], list[Message]]


def share_to_json(share: NoiseShare) -> str:
    """The noise share as the train config carries it."""
    return json.dumps(asdict(share))


class _PollingGrid(ForwardingGrid):
    """The loop's grid for SecAgg+'s stages: fine reply polling, and bytes counted."""

    def __init__(self, inner: Grid, stats: RoundStats, exchange: Exchange, timeout_s: float):
        super().__init__(inner)
        self.stats, self.exchange, self.timeout_s = stats, exchange, timeout_s

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        batch = list(messages)
        self.stats.bytes_down += sum(message_to_proto(m).ByteSize() for m in batch)
        # Flower's deployed grid sleeps 3 s between pulls; a SecAgg+ round has four stages.
        replies = self.exchange(batch, timeout or self.timeout_s)
        self.stats.bytes_up += sum(message_to_proto(m).ByteSize() for m in replies)
        return replies


class _OneRound(FedAvg):
    """The legacy strategy SecAgg+ drives for one round: edgeai's sample, then the mean."""

    def __init__(self, chosen: list[tuple[ClientProxy, FitIns]]) -> None:
        super().__init__(fraction_evaluate=0.0)
        self.chosen = chosen
        self.mean: list[np.ndarray] | None = None
        self.survivors = 0

    def configure_fit(
        self,
        server_round: int,  # noqa: ARG002  (Flower's signature)
        parameters: Parameters,  # noqa: ARG002
        client_manager: Any,  # noqa: ARG002
    ) -> list[tuple[ClientProxy, FitIns]]:
        return self.chosen

    def aggregate_fit(
        self,
        server_round: int,  # noqa: ARG002  (Flower's signature)
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],  # noqa: ARG002
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        # Every result carries the same unmasked mean (weights are 1): keep it once.
        if results:
            self.mean = to_ndarrays(results[0][1].parameters)
            self.survivors = len(results)
        return None, {}


class _ThresholdedSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ that unmasks only a sum of at least ``min_survivors`` devices.

    SecAgg+'s own threshold holds per neighbourhood; the noise is calibrated for the
    round's total, so the server checks that before asking for the shares that unmask.
    """

    def __init__(self, min_survivors: int, devices: int, **kwargs: Any) -> None:
        if devices <= NEIGHBOURS:  # everyone shares with everyone; t of them unmask
            super().__init__(1.0, min_survivors, **kwargs)
        else:
            super().__init__(NEIGHBOURS, NEIGHBOURS // 2 + 1, **kwargs)
        self.min_survivors = min_survivors

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        if len(state.active_node_ids) < self.min_survivors:
            return False  # too little noise in the sum: abort before anything is unmasked
        return bool(super().unmask_stage(grid, context, state))


class DistributedDPFedAvg(ClientLevelDPFedAvg):
    """Client-level DP-FedAvg whose noise the devices add, aggregated by SecAgg+."""

    amplified = False  # the server chooses who takes part: it cannot be hidden from it
    delta_reserved = CLIP_FAILURE

    def __init__(self, *, dimension: int, round_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_survivors = self.central.survivors_needed(self.expected_clients)
        self.timeout_s = round_timeout_s
        self.share = plan_noise_share(
            self.central.clip_norm,
            self.noise_multiplier,
            self.min_survivors,
            dimension,
            devices_per_round=self.expected_clients,
            rounds=kwargs["num_rounds"],
            clip_failure=CLIP_FAILURE,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Refuse a round past the budget; else sample a fixed number, as FedAvg does."""
        self.check_budget(server_round)
        self._global = arrays
        return ValidatingFedAvg.configure_train(self, server_round, arrays, config, grid)

    def secure_round(
        self, server_round: int, messages: Sequence[Message], grid: Grid, exchange: Exchange
    ) -> tuple[ArrayRecord | None, int]:
        """Run SecAgg+ with the nodes of ``messages``; the new global model, and who dropped.

        ``exchange`` carries each of the protocol's four stages over ``grid``.

        None keeps the current model: fewer than ``min_survivors`` devices stayed (the
        workflow aborts; nothing is released, nothing is accounted).
        """
        if self._global is None:
            raise RuntimeError("configure_train must run before secure_round")
        stats = self.stats.setdefault(server_round, RoundStats())
        stats.bytes_down = 0  # counted on the wire here, all four stages
        keys = list(self._global.keys())
        base = {k: self._global[k].numpy() for k in keys}
        params = ndarrays_to_parameters([base[k] for k in keys])
        plan = str(next(iter(messages)).content.config_records["config"][PLAN_KEY])
        fit_config: dict[str, Scalar] = {
            PLAN_KEY: plan,
            "server-round": server_round,
            SHARE_KEY: share_to_json(self.share),
            STATE_KEYS_KEY: json.dumps(keys),
        }
        run_id = int(getattr(grid.run, "run_id", 0))
        one = _OneRound(
            [
                (GridClientProxy(m.metadata.dst_node_id, grid, run_id), FitIns(params, fit_config))
                for m in messages
            ]
        )
        context = LegacyContext(
            Context(run_id, 0, {}, RecordDict(), {}), ServerConfig(num_rounds=1), one
        )
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {WorkflowKey.CURRENT_ROUND: server_round}
        )
        context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            params, keep_input=True
        )
        workflow = _ThresholdedSecAggPlus(
            self.min_survivors,
            len(messages),
            max_weight=1.0,  # each device weighs 1: the sum, not a data-weighted mean
            clipping_range=self.share.clip_range,
            quantization_range=2**QUANTIZATION_BITS,
            timeout=self.timeout_s,
        )
        workflow(_PollingGrid(grid, stats, exchange, self.timeout_s), context)
        stats.accepted = one.survivors
        dropped = len(messages) - one.survivors
        if one.mean is None:
            stats.reasons.append(
                f"SecAgg+ aborted: fewer than {self.min_survivors} of {len(messages)} "
                "devices stayed; the model is unchanged and nothing was released"
            )
            return None, len(messages)
        self.accountant.step(self.noise_multiplier, self.sample_rate)
        self.save_accountant()
        stats.client_epsilon = self.epsilon()
        # The unmasked mean is the survivors' sum over their count; scale to the sum over
        # the devices a round expects, as trusted DP-FedAvg divides its noisy sum.
        scale = one.survivors / self.expected_clients
        new = {
            k: Array((base[k] + scale * mean.reshape(base[k].shape)).astype(base[k].dtype))
            for k, mean in zip(keys, one.mean, strict=True)
        }
        return ArrayRecord(new), dropped
