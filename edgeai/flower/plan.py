"""What the server tells every client to do in a round: the task, as one typed message."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from edgeai.configfile import Frozen
from edgeai.data.partition import PartitionSpec
from edgeai.flower.attacks import AttackConfig
from edgeai.flower.strategy_config import StrategyConfig
from edgeai.privacy.config import PrivacyConfig
from edgeai.task.registry import TaskConfig


class DataConfig(Frozen):
    """Which data set, its train/validation split, and its partition over clients.

    ``dataset``, ``validation_fraction`` and ``split_seed`` belong to the legacy
    ``[model]`` form (the ``mnist`` task's options); with ``[task]`` the task brings its
    data and only ``partition`` applies.
    """

    dataset: str = "mnist"
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    split_seed: int = 0
    partition: PartitionSpec = PartitionSpec()


class TrainingConfig(Frozen):
    """Local training on each client."""

    local_epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    # "cosine": the learning rate decays over the rounds to 0 (less noise late in DP runs).
    lr_schedule: Literal["constant", "cosine"] = "constant"

    def learning_rate_at(self, server_round: int, num_rounds: int) -> float:
        """The learning rate of round ``server_round`` (1-based) of ``num_rounds``."""
        if self.lr_schedule == "constant" or num_rounds <= 1:
            return self.learning_rate
        progress = min(max(server_round - 1, 0), num_rounds - 1) / (num_rounds - 1)
        return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


class ClientPlan(Frozen):
    """Everything a ClientApp needs besides the model weights and its own data.

    The server sends it as JSON in the train message's config, so simulation and
    deployment run the very same client code.
    """

    # The task (name or ref, options, import folder) and what it must be on the device.
    task: TaskConfig
    task_name: str
    task_version: str
    data: DataConfig
    training: TrainingConfig
    privacy: PrivacyConfig
    # With target_epsilon, σ is calibrated for a client that joins all of these
    # rounds, so no client ends the run above the target.
    num_rounds: int = Field(ge=1)
    seed: int = 0
    # Where devices keep their privacy ledgers when their node config names none
    # (simulation: one SQLite file per virtual device in this directory).
    ledger_dir: str | None = None
    # The server's aggregation (clients read FedProx's μ from it) and, in simulation
    # only, the attack some clients run (edgeai.flower.attacks).
    strategy: StrategyConfig = StrategyConfig()
    attack: AttackConfig | None = None
