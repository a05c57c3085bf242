"""``[task]``: which task an experiment (or a device) runs.

Torch-free, so an agent's config can name its task without importing what trains it.
"""

from __future__ import annotations

import re

from pydantic import Field, JsonValue, model_validator

from edgeai.configfile import Frozen
from edgeai.errors import ConfigError

_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class TaskConfig(Frozen):
    """An experiment's ``[task]`` table: a built-in ``name`` or a ``ref``, and ``options``.

    ``options`` (``[task.options]``) are passed as keyword arguments to the task's class
    or factory; they must be JSON values, since the training plan carries them to devices.
    """

    name: str | None = Field(default=None, min_length=1)
    ref: str | None = None
    options: dict[str, JsonValue] = Field(default_factory=dict)
    # The folder a ref's module is imported from: relative to the experiment file, which
    # load_experiment resolves to an absolute path (default: the experiment's folder).
    path: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> TaskConfig:
        if (self.name is None) == (self.ref is None):
            raise ConfigError(
                'set exactly one of task.name (a built-in, e.g. "mnist") or task.ref '
                '("module.path:attribute")'
            )
        if self.ref is not None and not _REF.match(self.ref):
            raise ConfigError(
                f'task.ref = {self.ref!r}: write "module.path:attribute", e.g. "task:MyTask"'
            )
        return self

    @property
    def label(self) -> str:
        """The name or the reference, for messages."""
        return self.name if self.name is not None else str(self.ref)
