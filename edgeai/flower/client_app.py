"""The ClientApp: the code every device (real or simulated) runs for a round.

It is the same in simulation and deployment.  The server's train message
carries the weights and a :class:`ClientPlan`; the device's own data comes from
its node config: ``data-path`` (a ``.npz`` on a real device) or
``partition-id`` / ``num-partitions`` (a virtual client's share of the task's training
set in simulation). The plan names the task; a device whose own task (``task`` in its
node config, or the version it has installed) differs refuses with
:data:`~edgeai.flower.tasks.TASK_MISMATCH`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from numpy.typing import NDArray
from torch.utils.data import Dataset, TensorDataset

from edgeai.data.datasets import load_npz
from edgeai.data.partition import PartitionSpec
from edgeai.errors import ConfigError, DataError, PrivacyError
from edgeai.flower.attacks import AttackPlan
from edgeai.flower.plan import ClientPlan, TrainingConfig
from edgeai.flower.sampling import IDENTITY_KEY, identity_of
from edgeai.flower.tasks import (
    TASK_MISMATCH,
    TaskMismatchError,
    load_config,
    partitions,
    task_datasets,
    task_of,
)
from edgeai.flower.training import (
    TrainResult,
    evaluate,
    plan_dp,
    seeded_generator,
    train_dp,
    train_plain,
)
from edgeai.privacy.distributed import NoiseShare, clip_and_share, plan_noise_share
from edgeai.privacy.ledger import BudgetExhaustedError, PrivacyLedger
from edgeai.task import Task, TaskConfig
from edgeai.task.batches import size_of, subset


def secagg_when_asked(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for the messages of a SecAgg+ round, and only those.

    The mod would take every train message for a SecAgg+ stage; a plain round's has no
    SecAgg+ record, and goes straight to :func:`train`.
    """
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


app = ClientApp(mods=[secagg_when_asked])

PLAN_KEY = "plan"
# Error code of a reply from a device that refuses to train past its privacy budget.
BUDGET_EXHAUSTED = 4201


@lru_cache(maxsize=4)
def _partitions(task_json: str, spec_json: str, num_partitions: int) -> list[NDArray[np.int64]]:
    # A simulation actor serves many virtual clients: partition once per process.
    config = TaskConfig.model_validate_json(task_json)
    spec = PartitionSpec.model_validate_json(spec_json)
    train, _ = task_datasets(config)
    return partitions(load_config(config), train, num_partitions, spec, spec.seed)


def local_data(plan: ClientPlan, node_config: Mapping[str, object]) -> Dataset[Any]:
    """The device's training data: its ``data-path`` file, or its simulated partition."""
    if "data-path" in node_config:
        x, y = load_npz_cached(str(node_config["data-path"]))
        target = torch.from_numpy(y)
        # A regression target is one value per sample; a task's model outputs (N, 1).
        return TensorDataset(
            torch.from_numpy(x), target[:, None] if y.dtype.kind == "f" else target
        )
    if "partition-id" not in node_config or "num-partitions" not in node_config:
        raise DataError("node config needs 'data-path' or 'partition-id' and 'num-partitions'")
    parts = _partitions(
        plan.task.model_dump_json(),
        plan.data.partition.model_dump_json(exclude_unset=True),
        int(str(node_config["num-partitions"])),
    )
    train, _ = task_datasets(plan.task)
    return subset(train, parts[int(str(node_config["partition-id"]))])


@lru_cache(maxsize=2)
def load_npz_cached(path: str) -> tuple[NDArray[Any], NDArray[Any]]:
    """Read a device's data file once per process."""
    return load_npz(Path(path), float_targets=True)


def attack_of(plan: ClientPlan, node_config: Mapping[str, object]) -> AttackPlan:
    """The run's attack as this node sees it (simulation only: nodes with a partition id)."""
    if plan.attack is None or "partition-id" not in node_config:
        return AttackPlan.of(None, 0, plan.seed)
    return AttackPlan.of(plan.attack, int(str(node_config["num-partitions"])), plan.seed)


def _relabelled(data: Dataset[Any], task: Task, attack: AttackPlan, node: int) -> Dataset[Any]:
    # label-flip: the attacker trains on flipped labels (a TensorDataset, as partitions are).
    if not attack.attacks(node) or attack.config is None or attack.config.kind != "label-flip":
        return data
    labels = task.labels()
    if labels is None or not isinstance(data, TensorDataset):
        raise ConfigError(f"attack.kind = 'label-flip' needs class labels; task {task.name!r}")
    x, y = data.tensors
    flipped = attack.poison_labels(node, y.numpy(), int(max(labels)) + 1)
    return TensorDataset(x, torch.from_numpy(flipped))


def _plan(msg: Message) -> ClientPlan:
    return ClientPlan.model_validate_json(str(msg.content.config_records["config"][PLAN_KEY]))


def plan_task(plan: ClientPlan, node_config: Mapping[str, object]) -> Task:
    """The plan's task on this device (:class:`TaskMismatchError` if it has another).

    A device whose agent names its task (node config ``task-config``) loads its own copy
    of it; otherwise the plan's config is loaded (a built-in, or a ref on this host).
    """
    own = node_config.get("task-config")
    if own is not None:
        config = TaskConfig.model_validate_json(str(own))
        return task_of(config, plan.task_name, plan.task_version)
    local = node_config.get("task")
    return task_of(
        plan.task, plan.task_name, plan.task_version, None if local is None else str(local)
    )


def _model(task: Task, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    model = task.build_model()
    model.load_state_dict(state)
    return model


@dataclass(frozen=True)
class Device:
    """Who is training and where its privacy ledger lives."""

    subject: str
    ledger_path: Path | None
    run_id: str = "local"


def device_of(
    plan: ClientPlan, node_config: Mapping[str, object], node_id: int, run_id: int
) -> Device:
    """The device: ``node-name`` (deployment) or ``client-<partition-id>`` (simulation)."""
    if "node-name" in node_config:
        subject = str(node_config["node-name"])
    elif "partition-id" in node_config:
        subject = f"client-{node_config['partition-id']}"
    else:
        subject = f"node-{node_id}"
    if "ledger-path" in node_config:
        path: Path | None = Path(str(node_config["ledger-path"]))
    elif plan.ledger_dir:
        path = Path(plan.ledger_dir) / f"{subject}.sqlite"
    else:
        path = None
    return Device(subject, path, str(run_id))


def _dp_round(
    plan: ClientPlan,
    model: torch.nn.Module,
    data: Dataset[Any],
    *,
    task: Task,
    training: TrainingConfig,
    device: Device,
    server_round: int,
    gen: torch.Generator,
) -> tuple[torch.nn.Module, TrainResult, dict[str, int | float]]:
    """Check the ledger, run DP-SGD, record the spend; refuse past the budget."""
    privacy = plan.privacy
    if device.ledger_path is None:
        raise ConfigError(
            "DP-SGD needs a privacy ledger: set 'ledger-path' in the node config "
            "(or ledger_dir in the plan)"
        )
    planned = plan_dp(size_of(data), training, privacy, plan.num_rounds)
    with PrivacyLedger(device.ledger_path) as ledger:
        budget = privacy.budget
        if budget is not None:
            current = ledger.budget(device.subject)
            if current is None or (current.epsilon, current.delta) != (budget, privacy.delta):
                ledger.set_budget(device.subject, budget, privacy.delta, privacy.accountant)
            ledger.require(device.subject, planned)  # BudgetExhaustedError: refuse up front
        model, result = train_dp(
            model,
            data,
            training,
            privacy,
            num_rounds=plan.num_rounds,
            generator=gen,
            loss_fn=task.loss,
            proximal_mu=plan.strategy.mu,
        )
        ledger.record(
            device.subject,
            run_id=device.run_id,
            server_round=server_round,
            noise_multiplier=result.noise_multiplier,
            sample_rate=result.sample_rate,
            steps=result.steps,
            delta=privacy.delta,
            accountant=privacy.accountant,
        )
        history = ledger.history(device.subject)
        epsilon = ledger.spent(device.subject, privacy.delta, privacy.accountant)
    return (
        model,
        result,
        {
            "epsilon": epsilon,
            "delta": privacy.delta,
            "noise-multiplier": result.noise_multiplier,
            "sample-rate": result.sample_rate,
            "dp-steps": sum(h[2] for h in history),
        },
    )


def local_train(
    plan: ClientPlan,
    state: Mapping[str, torch.Tensor],
    node_config: Mapping[str, object],
    server_round: int,
    device: Device,
) -> tuple[dict[str, torch.Tensor], dict[str, int | float]]:
    """One round of local training, free of Flower types (the ClientApp wraps it).

    Returns the new weights and the reply metrics.  With DP, the device's
    ledger is consulted first: :class:`BudgetExhaustedError` means it refuses.
    """
    torch.set_num_threads(max(1, int(str(node_config.get("torch-threads", 1)))))
    task = plan_task(plan, node_config)
    data = local_data(plan, node_config)
    model = _model(task, state)
    node = int(str(node_config.get("partition-id", 0)))
    attack = attack_of(plan, node_config)
    data = _relabelled(data, task, attack, node)
    gen = seeded_generator(plan.seed, server_round, node)
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    metrics: dict[str, int | float] = {}
    training = plan.training.model_copy(
        update={"learning_rate": plan.training.learning_rate_at(server_round, plan.num_rounds)}
    )
    if plan.privacy.enabled:
        model, result, metrics = _dp_round(
            plan,
            model,
            data,
            task=task,
            training=training,
            device=device,
            server_round=server_round,
            gen=gen,
        )
    else:
        result = train_plain(model, data, training, gen, task.loss, proximal_mu=plan.strategy.mu)
    metrics |= {
        "num-examples": result.num_examples,
        "train-loss": result.loss if math.isfinite(result.loss) else -1.0,
        "steps": result.steps,
    }
    local = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    sent = attack.poison_update(node, server_round, {k: v.numpy() for k, v in state.items()}, local)
    return {k: torch.from_numpy(np.asarray(v)) for k, v in sent.items()}, metrics


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on local data; reply with weights and metrics.

    A device whose privacy budget would be exceeded replies with an error of
    code :data:`BUDGET_EXHAUSTED` (and trains nothing); the server counts it.
    A SecAgg+ round's message (the legacy ``fitins.*`` layout) goes to
    :func:`secure_train`.
    """
    if LEGACY_FITINS in msg.content.array_records:
        return secure_train(msg, context)
    plan = _plan(msg)
    config = msg.content.config_records["config"]
    started = time.perf_counter()
    try:
        state, metrics = local_train(
            plan,
            msg.content.array_records["arrays"].to_torch_state_dict(),
            context.node_config,
            int(str(config.get("server-round", 0))),
            device_of(plan, context.node_config, context.node_id, context.run_id),
        )
    except BudgetExhaustedError as exc:
        return Message(Error(code=BUDGET_EXHAUSTED, reason=str(exc)), reply_to=msg)
    except TaskMismatchError as exc:
        return Message(Error(code=TASK_MISMATCH, reason=str(exc)), reply_to=msg)
    # Where a round's time goes: training here vs this process's whole life (a deployed
    # SuperNode starts one ClientApp process per message; the difference is its start-up).
    metrics["train-seconds"] = time.perf_counter() - started
    metrics["process-seconds"] = time.time() - psutil.Process().create_time()
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({**metrics})})
    return Message(content=content, reply_to=msg)


LEGACY_FITINS = "fitins.parameters"  # where Flower's legacy FitIns puts the weights
SHARE_KEY = "noise-share"  # the NoiseShare (JSON) in a SecAgg+ round's fitins.config
STATE_KEYS_KEY = "state-keys"  # the state_dict keys, in the order of the weights


def secure_train(msg: Message, context: Context) -> Message:
    """A SecAgg+ round: train, clip the update, add the noise share; reply with weight 1.

    Flower's ``secaggplus_mod`` reads the reply as a legacy ``FitRes``, masks its vector
    and sends only that, with the weight and metrics: so the metrics are empty, and
    the weight is 1 (the server learns nothing per device but that it replied).
    """
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = fitins.config
    plan = ClientPlan.model_validate_json(str(config[PLAN_KEY]))
    share = noise_share_of(str(config[SHARE_KEY]))
    keys = [str(k) for k in json.loads(str(config[STATE_KEYS_KEY]))]
    arrays = parameters_to_ndarrays(fitins.parameters)
    if len(keys) != len(arrays):
        raise DataError(f"{len(keys)} state keys for {len(arrays)} arrays")
    state = {k: torch.from_numpy(np.array(a)) for k, a in zip(keys, arrays, strict=True)}
    new, _ = local_train(
        plan,
        state,
        context.node_config,
        int(str(config.get("server-round", 0))),
        device_of(plan, context.node_config, context.node_id, context.run_id),
    )
    delta = np.concatenate([(new[k].numpy() - arrays[i]).ravel() for i, k in enumerate(keys)])
    # Fresh OS entropy: a seed the server could know would let it subtract the noise.
    noised = clip_and_share(delta, share, np.random.default_rng())
    parts = np.split(noised, np.cumsum([a.size for a in arrays])[:-1])
    update = [p.reshape(a.shape).astype(np.float32) for p, a in zip(parts, arrays, strict=True)]
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), 1, {})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


def noise_share_of(raw: str) -> NoiseShare:
    """The round's noise share, checked against the plan it must follow.

    Raises
    ------
    DataError
        The share is malformed, or its ranges do not follow from its C, z and threshold.
    """
    try:
        given = NoiseShare(**json.loads(raw))
        planned = plan_noise_share(
            given.clip_norm,
            given.noise_multiplier,
            given.min_survivors,
            given.dimension,
            devices_per_round=given.min_survivors,  # the range grows with these: a floor
            rounds=1,
        )
    except (TypeError, ValueError, PrivacyError) as exc:
        raise DataError(f"malformed noise share: {exc}") from exc
    if given.clip_range < planned.clip_range or given.share_std < planned.share_std:
        raise DataError("the noise share is below what its own C, z and threshold require")
    return given


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the device's local data."""
    plan = _plan(msg)
    try:
        task = plan_task(plan, context.node_config)
    except TaskMismatchError as exc:
        return Message(Error(code=TASK_MISMATCH, reason=str(exc)), reply_to=msg)
    data = local_data(plan, context.node_config)
    state = msg.content.array_records["arrays"].to_torch_state_dict()
    values, loss = evaluate(_model(task, state), data, task)
    metrics = MetricRecord({"num-examples": size_of(data), **values, "loss": loss})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


@app.query("identify")
def identify(msg: Message, context: Context) -> Message:
    """Say who this node is (its partition id or name): the server samples by it."""
    identity = ConfigRecord(identity_of(context.node_config))  # type: ignore[arg-type]
    return Message(content=RecordDict({IDENTITY_KEY: identity}), reply_to=msg)


def plan_config(plan: ClientPlan) -> ConfigRecord:
    """The train/evaluate message config that carries ``plan``."""
    # exclude_unset: the client re-validates, and "field given" is part of the validation.
    return ConfigRecord({PLAN_KEY: json.dumps(plan.model_dump(mode="json", exclude_unset=True))})
