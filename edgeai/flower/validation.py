"""Pure checks of a client's reply before it may touch the global model."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

# name -> (shape, dtype) of every array of the global model
Reference = Mapping[str, tuple[tuple[int, ...], np.dtype[np.generic]]]


def reference_of(
    arrays: Mapping[str, NDArray[np.generic]],
) -> dict[str, tuple[tuple[int, ...], np.dtype[np.generic]]]:
    """The shapes and dtypes a valid update must have."""
    return {name: (tuple(a.shape), a.dtype) for name, a in arrays.items()}


def check_update(
    arrays: Mapping[str, NDArray[np.generic]],
    num_examples: object,
    reference: Reference,
    max_examples: int,
) -> str | None:
    """Return why an update must be rejected, or ``None`` when it is acceptable.

    An update is acceptable when it has exactly the model's arrays, each with
    the model's shape and dtype and only finite values, and ``num_examples`` is
    an integer in ``[1, max_examples]`` (FedAvg weights by it, so an absurd
    count would let one client outvote the rest).
    """
    if set(arrays) != set(reference):
        missing = sorted(set(reference) - set(arrays))
        extra = sorted(set(arrays) - set(reference))
        return f"arrays do not match the model (missing {missing[:3]}, unexpected {extra[:3]})"
    for name, (shape, dtype) in reference.items():
        arr = arrays[name]
        if tuple(arr.shape) != shape:
            return f"{name}: shape {tuple(arr.shape)}, expected {shape}"
        if arr.dtype != dtype:
            return f"{name}: dtype {arr.dtype}, expected {dtype}"
        if np.issubdtype(arr.dtype, np.inexact) and not np.isfinite(arr).all():
            return f"{name}: contains NaN or Inf"
    if isinstance(num_examples, bool) or not isinstance(num_examples, int | np.integer):
        return f"num-examples must be an integer, got {type(num_examples).__name__}"
    if not 1 <= int(num_examples) <= max_examples:
        return f"num-examples = {num_examples} outside [1, {max_examples}]"
    return None
