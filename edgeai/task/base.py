"""The task contract (DESIGN.md §5): what a user brings — model, data, loss, metrics.

A task is an instance of a :class:`Task` subclass. Every stage of edgeai (simulate, the
deployed ClientApp and ServerApp, DP-SGD, partitioning, evaluation, export, compile, the
release gate) takes a task, never a model name. Named in an experiment as
``[task] ref = "module.path:attribute"`` with ``[task.options]`` passed to it, or by a
built-in name (``[task] name = "mnist"``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset


class Task(ABC):
    """Base class of every task; subclass it and implement the abstract methods.

    Class attributes
    ----------------
    name
        A short identifier (``[a-z0-9-]+``), carried in the training plan: a device whose
        task has another name or version refuses the round with a clear error.
    version
        Bump it when the model or the data's meaning changes.

    The options of ``[task.options]`` arrive as keyword arguments of the constructor.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh, untrained model whose first layers normalize the raw input."""

    @abstractmethod
    def datasets(self) -> tuple[Dataset[Any], Dataset[Any]]:
        """``(train, validation)``: torch-style datasets of ``(input, target)`` pairs."""

    @abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss, the mean over the batch."""

    @abstractmethod
    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Means over the batch; the first key is the primary metric (higher is better).

        Evaluation averages each metric over batches, weighted by batch size, so every
        metric must be a per-sample mean (accuracy, negated MAE, ...).
        """

    @abstractmethod
    def example_input(self) -> torch.Tensor:
        """One batch of raw input (as a device would send it): for export and shapes."""

    def partition(self, num_clients: int, seed: int) -> list[list[int]] | None:
        """A natural partition of the training set (e.g. by speaker), or None."""
        del num_clients, seed
        return None

    def labels(self) -> Sequence[int] | None:
        """The training set's class labels in order (for label-skew partitions), or None."""
        return None

    def onnx_metadata(self) -> Mapping[str, str]:
        """Extra ``metadata_props`` of the exported model (e.g. ``edgeai.vocab``)."""
        return {}
