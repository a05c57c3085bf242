"""One exception hierarchy for edgeai.

Every class also subclasses the builtin it refines, so callers that only know
``ValueError`` or ``LookupError`` still catch the right thing.  Foreign
exceptions are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class EdgeAIError(Exception):
    """Base class of every error edgeai raises on purpose."""


class ConfigError(EdgeAIError, ValueError):
    """A configuration file or value is invalid; the message names the fix."""


class DataError(EdgeAIError, ValueError):
    """A data set is missing, unreadable or not in the expected format."""


class UnknownNameError(EdgeAIError, LookupError):
    """A name (model, data set, profile, partitioner) is not registered."""

    def __init__(self, kind: str, name: str, known: list[str] | tuple[str, ...]) -> None:
        self.kind = kind
        self.name = name
        self.known = tuple(known)
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(known))}")

    def __str__(self) -> str:  # LookupError would repr() the message otherwise
        return str(self.args[0])


class PrivacyError(EdgeAIError, ValueError):
    """A differential-privacy setting is impossible or a budget is exhausted."""


class CompileError(EdgeAIError, ValueError):
    """A model cannot be compiled for a profile; the message says why and what to change."""


class SimulationError(EdgeAIError, RuntimeError):
    """The simulation engine failed while running an experiment."""
