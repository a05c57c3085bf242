"""A task of your own: a small residual CNN with GroupNorm on 3x32x32 RGB images.

Copy this folder, then change the data and the model. ``edgeai simulate experiment.toml``
imports this file (``[task] ref = "task:CustomTask"``: module ``task`` from this folder,
attribute ``CustomTask``) and passes ``[task.options]`` to the constructor.

The data is an ``.npz`` with ``X`` (uint8 images, (N, 3, 32, 32), channels first) and
``y`` (int labels), the format ``edgeai compile --calibration`` reads too. If the file is
missing, four classes of coloured patterns are generated into it, deterministically.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import TensorDataset

from edgeai.task import Task

HERE = Path(__file__).resolve().parent


def generate(path: Path, samples: int = 2000, seed: int = 0) -> None:
    """Write ``samples`` RGB images of 4 classes to ``path``.

    Stripes across, stripes down, a square, a diagonal: each in a random colour on a
    noisy background.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    y = rng.integers(0, 4, samples)
    images = np.empty((samples, 3, 32, 32), np.uint8)
    for i, label in enumerate(y):
        period = rng.integers(4, 9)
        phase = rng.integers(0, period)
        if label == 0:
            mask = (yy + phase) % period < period // 2
        elif label == 1:
            mask = (xx + phase) % period < period // 2
        elif label == 2:
            cy, cx, half = rng.integers(10, 22), rng.integers(10, 22), rng.integers(4, 9)
            mask = (abs(yy - cy) < half) & (abs(xx - cx) < half)
        else:
            mask = abs(yy - xx + rng.integers(-8, 9)) < rng.integers(2, 5)
        colour = rng.integers(90, 256, 3)[:, None, None]
        background = rng.integers(0, 80, 3)[:, None, None]
        noise = rng.normal(0, 20, (3, 32, 32))
        images[i] = np.clip(np.where(mask, colour, background) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, X=images, y=y.astype(np.int64))


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` with the training data's statistics, in the graph."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).clone())
        self.register_buffer("std", std.reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized ``x``."""
        return (x - self.mean) / self.std


class Residual(nn.Module):
    """conv-GroupNorm-ReLU-conv-GroupNorm plus the input (GroupNorm: DP-SGD safe)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(4, channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(4, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(x + body(x))``."""
        return F.relu(x + self.body(x))


class ResNetTiny(nn.Module):
    """Normalize, stem, two residual stages (the second at half resolution), pool, linear."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, classes: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            Normalize(mean, std),
            nn.Conv2d(3, width, 3, padding=1),
            nn.GroupNorm(4, width),
            nn.ReLU(),
            Residual(width),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.GroupNorm(4, 2 * width),
            nn.ReLU(),
            Residual(2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, classes) of images (N, 3, 32, 32) in [0, 1]."""
        return self.net(x)


class CustomTask(Task):
    """Classify 3x32x32 RGB images (float32 in [0, 1], channels first) into 4 classes."""

    name: ClassVar[str] = "custom-rgb"
    version: ClassVar[str] = "1"

    def __init__(
        self, data: str = "data.npz", samples: int = 2000, width: int = 16, seed: int = 0
    ) -> None:
        path = Path(data) if Path(data).is_absolute() else HERE / data
        if not path.is_file():
            generate(path, samples, seed)
        with np.load(path, allow_pickle=False) as arrays:
            x = torch.from_numpy(arrays["X"].astype(np.float32) / 255.0)
            y = torch.from_numpy(arrays["y"].astype(np.int64))
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        n_val = len(y) // 5
        self.train = TensorDataset(x[order[n_val:]], y[order[n_val:]])
        self.val = TensorDataset(x[order[:n_val]], y[order[:n_val]])
        train_x = self.train.tensors[0]
        # Normalization from this data set's own statistics (never another data set's).
        self.mean = train_x.mean(dim=(0, 2, 3))
        self.std = train_x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        self.classes = int(y.max()) + 1
        self.width = width

    def build_model(self) -> nn.Module:
        """A fresh model; its first layer normalizes with the training data's statistics."""
        return ResNetTiny(self.mean, self.std, self.classes, self.width)

    def datasets(self) -> tuple[TensorDataset, TensorDataset]:
        """``(train, validation)``: (image float32 (3, 32, 32), label int64) pairs."""
        return self.train, self.val

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, the mean over the batch."""
        return F.cross_entropy(output, target)

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Accuracy; the first key is the primary metric (higher is better)."""
        correct = int((output.argmax(1) == target).sum())
        return {"accuracy": correct / max(len(target), 1)}

    def example_input(self) -> torch.Tensor:
        """Two validation images, as a device would send them."""
        return self.val.tensors[0][:2].clone()

    def labels(self) -> list[int]:
        """The training labels: lets ``[data.partition] kind = "dirichlet"`` skew them."""
        labels: list[int] = self.train.tensors[1].tolist()
        return labels
