"""The ClientApp: the code every device (real or simulated) runs for a round.

It is the same in simulation and deployment.  The server's train message
carries the weights and a :class:`ClientPlan`; the device's own data comes from
its node config: ``data-path`` (a ``.npz`` on a real device) or
``partition-id`` / ``num-partitions`` (a virtual client's share in simulation).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import cast

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from numpy.typing import NDArray

from edgeai.data.datasets import ArrayDataset, load_dataset, load_npz
from edgeai.data.partition import cached_partition_indices
from edgeai.errors import DataError
from edgeai.fl.plan import ClientPlan, DataConfig
from edgeai.fl.training import evaluate, seeded_generator, train_dp, train_plain
from edgeai.models import build_model
from edgeai.privacy.accounting import epsilon_for

app = ClientApp()

PLAN_KEY = "plan"
_LEDGER_KEY = "edgeai.privacy"


@lru_cache(maxsize=4)
def _partitions(
    data_json: str, num_partitions: int
) -> tuple[ArrayDataset, list[NDArray[np.int64]]]:
    # A simulation actor serves many virtual clients: split and partition once per process.
    data = DataConfig.model_validate_json(data_json)
    split = load_dataset(data.dataset, data.validation_fraction, data.split_seed)
    return split.train, cached_partition_indices(split.train.y, num_partitions, data.partition)


def warm_partitions(plan: ClientPlan, num_partitions: int) -> None:
    """Compute (or load) the simulated partitions now, e.g. while the engine starts."""
    _partitions(plan.data.model_dump_json(exclude_unset=True), num_partitions)


def local_data(plan: ClientPlan, node_config: Mapping[str, object]) -> ArrayDataset:
    """The device's training data: its ``data-path`` file, or its simulated partition."""
    if "data-path" in node_config:
        x, y = load_npz_cached(str(node_config["data-path"]))
        return ArrayDataset(x, y, plan.num_classes)
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise DataError("node config needs 'data-path' or 'partition-id' and 'num-partitions'")
    train_set, parts = _partitions(
        plan.data.model_dump_json(exclude_unset=True), int(str(node_config["num-partitions"]))
    )
    return train_set.subset(parts[int(str(node_config["partition-id"]))])


@lru_cache(maxsize=2)
def load_npz_cached(path: str) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Read a device's data file once per process."""
    return load_npz(Path(path))


def _history(context: Context) -> list[tuple[float, float, int]]:
    rec = context.state.config_records.get(_LEDGER_KEY)
    if rec is None:
        return []
    sigmas = cast(list[float], rec["sigma"])
    rates = cast(list[float], rec["q"])
    steps = cast(list[int], rec["steps"])
    return list(zip(sigmas, rates, steps, strict=True))


def _save_history(context: Context, history: list[tuple[float, float, int]]) -> None:
    context.state.config_records[_LEDGER_KEY] = ConfigRecord(
        {
            "sigma": [float(h[0]) for h in history],
            "q": [float(h[1]) for h in history],
            "steps": [int(h[2]) for h in history],
        }
    )


def _plan(msg: Message) -> ClientPlan:
    return ClientPlan.model_validate_json(str(msg.content.config_records["config"][PLAN_KEY]))


def _model(plan: ClientPlan, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    model = build_model(plan.model, plan.input_shape, plan.num_classes)
    model.load_state_dict(state)
    return model


def local_train(
    plan: ClientPlan,
    state: Mapping[str, torch.Tensor],
    node_config: Mapping[str, object],
    history: list[tuple[float, float, int]],
    server_round: int,
) -> tuple[dict[str, torch.Tensor], dict[str, int | float], list[tuple[float, float, int]]]:
    """One round of local training, free of Flower types (the ClientApp wraps it).

    Returns the new weights, the reply metrics and the extended DP history.
    """
    torch.set_num_threads(max(1, int(str(node_config.get("torch-threads", 1)))))
    data = local_data(plan, node_config)
    model = _model(plan, state)
    node = int(str(node_config.get("partition-id", 0)))
    gen = seeded_generator(plan.seed, server_round, node)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    metrics: dict[str, int | float] = {}
    training = plan.training.model_copy(
        update={"learning_rate": plan.training.learning_rate_at(server_round, plan.num_rounds)}
    )
    if plan.privacy.enabled:
        model, result = train_dp(
            model, data, training, plan.privacy, num_rounds=plan.num_rounds, generator=gen
        )
        history = [*history, (result.noise_multiplier, result.sample_rate, result.steps)]
        metrics |= {
            "epsilon": epsilon_for(history, plan.privacy.delta, plan.privacy.accountant),
            "delta": plan.privacy.delta,
            "noise-multiplier": result.noise_multiplier,
            "sample-rate": result.sample_rate,
            "dp-steps": sum(h[2] for h in history),
        }
    else:
        result = train_plain(model, data, training, gen)
    metrics |= {
        "num-examples": result.num_examples,
        "train-loss": result.loss if math.isfinite(result.loss) else -1.0,
        "steps": result.steps,
    }
    return model.state_dict(), metrics, history


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on local data; reply with weights and metrics."""
    config = msg.content.config_records["config"]
    state, metrics, history = local_train(
        _plan(msg),
        msg.content.array_records["arrays"].to_torch_state_dict(),
        context.node_config,
        _history(context),
        int(str(config.get("server-round", 0))),
    )
    if history:
        _save_history(context, history)
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({**metrics})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the device's local data."""
    plan = _plan(msg)
    data = local_data(plan, context.node_config)
    state = msg.content.array_records["arrays"].to_torch_state_dict()
    accuracy, loss = evaluate(_model(plan, state), data)
    metrics = MetricRecord({"num-examples": len(data), "accuracy": accuracy, "loss": loss})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def plan_config(plan: ClientPlan) -> ConfigRecord:
    """The train/evaluate message config that carries ``plan``."""
    # exclude_unset: the client re-validates, and "field given" is part of the validation.
    return ConfigRecord({PLAN_KEY: json.dumps(plan.model_dump(mode="json", exclude_unset=True))})
