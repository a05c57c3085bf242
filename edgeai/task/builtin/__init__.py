"""Built-in tasks: ``shakespeare`` (next character, by speaking role) and ``regression``."""

from edgeai.task.builtin.regression import RegressionTask
from edgeai.task.builtin.shakespeare import ShakespeareTask

__all__ = ["RegressionTask", "ShakespeareTask"]
