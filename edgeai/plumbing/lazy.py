"""A package face whose names are imported on first use (PEP 562 ``__getattr__``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_face(package: str, face: Mapping[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package``: ``face`` maps each public name to its module.

    A package whose ``__init__`` imports its heavy modules eagerly makes every importer
    pay for them (``edgeai --help`` for Flower and TUF, an agent's config for torch).
    """

    def __getattr__(name: str) -> Any:  # noqa: N807  (it is the module's __getattr__)
        if name in face:
            return getattr(importlib.import_module(face[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
