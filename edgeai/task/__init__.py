"""Tasks: what a user brings to edgeai (model, data, loss, metrics); see :class:`Task`."""

from edgeai.task.base import Task

__all__ = ["Task"]
