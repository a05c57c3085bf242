"""The compile gate's metric: the task's primary metric, computed on ONNX outputs.

A model exported by edgeai names its task's primary metric in its metadata
(``edgeai.primary_metric``); the gate compares each candidate with the fp32 model on that
metric. ``accuracy`` (argmax against integer labels) and the error metrics ``neg_mae``,
``neg_rmse`` and ``neg_mse`` (against float targets) are computed here, with numpy only,
so compiling needs neither torch nor the task's code. A model that names another metric
(a custom task's own) is gated on accuracy when its labels are integers and on
``neg_mae`` when they are floats; the manifest says which.

The drop a profile budgets (``accuracy_drop_pct``) is in points for accuracy (a fraction
in [0, 1]) and, for an error metric, in percent of the fp32 model's error: a candidate
whose MAE is 43.0 against the fp32 model's 42.0 has dropped 2.4 %.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[Any]


def _flat(outputs: Array, targets: Array) -> tuple[Array, Array]:
    return outputs.reshape(len(outputs), -1)[:, 0].astype(np.float64), targets.astype(np.float64)


def _accuracy(outputs: Array, targets: Array) -> float:
    return float((outputs.argmax(axis=1) == targets).mean())


def _neg_mae(outputs: Array, targets: Array) -> float:
    out, y = _flat(outputs, targets)
    return -float(np.abs(out - y).mean())


def _neg_mse(outputs: Array, targets: Array) -> float:
    out, y = _flat(outputs, targets)
    return -float(((out - y) ** 2).mean())


def _neg_rmse(outputs: Array, targets: Array) -> float:
    return -float(np.sqrt(-_neg_mse(outputs, targets)))


_METRICS: dict[str, Callable[[Array, Array], float]] = {
    "accuracy": _accuracy,
    "neg_mae": _neg_mae,
    "neg_mse": _neg_mse,
    "neg_rmse": _neg_rmse,
}


@dataclass(frozen=True)
class GateMetric:
    """A higher-is-better metric of model outputs against targets, and why it was chosen."""

    name: str
    why: str

    def __call__(self, outputs: Array, targets: Array) -> float:
        """The metric of ``outputs`` (N, ...) against ``targets`` (N,)."""
        return _METRICS[self.name](outputs, targets)

    @property
    def is_fraction(self) -> bool:
        """Whether the metric lies in [0, 1] (its drop is then counted in points)."""
        return self.name == "accuracy"

    def drop_pct(self, reference: float, value: float) -> float:
        """How far ``value`` falls below the fp32 model's ``reference``, as budgeted."""
        if self.is_fraction:
            return (reference - value) * 100
        return (reference - value) / max(abs(reference), 1e-12) * 100


def gate_metric(primary: object, targets: Array) -> GateMetric:
    """The metric the gate uses for a model whose task names ``primary`` as its metric."""
    if isinstance(primary, str) and primary in _METRICS:
        labels_are_ints = np.issubdtype(targets.dtype, np.integer)
        if (primary == "accuracy") == labels_are_ints:
            return GateMetric(primary, "the task's primary metric")
    fallback = "accuracy" if np.issubdtype(targets.dtype, np.integer) else "neg_mae"
    named = f"the task's primary metric {primary!r}" if primary else "no primary metric"
    kind = "integer labels" if fallback == "accuracy" else "float targets"
    return GateMetric(fallback, f"{named} cannot be computed here; {kind} give {fallback}")
