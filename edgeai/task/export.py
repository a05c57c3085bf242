"""Export a checkpoint of a task's model (``task:<name>``) to ONNX, as ``edgeai simulate`` does.

The round loop's checkpoints record the task's config (``edgeai.task_config``); the
server's release pipeline and ``edgeai compile`` rebuild the model from it. The mnist
task's checkpoints name a registered model instead (``edgeai.models``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from edgeai.errors import DataError
from edgeai.models.checkpoint import ROUND_KEY, TASK_CONFIG_KEY, Checkpoint
from edgeai.models.export import export_onnx
from edgeai.task.config import TaskConfig
from edgeai.task.registry import load_task


def export_task_checkpoint(ckpt: Checkpoint, path: Path) -> Path:
    """Rebuild the task's model, load the checkpoint's weights and export it to ``path``.

    Raises
    ------
    DataError
        The checkpoint records no task config, or its weights do not fit the task's model.
    ConfigError
        The task cannot be loaded here (e.g. its module is not importable).
    """
    raw = ckpt.provenance.get(TASK_CONFIG_KEY)
    try:
        config = TaskConfig.model_validate_json(str(raw))
    except ValidationError as exc:
        raise DataError(
            f"checkpoint of {ckpt.model!r} records no usable task config ({TASK_CONFIG_KEY!r} "
            f"is {raw!r}); export it where the task is installed, or give its model.onnx"
        ) from exc
    task = load_task(config)
    model = task.build_model()
    try:
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ckpt.state().items()})
    except RuntimeError as exc:  # torch's message lists missing/unexpected/mis-shaped keys
        raise DataError(f"checkpoint weights do not fit task {task.name!r}: {exc}") from exc
    meta: dict[str, object] = {**ckpt.provenance, **task.onnx_metadata()}
    if ckpt.round is not None:
        meta.setdefault(ROUND_KEY, ckpt.round)
    return export_onnx(model, task.example_input(), path, meta)
