"""Releases: gate a checkpoint, compile it per profile, sign it, roll it out in waves.

:class:`ReleaseManager` does the I/O; the decisions (canaries, verdicts, state changes)
are pure functions in :mod:`~edgeai.server.releases.state`.
"""

from edgeai.server.releases.manager import CompileSettings, ReleaseConfig, ReleaseManager
from edgeai.server.releases.state import (
    FAILURE_KINDS,
    ManagerState,
    Release,
    ReleaseError,
    Rollout,
    canary_count,
    choose_canaries,
    judge,
    load_state,
    save_state,
)

__all__ = [
    "FAILURE_KINDS",
    "CompileSettings",
    "ManagerState",
    "Release",
    "ReleaseConfig",
    "ReleaseError",
    "ReleaseManager",
    "Rollout",
    "canary_count",
    "choose_canaries",
    "judge",
    "load_state",
    "save_state",
]
