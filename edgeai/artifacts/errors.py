"""Errors of the artifact subsystem: one rejection type with a reason code, one store error."""

from __future__ import annotations

from typing import Literal, get_args

from edgeai.errors import EdgeAIError

Reason = Literal[
    "tampered",  # a file or metadata does not match what was signed
    "bad_signature",  # metadata not signed by the keys the trusted root names
    "replay",  # an older (or the same) version offered as new
    "expired",  # signed metadata past its expiry date (a freeze attack or a dead repository)
    "too_large",  # the signed release exceeds the device's size limit
    "timeout",  # the download ran past its deadline or stalled
    "unreachable",  # no server or mirror answered
    "known_bad",  # this release already failed on this device
]
REASONS: tuple[str, ...] = get_args(Reason)


class UpdateRejected(EdgeAIError, RuntimeError):  # noqa: N818  (the name the agent and docs use)
    """An update was refused; ``reason`` is one of :data:`REASONS`, the message says why."""

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason: Reason = reason
        super().__init__(f"update rejected ({reason}): {message}")


class ArtifactError(EdgeAIError, ValueError):
    """A bundle or repository is unusable (bad manifest, missing key, duplicate release)."""


class StoreError(EdgeAIError, RuntimeError):
    """The model store is in a state it cannot use (unreadable state file, unknown slot)."""
