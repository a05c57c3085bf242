"""Where the server's training run goes: the SuperLink's Control API, or its twin in memory.

:class:`~edgeai.server.daemon.FederationServer` submits and follows its run through a
:class:`RunControl`; :class:`ControlRuns` is the real one, :class:`MemoryRuns` the twin
unit tests hand the server instead (like httpx's ``MockTransport`` beside the real one).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from edgeai.flower.runspec import RunSpec
from edgeai.server.superlink.control import ControlAPIError, ControlConnection
from edgeai.server.superlink.process import SuperLinkConfig
from edgeai.server.superlink.runs import RunStatus, status, submit, write_app_dir


class RunControl(Protocol):
    """What the server needs to start and follow its training run."""

    def submit(self, spec: RunSpec) -> int:
        """Start a run of ``spec``; return its id (``ControlAPIError`` if refused)."""
        ...

    def status(self, run_id: int) -> RunStatus:
        """The run's status now (``ControlAPIError`` if it cannot be read)."""
        ...


class ControlRuns:
    """:class:`RunControl` over the SuperLink's Control API (a fresh connection per call).

    Parameters
    ----------
    config
        The SuperLink to talk to.
    flwr_home
        Where the run's app directory is written (never inside the repository).
    """

    def __init__(self, config: SuperLinkConfig, flwr_home: Path) -> None:
        self.config = config
        self.flwr_home = flwr_home

    def submit(self, spec: RunSpec) -> int:
        """Write the app directory and ``spec``, start the run; return its id."""
        return submit(ControlConnection.of(self.config), spec, write_app_dir(self.flwr_home))

    def status(self, run_id: int) -> RunStatus:
        """The run's status as the SuperLink reports it."""
        return status(ControlConnection.of(self.config), run_id)


class MemoryRuns:
    """:class:`RunControl` in memory: records submitted specs; tests decide how runs end.

    A submitted run is ``running`` until :meth:`finish`; ``reachable = False`` makes every
    call fail as a restarting SuperLink would.
    """

    def __init__(self) -> None:
        self.submitted: list[RunSpec] = []
        self.reachable = True
        self._runs: dict[int, RunStatus] = {}

    def submit(self, spec: RunSpec) -> int:
        """Record ``spec``; the new run's id is the number of runs submitted so far."""
        self._check_reachable()
        self.submitted.append(spec)
        run_id = len(self.submitted)
        self._runs[run_id] = RunStatus(run_id, "running", "", "")
        return run_id

    def status(self, run_id: int) -> RunStatus:
        """The run's status (as set by :meth:`finish`)."""
        self._check_reachable()
        if run_id not in self._runs:
            raise ControlAPIError(f"no run {run_id}")
        return self._runs[run_id]

    def finish(self, run_id: int, sub_status: str, details: str = "") -> None:
        """End run ``run_id`` with ``sub_status`` (``completed``, ``failed``, ``stopped``)."""
        self._runs[run_id] = RunStatus(run_id, "finished", sub_status, details)

    def _check_reachable(self) -> None:
        if not self.reachable:
            raise ControlAPIError("the SuperLink cannot be reached (MemoryRuns.reachable)")


if TYPE_CHECKING:  # mypy checks that both implementations keep to the interface
    _real: type[RunControl] = ControlRuns
    _fake: type[RunControl] = MemoryRuns
