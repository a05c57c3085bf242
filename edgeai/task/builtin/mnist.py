"""``mnist``: image classification with edgeai's original models, on MNIST or any images.

Options: ``model`` (``dp-cnn``, ``dp-cnn-tiny``, ``fedavg-2nn``, ``fedavg-cnn``; see
:mod:`edgeai.models`), ``dataset`` (``mnist``, ``digits`` or a path to an ``.npz`` of
``X``, ``y``), ``validation_fraction``, ``split_seed`` and ``holdout`` (the last N samples
of the data set are held out of train and validation: a test set nothing trains or tunes on,
scored afterwards by ``simulations/privacy/heldout.py``). An experiment's legacy
``[model] name = ...`` with ``[data]`` maps to this task, with the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import TensorDataset

from edgeai.data.datasets import Split, load_dataset
from edgeai.errors import ConfigError, DataError, UnknownNameError
from edgeai.models.registry import build_model, model_names
from edgeai.task.base import Task
from edgeai.task.registry import register


class MnistTask(Task):
    """Classify images (float32 in [0, 1], (N, C, H, W)) with a registered model."""

    name: ClassVar[str] = "mnist"
    version: ClassVar[str] = "1"

    def __init__(
        self,
        model: str = "dp-cnn",
        dataset: str = "mnist",
        validation_fraction: float = 0.2,
        split_seed: int = 0,
        holdout: int = 0,
    ) -> None:
        if model not in model_names():
            raise ConfigError(str(UnknownNameError("model", model, model_names())))
        self.model_name = model
        self.dataset = dataset
        try:
            self.split: Split = load_dataset(dataset, validation_fraction, split_seed, holdout)
        except (DataError, UnknownNameError) as exc:
            raise ConfigError(f"option dataset = {dataset!r}: {exc}") from exc
        self.input_shape = self.split.train.input_shape
        self.num_classes = self.split.train.num_classes

    def build_model(self) -> nn.Module:
        """A fresh registered model for this data's shape and classes."""
        return build_model(self.model_name, self.input_shape, self.num_classes)

    def datasets(self) -> tuple[TensorDataset, TensorDataset]:
        """``(image float32 (C, H, W), label int64)`` pairs: train, validation."""
        train, val = self.split.train, self.split.validation
        return (
            TensorDataset(torch.from_numpy(train.x), torch.from_numpy(train.y)),
            TensorDataset(torch.from_numpy(val.x), torch.from_numpy(val.y)),
        )

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, the mean over the batch."""
        return F.cross_entropy(output, target)

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """``accuracy`` (top-1), counted exactly (not a float32 mean)."""
        correct = int((output.argmax(1) == target).sum())
        return {"accuracy": correct / max(len(target), 1)}

    def example_input(self) -> torch.Tensor:
        """The first two validation images."""
        return torch.from_numpy(self.split.validation.x[:2].copy())

    def labels(self) -> Sequence[int]:
        """The training labels, for label-skew partitions."""
        labels: list[int] = self.split.train.y.tolist()
        return labels


register("mnist", MnistTask)
