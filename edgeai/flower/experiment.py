"""Experiment files (TOML): typed, immutable, validated with errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edgeai.configfile import Frozen, parse, read_mapping
from edgeai.data.datasets import BUILTIN_DATASETS
from edgeai.errors import ConfigError
from edgeai.flower.attacks import AttackConfig
from edgeai.flower.plan import DataConfig, TrainingConfig
from edgeai.flower.strategy_config import StrategyConfig, check_strategy
from edgeai.privacy.config import CentralPrivacyConfig, PrivacyConfig
from edgeai.task.registry import TaskConfig

MODEL_NAMES = (
    "dp-cnn",
    "dp-cnn-tiny",
    "fedavg-2nn",
    "fedavg-cnn",
    "scatternet",
)  # kept in step with edgeai.models (tested)


class FederationConfig(Frozen):
    """How many clients exist and how many train in each round."""

    num_clients: int = Field(ge=1)
    clients_per_round: int | None = Field(default=None, ge=1)
    fraction_per_round: float | None = Field(default=None, gt=0, le=1)
    rounds: int = Field(ge=1)
    round_timeout_s: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> FederationConfig:
        if self.clients_per_round is not None and self.fraction_per_round is not None:
            raise ConfigError("set clients_per_round or fraction_per_round, not both")
        if self.clients_per_round is not None and self.clients_per_round > self.num_clients:
            raise ConfigError(
                f"clients_per_round = {self.clients_per_round} exceeds num_clients = "
                f"{self.num_clients}; lower it or add clients"
            )
        return self

    @property
    def per_round(self) -> int:
        """Clients sampled in each round (C·K in the FedAvg paper, at least 1)."""
        if self.clients_per_round is not None:
            return self.clients_per_round
        if self.fraction_per_round is not None:
            return max(1, round(self.fraction_per_round * self.num_clients))
        return self.num_clients


class FleetConfig(Frozen):
    """A simulated fleet of device classes (``[simulation.fleet]``, see docs/SIMULATION.md)."""

    # Device profile name -> share of the clients, e.g. {rpi4 = 0.5, x86-64-avx2 = 0.5}.
    mix: dict[str, float] = Field(min_length=1)
    # Replies later than this (simulated seconds) are dropped; None: wait for everyone.
    round_deadline_s: float | None = Field(default=None, gt=0)
    # Seconds one training sample takes on a relative_compute = 1.0 device; None: measured.
    sample_seconds: float | None = Field(default=None, gt=0)

    @field_validator("mix")
    @classmethod
    def _known_profiles(cls, mix: dict[str, float]) -> dict[str, float]:
        from edgeai.profiles.loader import profile_names  # noqa: PLC0415  (reads YAML)

        known = profile_names()
        for name, share in mix.items():
            if name not in known:
                raise ValueError(f"unknown device profile {name!r}; choose from {known}")
            if share <= 0:
                raise ValueError(f"share of {name!r} is {share}; give a positive share")
        return mix


class SimulationConfig(Frozen):
    """Where virtual clients run: Flower's simulation engine on Ray, or batched in-process."""

    # "ray": each client a ClientApp call on Flower's engine; "vmap": all of a round's
    # clients trained at once in this process (torch.func), see edgeai/simulation/vmap.py.
    backend: Literal["ray", "vmap"] = "ray"
    # Empty: a local Ray instance.  "auto" or "ray://HOST:10001": an existing cluster.
    ray_address: str = ""
    cpus_per_client: float = Field(default=1.0, gt=0)
    # CPUs Ray may use on this machine (local instance only); empty = all.
    num_cpus: int | None = Field(default=None, ge=1)
    torch_threads_per_client: int = Field(default=1, ge=1)
    # Device classes, links, availability and a round deadline (None: identical devices).
    fleet: FleetConfig | None = None


class ModelConfig(Frozen):
    """The model, by registered name."""

    name: str

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in MODEL_NAMES:
            raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
        return name


class Experiment(Frozen):
    """One simulation experiment: everything ``edgeai simulate`` needs."""

    name: str
    description: str = ""
    seed: int = 0
    # One of: [task] (a built-in name or a ref), or the legacy [model] (the mnist task).
    task: TaskConfig | None = None
    model: ModelConfig | None = None
    data: DataConfig = DataConfig()
    federation: FederationConfig
    training: TrainingConfig = TrainingConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    central_privacy: CentralPrivacyConfig = CentralPrivacyConfig()
    simulation: SimulationConfig = SimulationConfig()
    strategy: StrategyConfig = StrategyConfig()
    attack: AttackConfig | None = None  # simulation only

    @model_validator(mode="after")
    def _task_or_model(self) -> Experiment:
        if (self.task is None) == (self.model is None):
            raise ConfigError(
                'give the task: [task] name = "mnist" (a built-in) or ref = "module:attr" '
                '(your own), or the legacy [model] name = "..." — one of them'
            )
        given = {"dataset", "validation_fraction", "split_seed"} & self.data.model_fields_set
        if self.task is not None and given:
            raise ConfigError(
                f"data.{sorted(given)[0]} applies to [model] only: a [task] brings its own "
                "data (pass it as a [task.options] entry); keep [data.partition]"
            )
        check_strategy(self.strategy, self.federation.per_round, self.central_privacy.enabled)
        check_distributed(self)
        return self

    @property
    def task_config(self) -> TaskConfig:
        """The task: ``[task]``, or ``[model]`` and ``[data]`` as the ``mnist`` task."""
        if self.task is not None:
            return self.task
        if self.model is None:  # excluded by the validator
            raise ConfigError("the experiment names no task")
        return TaskConfig(
            name="mnist",
            options={
                "model": self.model.name,
                "dataset": self.data.dataset,
                "validation_fraction": self.data.validation_fraction,
                "split_seed": self.data.split_seed,
            },
        )


def check_distributed(exp: Experiment) -> None:
    """Refuse a distributed-DP experiment SecAgg+ cannot run.

    Raises
    ------
    ConfigError
        Naming the option and the fix.
    """
    central, per_round = exp.central_privacy, exp.federation.per_round
    if not (central.enabled and central.mode == "distributed"):
        return
    if exp.simulation.backend != "ray" or exp.simulation.fleet is not None:
        raise ConfigError(
            'central_privacy.mode = "distributed" runs SecAgg+\'s four message stages, which '
            "the vmap backend and [simulation.fleet] do not carry: use simulation.backend = "
            '"ray" without [simulation.fleet]'
        )
    if per_round < 3:
        raise ConfigError(
            f'central_privacy.mode = "distributed" runs SecAgg+, which needs at least 3 '
            f"devices per round (a sum of 2 reveals each to the other); this round has "
            f"{per_round}: raise federation.clients_per_round"
        )
    needed = central.survivors_needed(per_round)
    if needed > per_round:
        raise ConfigError(
            f"central_privacy.min_survivors = {needed} exceeds the {per_round} devices of a "
            "round; lower it (the noise is calibrated for that many survivors)"
        )
    if exp.attack is not None:
        raise ConfigError(
            "[attack] sends individual updates the server inspects; with central_privacy.mode "
            '= "distributed" the server sees only sums: remove [attack] or use mode = "trusted"'
        )


def load_experiment(path: Path, overrides: dict[str, Any] | None = None) -> Experiment:
    """Read and validate an experiment TOML; relative data paths resolve beside the file.

    ``overrides`` maps dotted field names (``federation.rounds``) to values.
    """
    raw = read_mapping(path)
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("dataset"), str):
        name = data["dataset"]
        if name not in BUILTIN_DATASETS:
            resolved = (path.parent / name).resolve()
            if not resolved.is_file():
                raise ConfigError(
                    f"{path}: data.dataset = {name!r}: no such file ({resolved}); use a "
                    f"built-in data set ({', '.join(BUILTIN_DATASETS)}) or a path to an .npz"
                )
            data["dataset"] = str(resolved)
    task = raw.get("task")
    if isinstance(task, dict) and isinstance(task.get("ref"), str):
        # A user's module imports from the experiment's folder (or task.path beside it),
        # in this process, in Ray workers and on devices alike: carry the absolute path.
        task["path"] = str((path.parent / str(task.get("path", "."))).resolve())
    return parse(Experiment, raw, str(path))


def check_experiment_data(exp: Experiment, source: Path | str) -> None:
    """Load the experiment's data and check the fleet can be cut from it, before Ray starts.

    Raises
    ------
    ConfigError
        Naming ``source``, the field and the fix.
    """
    import numpy as np  # noqa: PLC0415

    from edgeai.data.partition import check_partitionable  # noqa: PLC0415
    from edgeai.flower.tasks import load_config, task_datasets  # noqa: PLC0415
    from edgeai.task.batches import size_of  # noqa: PLC0415
    from edgeai.task.validate import validate_task  # noqa: PLC0415

    try:
        task = load_config(exp.task_config)
        validate_task(task, exp.privacy.enabled)
        train, _ = task_datasets(exp.task_config)
        labels = task.labels()
        if task.partition(exp.federation.num_clients, exp.data.partition.seed) is None:
            y = np.zeros(size_of(train), np.int64) if labels is None else np.asarray(labels)
            spec = exp.data.partition
            if labels is None and spec.kind != "iid":
                raise ConfigError(
                    f"data.partition.kind = {spec.kind!r} needs class labels, but task "
                    f"{task.name!r} has none (labels() is None); use kind = 'iid'"
                )
            check_partitionable(y, exp.federation.num_clients, spec)
        if exp.attack is not None and exp.attack.kind == "label-flip" and labels is None:
            raise ConfigError(
                f"attack.kind = 'label-flip' needs class labels, but task {task.name!r} has "
                "none (labels() is None); choose another attack kind"
            )
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
