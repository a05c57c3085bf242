"""Load data sets as arrays a model can take (images: float32 in [0, 1], (N, C, H, W)).

The contract (DESIGN.md §5): a data file is an ``.npz`` with ``X`` (samples as
stored, e.g. uint8 images (N, H, W) or (N, C, H, W), float features (N, F) or int
token ids) and ``y`` (int labels; float targets where a regression task reads it).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgeai.errors import DataError, UnknownNameError

_BUILTIN_DIR = Path(__file__).parent / "builtin"
BUILTIN_DATASETS = ("mnist", "digits")


@dataclass(frozen=True)
class ArrayDataset:
    """Samples ready for a model: ``x`` float32 (N, C, H, W) in [0, 1], ``y`` int64 (N,)."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]
    num_classes: int

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DataError(f"{len(self.x)} samples but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(1, 28, 28)``."""
        return tuple(int(d) for d in self.x.shape[1:])

    def subset(self, indices: NDArray[np.int64]) -> ArrayDataset:
        """Return the samples at ``indices`` (a copy)."""
        return ArrayDataset(self.x[indices], self.y[indices], self.num_classes)


@dataclass(frozen=True)
class Split:
    """A deterministic train / validation split of one data set."""

    name: str
    train: ArrayDataset
    validation: ArrayDataset


def to_model_input(x: NDArray[np.generic]) -> NDArray[Any]:
    """Convert stored samples to model input.

    uint8 images become float32 in [0, 1] (divided by 255); float images (N, H, W) or
    (N, C, H, W) must already lie in [0, 1]; (N, H, W) gains a channel axis. Float
    features (N, F) are kept as float32 (finite, any scale: a model standardizes its own
    input). Other integers are token ids, kept as int64 (>= 0).
    """
    if x.ndim not in (2, 3, 4):
        raise DataError(f"samples must be (N, F), (N, H, W) or (N, C, H, W); got shape {x.shape}")
    if x.dtype == np.uint8:
        out: NDArray[Any] = x.astype(np.float32) / np.float32(255.0)
    elif np.issubdtype(x.dtype, np.floating):
        out = x.astype(np.float32, copy=False)
        if out.size and not np.isfinite(out).all():
            raise DataError("float samples must be finite")
        if out.ndim > 2 and out.size and (float(out.min()) < 0.0 or float(out.max()) > 1.0):
            raise DataError("float images must be scaled to [0, 1] (or stored as uint8)")
    elif np.issubdtype(x.dtype, np.integer):
        if x.size and int(x.min()) < 0:
            raise DataError("integer samples are token ids and must be >= 0")
        return np.ascontiguousarray(x.astype(np.int64))
    else:
        raise DataError(f"samples must be uint8, float or integer token ids; got {x.dtype}")
    if out.ndim == 3:
        out = out[:, None, :, :]
    return np.ascontiguousarray(out)


def load_npz(path: Path, *, float_targets: bool = False) -> tuple[NDArray[Any], NDArray[Any]]:
    """Read a user's ``.npz`` data file (``X``, ``y``) and convert it to model input.

    ``y`` holds integer class labels (int64, >= 0); with ``float_targets`` it may instead
    hold float regression targets (float32, finite).
    """
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz file (numpy.savez writes one: X=..., y=...)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"X", "y"} - set(data.files)
            if missing:
                raise DataError(
                    f"{path}: missing array(s) {sorted(missing)}; a data file holds 'X' (samples) "
                    f"and 'y' (int labels), found {sorted(data.files)}"
                )
            x_raw, y_raw = data["X"], data["y"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz file: {exc}") from exc
    if y_raw.ndim != 1 or len(y_raw) != len(x_raw):
        raise DataError(f"{path}: 'y' must be 1-D with one label per sample in 'X'")
    try:
        x = to_model_input(x_raw)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc
    if float_targets and np.issubdtype(y_raw.dtype, np.floating):
        if not np.isfinite(y_raw).all():
            raise DataError(f"{path}: 'y' (regression targets) must be finite")
        return x, y_raw.astype(np.float32)
    if not np.issubdtype(y_raw.dtype, np.integer):
        kinds = "integer labels or float targets" if float_targets else "integer labels"
        raise DataError(f"{path}: 'y' must hold {kinds}, got {y_raw.dtype}")
    if len(y_raw) and int(y_raw.min()) < 0:
        raise DataError(f"{path}: labels must be >= 0")
    return x, y_raw.astype(np.int64)


@cache
def _load_arrays(name: str) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    if name == "mnist":
        return load_npz(_BUILTIN_DIR / "mnist_train_10k.npz")
    if name == "digits":
        from sklearn.datasets import load_digits  # noqa: PLC0415  (train extra only)

        bunch = load_digits()
        x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
        return x, bunch.target.astype(np.int64)
    path = Path(name)
    if path.suffix == ".npz" or path.exists():
        return load_npz(path)
    raise UnknownNameError("data set", name, [*BUILTIN_DATASETS, "<path to .npz>"])


@lru_cache(maxsize=4)
def load_dataset(
    name: str, validation_fraction: float = 0.2, seed: int = 0, holdout: int = 0
) -> Split:
    """Load a built-in data set (``mnist``, ``digits``) or an ``.npz`` path, split it.

    The split is a seeded permutation, so every process (server, each virtual
    client) computes the same one without exchanging indices.  Memoised per
    process (the CLI, the runner and the ServerApp all ask): treat it as read-only.
    ``holdout`` > 0 first sets aside the last ``holdout`` samples of the file (see
    :func:`load_holdout`): they are in neither train nor validation.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise DataError(f"validation_fraction must be in (0, 1); got {validation_fraction}")
    x, y = _load_arrays(name)
    if not 0 <= holdout < len(y):
        raise DataError(f"{name}: holdout = {holdout} must be in [0, {len(y)})")
    x, y = x[: len(y) - holdout], y[: len(y) - holdout]
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = max(1, round(len(y) * validation_fraction))
    if len(y) - n_val < 1:
        raise DataError(f"{name}: {len(y)} samples are too few to split")
    num_classes = int(y.max()) + 1
    full = ArrayDataset(x, y, num_classes)
    return Split(name, full.subset(order[n_val:]), full.subset(order[:n_val]))


def load_holdout(name: str, holdout: int) -> ArrayDataset:
    """The last ``holdout`` samples of a data set, in file order: a test set.

    :func:`load_dataset` with the same ``holdout`` never puts them in train or validation.
    """
    x, y = _load_arrays(name)
    if not 0 < holdout < len(y):
        raise DataError(f"{name}: holdout = {holdout} must be in (0, {len(y)})")
    num_classes = int(y.max()) + 1
    return ArrayDataset(x[len(y) - holdout :], y[len(y) - holdout :], num_classes)
