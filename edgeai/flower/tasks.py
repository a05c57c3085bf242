"""The task of a run, as the ServerApp and every ClientApp see it.

The training plan carries the task's config (a built-in name or a ref, its options and
the folder its module imports from) and the task's name and version. Each process loads
the task once (:func:`task_of`); a device whose task has another name or version refuses
the round (:class:`TaskMismatchError`), since its weights would mean something else.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.utils.data import Dataset

from edgeai.data.partition import PartitionSpec, cached_partition_indices
from edgeai.errors import ConfigError
from edgeai.models.checkpoint import TASK_MODEL_PREFIX
from edgeai.task import Task, TaskConfig, load_task
from edgeai.task.batches import size_of
from edgeai.task.builtin.mnist import MnistTask

# Error code of a reply from a device whose task is not the plan's (name or version).
TASK_MISMATCH = 4202


class TaskMismatchError(ConfigError):
    """The device's task is not the one the plan names (another name or version)."""


@lru_cache(maxsize=4)
def _load(config_json: str) -> Task:
    # A simulation actor serves many virtual clients: load (and read the data) once.
    return load_task(TaskConfig.model_validate_json(config_json))


def load_config(config: TaskConfig) -> Task:
    """The task ``config`` names, loaded once per process."""
    return _load(config.model_dump_json())


def task_of(config: TaskConfig, name: str, version: str, local: str | None = None) -> Task:
    """The plan's task; raise :class:`TaskMismatchError` if it is not ``name`` ``version``.

    ``local`` is the task name a device's own config gives (``task`` in the node config).
    """
    if local is not None and local != name:
        raise TaskMismatchError(
            f"this device runs task {local!r} but the plan trains {name!r} v{version}; "
            "give the device the plan's task (node config 'task') or start a run of its task"
        )
    task = load_config(config)
    if (task.name, task.version) != (name, version):
        raise TaskMismatchError(
            f"the plan trains task {name!r} v{version} but this device's {config.label!r} is "
            f"{task.name!r} v{task.version}; install the same version of the task here"
        )
    return task


def build_seeded(task: Task, seed: int | None) -> nn.Module:
    """``task.build_model()``, with initial weights drawn from ``seed`` when given."""
    if seed is None:
        return task.build_model()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return task.build_model()


@lru_cache(maxsize=4)
def _split(config_json: str) -> tuple[Dataset[Any], Dataset[Any]]:
    return load_config(TaskConfig.model_validate_json(config_json)).datasets()


def task_datasets(config: TaskConfig) -> tuple[Dataset[Any], Dataset[Any]]:
    """``(train, validation)`` of the task, read once per process."""
    return _split(config.model_dump_json())


def partitions(
    task: Task, train: Dataset[Any], num_partitions: int, spec: PartitionSpec, seed: int
) -> list[NDArray[np.int64]]:
    """Each client's indices: the task's natural partition, label skew, or IID.

    Raises
    ------
    ConfigError
        Label skew was asked for a task without labels, or the natural partition is not
        ``num_partitions`` lists of valid indices.
    """
    natural = task.partition(num_partitions, seed)
    n = size_of(train)
    if natural is not None:
        if len(natural) != num_partitions:
            raise ConfigError(
                f"task {task.name!r}: partition() gave {len(natural)} parts for "
                f"{num_partitions} clients"
            )
        parts = [np.asarray(p, dtype=np.int64) for p in natural]
        if any(len(p) and (p.min() < 0 or p.max() >= n) for p in parts):
            raise ConfigError(f"task {task.name!r}: partition() gave indices outside 0..{n - 1}")
        return parts
    labels = task.labels()
    if labels is None:
        if spec.kind != "iid":
            raise ConfigError(
                f"data.partition.kind = {spec.kind!r} needs class labels, but task "
                f"{task.name!r} has none (labels() is None); use kind = 'iid'"
            )
        # IID uses the labels only for their count.
        return cached_partition_indices(np.zeros(n, dtype=np.int64), num_partitions, spec)
    return cached_partition_indices(np.asarray(labels, dtype=np.int64), num_partitions, spec)


def checkpoint_identity(task: Task) -> tuple[str, tuple[int, ...], int]:
    """``(model, input_shape, outputs)`` for a checkpoint of the task's model.

    The ``mnist`` task's checkpoints name the registered model (``edgeai compile`` and
    the release tools rebuild it by that name); any other is ``task:<name>``.
    """
    if isinstance(task, MnistTask):
        return task.model_name, task.input_shape, task.num_classes
    example = task.example_input()
    model = task.build_model().eval()
    with torch.no_grad():
        out = model(example)
    return (
        f"{TASK_MODEL_PREFIX}{task.name}",
        tuple(int(d) for d in example.shape[1:]),
        int(out.shape[-1]),
    )
