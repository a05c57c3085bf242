"""Tasks: what a user brings to edgeai (model, data, loss, metrics); see :class:`Task`."""

from edgeai.task.base import Task
from edgeai.task.registry import TaskConfig, builtin_names, load_task, register

__all__ = ["Task", "TaskConfig", "builtin_names", "load_task", "register"]
