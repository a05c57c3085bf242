"""Check a task before anything starts: a mismatch is one clear line, not a Ray traceback.

:func:`validate_task` builds the model, runs it once on ``example_input``, then runs the
model, the loss (with a backward pass) and the metrics once on a validation batch. With
DP-SGD on, the model must be one Opacus can make private.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from edgeai.errors import ConfigError
from edgeai.task.base import Task
from edgeai.task.batches import batch_of, size_of

_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: what the last axis of a channels-last image holds


def validate_task(task: Task, dp_enabled: bool) -> None:
    """Raise :class:`ConfigError` (one line: what is wrong and the fix) if ``task`` is unfit.

    Parameters
    ----------
    task
        The task an experiment or a device names.
    dp_enabled
        DP-SGD is on: every layer must be supported by Opacus (no BatchNorm).
    """
    label = f"task {task.name or type(task).__name__!r}"
    model = _call(label, "build_model()", task.build_model)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"{label}: build_model() returned a {type(model).__name__}, not a torch.nn.Module"
        )
    example = _call(label, "example_input()", task.example_input)
    if not isinstance(example, torch.Tensor) or example.ndim < 1 or len(example) < 1:
        raise ConfigError(
            f"{label}: example_input() must return a tensor with a batch axis (N, ...)"
        )
    _check_layout(label, model, example, "example_input()")
    model.eval()
    with torch.no_grad():
        out = _call(
            label, f"the model on example_input() {_describe(example)}", lambda: model(example)
        )
    if not isinstance(out, torch.Tensor) or out.ndim < 1 or len(out) != len(example):
        raise ConfigError(
            f"{label}: the model must return one tensor with a row per input; on "
            f"example_input() {_describe(example)} it returned {_describe(out)}"
        )
    train, val = _call(label, "datasets()", task.datasets)
    for which, ds in (("training", train), ("validation", val)):
        if _call(label, f"len() of the {which} set", lambda ds=ds: size_of(ds)) < 1:
            raise ConfigError(f"{label}: the {which} set is empty")
    x, y = _call(
        label,
        "reading the first validation samples",
        lambda: batch_of(val, range(min(8, size_of(val)))),
    )
    if tuple(x.shape[1:]) != tuple(example.shape[1:]) or x.dtype != example.dtype:
        _check_layout(label, model, x, "the validation set")
        raise ConfigError(
            f"{label}: validation inputs are {_describe(x)} per batch but example_input() is "
            f"{_describe(example)}; make both the raw input a device sends"
        )
    _check_labels(label, task, train, out)
    model.train()
    out = _call(label, f"the model on validation inputs {_describe(x)}", lambda: model(x))
    loss = _call(
        label, f"loss(output {_describe(out)}, target {_describe(y)})", lambda: task.loss(out, y)
    )
    if (
        not isinstance(loss, torch.Tensor)
        or loss.numel() != 1
        or not math.isfinite(float(loss.detach()))
    ):
        raise ConfigError(
            f"{label}: loss() must return one finite number (the batch mean); got {loss!r}"
        )
    _call(label, "loss().backward()", loss.backward)
    metrics = _call(label, "metrics()", lambda: task.metrics(out.detach(), y))
    if (
        not isinstance(metrics, dict)
        or not metrics
        or not all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in metrics.items())
    ):
        raise ConfigError(
            f"{label}: metrics() must return a non-empty dict of name -> float, the primary "
            f"metric first; got {metrics!r}"
        )
    if dp_enabled:
        check_private(label, model)


def check_private(label: str, model: nn.Module) -> None:
    """Raise :class:`ConfigError` naming the layers Opacus cannot make private."""
    from opacus.validators import ModuleValidator  # noqa: PLC0415  (train extra)

    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return
    # Opacus's messages do not name the layer: ask about each leaf module on its own.
    bad = [
        f"layer {name} ({type(module).__name__})"
        for name, module in model.named_modules()
        if name and not any(module.children()) and ModuleValidator.validate(module, strict=False)
    ] or [str(errors[0]).split(".")[0]]
    batchnorm = any("BatchNorm" in b for b in bad)
    fix = (
        "replace BatchNorm with GroupNorm (nn.GroupNorm(groups, channels)), or call "
        "opacus.validators.ModuleValidator.fix(model) in build_model()"
        if batchnorm
        else "call opacus.validators.ModuleValidator.fix(model) in build_model(), or use "
        "layers Opacus supports"
    )
    raise ConfigError(
        f"{label}: DP-SGD is on but Opacus cannot make these layers private: "
        f"{', '.join(bad[:4])}; {fix}, or set privacy.enabled = false"
    )


def _check_layout(label: str, model: nn.Module, x: torch.Tensor, where: str) -> None:
    # Channels-last images (N, H, W, C) given to a model whose first conv takes C channels.
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or x.ndim != 4:
        return
    channels = first.in_channels
    if x.shape[1] != channels and x.shape[3] == channels and channels in _CHANNELS:
        n, h, w, c = x.shape
        raise ConfigError(
            f"{label}: {where} is channels-last (N, H, W, C) = ({n}, {h}, {w}, {c}) but the "
            f"model's first Conv2d takes channels-first (N, C, H, W) with C = {channels}; "
            "store images as (N, C, H, W): X.transpose(0, 3, 1, 2) in numpy, "
            "x.permute(0, 3, 1, 2) in torch"
        )


def _check_labels(label: str, task: Task, train: Dataset[Any], out: torch.Tensor) -> None:
    # Class labels must index the model's outputs (N, K): 0 <= y < K.
    if out.ndim != 2:
        return
    classes = out.shape[1]
    labels = task.labels()
    if labels is not None:
        y = torch.as_tensor(labels)
    elif isinstance(train, TensorDataset) and len(train.tensors) == 2:
        y = train.tensors[1]
    else:
        return
    if y.numel() == 0 or y.is_floating_point() or y.ndim != 1:
        return
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        raise ConfigError(
            f"{label}: training labels run from {low} to {high} but the model outputs "
            f"{classes} classes (labels 0..{classes - 1}); give the model's last layer "
            f"{high + 1} outputs, or relabel the data to 0..{classes - 1}"
        )


def _call(label: str, what: str, fn: Any) -> Any:
    try:
        return fn()
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from exc
    except Exception as exc:  # a user's code may raise anything
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"{label}: {what} failed: {type(exc).__name__}: {first}") from exc


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    return type(value).__name__
