"""Tasks: what a user brings to edgeai (model, data, loss, metrics); see :class:`Task`.

``TaskConfig`` imports without torch (an agent's config names its task); the rest is
imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeai.task.config import TaskConfig

if TYPE_CHECKING:
    from edgeai.task.base import Task
    from edgeai.task.registry import builtin_names, load_task, register

__all__ = ["Task", "TaskConfig", "builtin_names", "load_task", "register"]
_LAZY = {
    "Task": "edgeai.task.base",
    "builtin_names": "edgeai.task.registry",
    "load_task": "edgeai.task.registry",
    "register": "edgeai.task.registry",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgeai.task' has no attribute {name!r}")
