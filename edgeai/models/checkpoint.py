"""edgeai checkpoints: a model's weights and provenance in one ``.npz`` (no pickle).

A checkpoint is what the federation server keeps every round and what ``edgeai compile``
accepts besides ONNX. Reading and writing need only numpy; turning one into ONNX needs
torch (the ``train`` extra), because the graph comes from the model registry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgeai.errors import DataError
from edgeai.plumbing.files import atomic_path

FORMAT = "edgeai-checkpoint"
VERSION = 1
_META = "__meta__"

# Provenance keys: the round loop writes them into every checkpoint (and the exported ONNX's
# metadata), the release proposal and ``edgeai compile`` read them. One name each, here.
ROUND_KEY = "edgeai.round"
ACCURACY_KEY = "edgeai.validation_accuracy"
LOSS_KEY = "edgeai.validation_loss"
# The task's primary metric (higher is better) and its value: what release gates compare.
PRIMARY_METRIC_KEY = "edgeai.primary_metric"
SCORE_KEY = "edgeai.validation_score"
# The task a model belongs to: its name, version and config (JSON: name or ref, options).
TASK_KEY = "edgeai.task"
TASK_VERSION_KEY = "edgeai.task_version"
TASK_CONFIG_KEY = "edgeai.task_config"
# A checkpoint's model name for a task's own model (the mnist task names a registered one).
TASK_MODEL_PREFIX = "task:"
EPSILON_KEY = "edgeai.epsilon"
DELTA_KEY = "edgeai.delta"
CLIENT_EPSILON_KEY = "edgeai.client_epsilon"
CLIENT_DELTA_KEY = "edgeai.client_delta"
EXPERIMENT_KEY = "edgeai.experiment"
# A deployed run's bookkeeping (a resume must match the spec's fingerprint).
SPEC_FINGERPRINT_KEY = "spec"
RUN_ID_KEY = "run_id"


@dataclass(frozen=True)
class Checkpoint:
    """Weights in the model's ``state_dict`` order, and where they came from."""

    model: str
    input_shape: tuple[int, ...]
    num_classes: int
    names: tuple[str, ...]
    arrays: tuple[NDArray[Any], ...]
    round: int | None = None
    provenance: Mapping[str, object] = field(default_factory=dict)

    def state(self) -> dict[str, NDArray[Any]]:
        """The weights by ``state_dict`` key."""
        return dict(zip(self.names, self.arrays, strict=True))

    def accuracy(self) -> float:
        """The validation accuracy recorded when the checkpoint was written.

        Raises
        ------
        DataError
            It records none (it was not written by edgeai's round loop or simulation).
        """
        value = self.provenance.get(ACCURACY_KEY)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(
                f"checkpoint of round {self.round} records no validation accuracy "
                f"({ACCURACY_KEY!r} is {value!r}); propose a checkpoint written by a "
                "training run, or an ONNX model with its accuracy"
            )
        return float(value)

    def score(self) -> tuple[str, float]:
        """The task's primary metric and its value (``accuracy`` for older checkpoints).

        Raises
        ------
        DataError
            It records neither.
        """
        name, value = self.provenance.get(PRIMARY_METRIC_KEY), self.provenance.get(SCORE_KEY)
        if isinstance(name, str) and isinstance(value, (int, float)):
            return name, float(value)
        return "accuracy", self.accuracy()


def save_checkpoint(ckpt: Checkpoint, path: Path) -> Path:
    """Write ``ckpt`` to ``path`` atomically (a crash leaves the old file or the new one)."""
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "model": ckpt.model,
        "input_shape": list(ckpt.input_shape),
        "num_classes": ckpt.num_classes,
        "names": list(ckpt.names),
        "round": ckpt.round,
        "provenance": dict(ckpt.provenance),
    }
    if len(ckpt.names) != len(ckpt.arrays):
        raise ValueError(f"{len(ckpt.names)} names for {len(ckpt.arrays)} arrays")
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez(
            fh,
            allow_pickle=False,
            **{_META: np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)},
            **{f"a{i:04d}": a for i, a in enumerate(ckpt.arrays)},
        )
    return path


def is_checkpoint(path: Path) -> bool:
    """True when ``path`` is an ``.npz`` carrying edgeai checkpoint metadata."""
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            return _META in data.files
    except (OSError, ValueError):
        return False


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    DataError
        The file is missing, not a checkpoint, or inconsistent.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            if _META not in data.files:
                raise DataError(f"{path}: not an edgeai checkpoint (no {_META} entry)")
            meta = json.loads(bytes(data[_META]).decode())
            arrays = tuple(data[f"a{i:04d}"] for i in range(len(meta["names"])))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable checkpoint ({exc})") from exc
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DataError(
            f"{path}: checkpoint format {meta.get('format')!r} v{meta.get('version')}; "
            f"this edgeai reads {FORMAT!r} v{VERSION}"
        )
    return Checkpoint(
        model=str(meta["model"]),
        input_shape=tuple(int(d) for d in meta["input_shape"]),
        num_classes=int(meta["num_classes"]),
        names=tuple(meta["names"]),
        arrays=arrays,
        round=meta.get("round"),
        provenance=meta.get("provenance") or {},
    )


def checkpoint_from_state(
    model: str,
    input_shape: Sequence[int],
    num_classes: int,
    state: Mapping[str, Any],
    *,
    round_: int | None = None,
    provenance: Mapping[str, object] | None = None,
) -> Checkpoint:
    """Build a checkpoint from a ``state_dict`` (torch tensors or numpy arrays)."""
    names = tuple(state)
    arrays = tuple(
        np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for v in state.values()
    )
    return Checkpoint(
        model, tuple(input_shape), num_classes, names, arrays, round_, dict(provenance or {})
    )


def export_checkpoint(ckpt: Checkpoint, path: Path) -> Path:
    """Rebuild the registered model, load the weights and export ONNX (needs torch).

    Raises
    ------
    DataError
        The weights do not fit the registered model of that name.
    """
    import torch  # noqa: PLC0415

    from edgeai.models.export import export_onnx  # noqa: PLC0415
    from edgeai.models.registry import build_model  # noqa: PLC0415

    model = build_model(ckpt.model, ckpt.input_shape, ckpt.num_classes)
    try:
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ckpt.state().items()})
    except RuntimeError as exc:  # torch's message lists missing/unexpected/mis-shaped keys
        raise DataError(f"checkpoint weights do not fit model {ckpt.model!r}: {exc}") from exc
    meta = {**ckpt.provenance}
    if ckpt.round is not None:
        meta.setdefault("edgeai.round", ckpt.round)
    return export_onnx(model, ckpt.input_shape, path, meta)
