"""Batches from a task's datasets: fast slicing for tensor datasets, collation otherwise.

A task returns any torch-style dataset of ``(input, target)`` pairs. Most are a
``TensorDataset`` (the whole set in two tensors): those are sliced by index, which is
what training did before tasks existed and keeps its numbers. Any other dataset is read
item by item and collated by torch's ``default_collate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import Dataset, Subset, TensorDataset, default_collate


def size_of(dataset: Dataset[Any]) -> int:
    """The number of samples (a torch Dataset need not define ``len``; ours must)."""
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError as exc:
        raise TypeError(
            f"{type(dataset).__name__} has no len(); a task's datasets must be sized"
        ) from exc


def batch_of(
    dataset: Dataset[Any], indices: torch.Tensor | Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples at ``indices`` as one ``(inputs, targets)`` batch."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return dataset.tensors[0][idx], dataset.tensors[1][idx]
    items = [dataset[int(i)] for i in indices]
    inputs, targets = default_collate(items)
    return cast("torch.Tensor", inputs), cast("torch.Tensor", targets)


def subset(
    dataset: Dataset[Any], indices: Sequence[int] | torch.Tensor | NDArray[np.integer[Any]]
) -> Dataset[Any]:
    """The samples at ``indices``, as a dataset (a sliced copy for tensor datasets)."""
    idx = torch.as_tensor(indices, dtype=torch.long)
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[idx] for t in dataset.tensors))
    return Subset(dataset, idx.tolist())


def chunks(n: int, batch_size: int) -> list[range]:
    """``range(n)`` in consecutive pieces of ``batch_size``."""
    return [range(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
