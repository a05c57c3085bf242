"""``regression``: tabular regression on scikit-learn's diabetes data, standardized in-graph.

The data (442 patients, 10 raw features: age, sex, BMI, blood pressure, six serum values;
target: disease progression one year later, 25-346) is read from the scikit-learn wheel;
nothing is downloaded. We take the *unscaled* features (``scaled=False``), so a device
sends what a clinic measures and the model standardizes it: the training split's feature
means and standard deviations, and the target's, are fixed buffers inside the graph.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from edgeai.errors import ConfigError
from edgeai.task.base import Task
from edgeai.task.registry import register

_Pairs = Dataset[tuple[torch.Tensor, ...]]


class Standardize(nn.Module):
    """``(x - mean) / std`` with fixed (non-trainable) buffers, exported with the model."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardized ``x``."""
        return (x - self.mean) / self.std


class Unstandardize(Standardize):
    """``z * std + mean``: back to the target's own units."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the target's units."""
        return x * self.std + self.mean


class TabularMLP(nn.Module):
    """Standardize, an MLP with ReLU, then back to target units: float32 (N, F) -> (N, 1)."""

    def __init__(
        self,
        x_mean: torch.Tensor,
        x_std: torch.Tensor,
        y_mean: torch.Tensor,
        y_std: torch.Tensor,
        hidden: int,
    ) -> None:
        super().__init__()
        features = x_mean.numel()
        self.scale_in = Standardize(x_mean, x_std)
        self.body = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )
        self.scale_out = Unstandardize(y_mean, y_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions in the target's units, (N, 1)."""
        out: torch.Tensor = self.scale_out(self.body(self.scale_in(x)))
        return out


def load_diabetes_arrays() -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Raw features float32 (442, 10) and targets float32 (442,)."""
    from sklearn.datasets import load_diabetes  # noqa: PLC0415 (sklearn is slow to import)

    bunch = load_diabetes(scaled=False)
    return bunch.data.astype(np.float32), bunch.target.astype(np.float32)


class RegressionTask(Task):
    """Predict diabetes progression from 10 clinical features (MSE; metrics ``neg_mae`` first).

    Options (``[task.options]``)
    ----------------------------
    hidden
        Units of each of the MLP's two hidden layers.
    validation_fraction
        Share of the 442 patients held out (a fixed shuffle, seed ``split_seed``).
    split_seed
        Seed of that shuffle.

    The loss is the MSE in standardized target units (the MSE divided by the training
    targets' variance), so one learning rate suits any target scale; the metrics are in the
    target's units. ``r2`` is ``1 - MSE / Var(y_train)``: a per-sample mean, so averaging it
    over batches is exact. ``neg_rmse`` is the batch's RMSE, averaged over batches (at
    most the RMSE of the whole set).
    """

    name: ClassVar[str] = "regression"
    version: ClassVar[str] = "1"

    def __init__(
        self,
        *,
        hidden: int = 64,
        validation_fraction: float = 0.2,
        split_seed: int = 0,
    ) -> None:
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"option hidden = {hidden!r}; use an integer >= 1")
        if not 0.0 < validation_fraction < 1.0:
            raise ConfigError(
                f"option validation_fraction = {validation_fraction!r}; "
                "use a number between 0 and 1"
            )
        self.hidden = hidden
        x, y = load_diabetes_arrays()
        order = np.random.default_rng(split_seed).permutation(len(y))
        n_val = max(1, round(validation_fraction * len(y)))
        self._val_idx, self._train_idx = order[:n_val], order[n_val:]
        self._x, self._y = torch.from_numpy(x), torch.from_numpy(y)
        x_train, y_train = self._x[self._train_idx], self._y[self._train_idx]
        self.x_mean, self.x_std = x_train.mean(0), x_train.std(0)
        self.y_mean, self.y_std = y_train.mean(), y_train.std()
        self.y_var = float(y_train.var(unbiased=False))

    def build_model(self) -> nn.Module:
        """A fresh :class:`TabularMLP` carrying the training split's statistics."""
        return TabularMLP(self.x_mean, self.x_std, self.y_mean, self.y_std, self.hidden)

    def datasets(self) -> tuple[_Pairs, _Pairs]:
        """``(features float32 (10,), target float32 (1,))`` pairs: train, validation."""
        return (
            TensorDataset(self._x[self._train_idx], self._y[self._train_idx, None]),
            TensorDataset(self._x[self._val_idx], self._y[self._val_idx, None]),
        )

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE in standardized units."""
        return ((output - target) ** 2).mean() / self.y_var

    def metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """``neg_mae`` (primary), ``neg_rmse``, ``r2``; in the target's units."""
        err = (output - target).detach()
        mse = float((err**2).mean())
        return {
            "neg_mae": -float(err.abs().mean()),
            "neg_rmse": -(mse**0.5),
            "r2": 1.0 - mse / self.y_var,
        }

    def example_input(self) -> torch.Tensor:
        """The first four validation patients' raw features, float32 (4, 10)."""
        return self._x[self._val_idx[:4]].clone()


register("regression", RegressionTask)
