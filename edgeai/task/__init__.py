"""Tasks: what a user brings to edgeai (model, data, loss, metrics); see :class:`Task`.

``TaskConfig`` imports without torch (an agent's config names its task); the rest is
imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeai.plumbing.lazy import lazy_face
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
__getattr__ = lazy_face(__name__, _LAZY)
