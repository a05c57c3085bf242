"""What the dashboard shows, read from the server's state directory and nothing else.

Every read opens files read-only: the collector's SQLite file (through the collector's own
reader, so ``/api/v1/fleet`` is ``edgeai fleet status --json``), the run's ``rounds.jsonl``
and ``status.json``, the release manager's ``releases.json`` and the server's
``status.json``. Nothing here writes; a missing file is an empty view, not an error.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeai.flower.runspec import RunPaths, read_status
from edgeai.server.collector import (
    FleetReader,
    NodeState,
    StoreError,
    open_database,
    open_readonly,
)
from edgeai.server.releases import ReleaseError, load_state

if TYPE_CHECKING:
    from edgeai.server.config import ServerConfig

RELEASES_FILE = "releases.json"  # the release manager's state file (manager.STATE_FILE)


def finite(value: Any) -> Any:
    """``value`` with NaN and ±inf replaced by None, recursively (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file; a torn last line (a writer mid-append) is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return []
    rows: list[dict[str, Any]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Seen:
    """When the collector last received a message from a node, by the server's clock."""

    received: float  # server clock
    sent: float  # the node's own timestamp on that message

    @property
    def skew_s(self) -> float:
        """How far the node's clock runs ahead of the server's (plus transit time)."""
        return self.sent - self.received


class ReceiveTimes:
    """Each node's last receive time, read incrementally from the collector's history.

    The collector's ``last_seen`` is the node's own timestamp; a node whose clock is off
    would look fresh or stale by its error. The history rows carry the server's
    ``received`` time too, and only new rows (``id`` above the last read) are read.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._seen: dict[str, Seen] = {}
        self._last_id = 0
        self._lock = threading.Lock()

    def read(self) -> dict[str, Seen]:
        """Node name → :class:`Seen` (nodes without history rows are absent)."""
        with self._lock:
            # No database yet, or one being replaced: what was read stands.
            with contextlib.suppress(sqlite3.Error, OSError):
                self._update()
            return dict(self._seen)

    def _update(self) -> None:
        if not self.db_path.is_file():
            return
        db = open_database(self.db_path, readonly=True)  # a DatabaseOpenError is an OSError
        try:
            (top,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM history").fetchone()
            if top < self._last_id:  # a new database: start over
                self._seen.clear()
                self._last_id = 0
            # SQLite's bare-column rule: with MAX(received), ts comes from that same row.
            rows = db.execute(
                "SELECT node, MAX(received), ts FROM history WHERE id > ? AND id <= ? "
                "GROUP BY node",
                (self._last_id, top),
            ).fetchall()
        finally:
            db.close()
        for node, received, sent in rows:
            old = self._seen.get(node)
            if old is None or received >= old.received:
                self._seen[node] = Seen(float(received), float(sent))
        self._last_id = top


class StateSource:
    """Read access to one server's state directory (see the module docstring).

    Parameters
    ----------
    state_dir
        The server's ``state_dir`` (its ``status.json`` and ``run/``).
    db_path
        The collector's database (``[collector] db_path``).
    releases_dir
        The release manager's ``state_dir`` (its ``releases.json``).
    offline_after_s
        The collector's ``offline_after_s``, as ``fleet status`` uses it.
    clock
        Wall-clock time ("online" and "last seen" are relative to it).
    """

    def __init__(
        self,
        state_dir: Path,
        db_path: Path,
        releases_dir: Path,
        offline_after_s: float = 180.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = state_dir
        self.db_path = db_path
        self.releases_path = releases_dir / RELEASES_FILE
        self.offline_after_s = offline_after_s
        self.clock = clock
        self._received = ReceiveTimes(db_path)
        self._reader: FleetReader | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, config: ServerConfig) -> StateSource:
        """The source for a server's (anchored) ``federation.toml``."""
        return cls(
            config.state_dir,
            config.collector.db_path,
            config.releases.state_dir,
            config.collector.offline_after_s,
        )

    # -- fleet --------------------------------------------------------------------------------

    def nodes(self) -> list[NodeState]:
        """Every node as ``edgeai fleet status`` sees it now; [] before the collector's file."""
        with self._lock:
            try:
                if self._reader is None:
                    self._reader = open_readonly(
                        self.db_path, offline_after_s=self.offline_after_s, clock=self.clock
                    )
                return self._reader.nodes()
            except (StoreError, sqlite3.Error):
                self._close_reader()
                return []

    def fleet(self) -> list[dict[str, Any]]:
        """The rows of ``edgeai fleet status --json``."""
        # No finite() pass: the collector stores no NaN or infinity (its parsers drop them).
        return [n.as_json() for n in self.nodes()]

    def received(self) -> dict[str, Seen]:
        """Each node's last receive time by the server's clock."""
        return self._received.read()

    def _close_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(sqlite3.Error):
                self._reader.close()
        self._reader = None

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._close_reader()

    # -- runs ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any] | None:
        """The server's last ``status.json`` (None before it wrote one)."""
        return _read_json(self.state_dir / "status.json")

    def _runs(self) -> list[tuple[str, RunPaths]]:
        # The server has one run directory; resubmissions resume into it under a new Flower
        # run id, so the id is the latest one the server reported ("run" before any).
        paths = RunPaths(self.state_dir / "run")
        if not paths.root.is_dir():
            return []
        run = (self.status() or {}).get("run") or {}
        run_id = run.get("id")
        return [(str(run_id) if isinstance(run_id, int) else "run", paths)]

    def runs(self) -> list[dict[str, Any]]:
        """One summary per run: id, state, rounds so far, the last accuracy and ε."""
        out = []
        server_run = (self.status() or {}).get("run") or {}
        for run_id, paths in self._runs():
            rounds = read_jsonl(paths.rounds)
            last = rounds[-1] if rounds else {}
            app = read_status(paths) or {}
            out.append(
                finite(
                    {
                        "id": run_id,
                        "state": app.get("state"),
                        "reason": app.get("reason"),
                        "flower_status": server_run.get("status"),
                        "flower_sub_status": server_run.get("sub_status"),
                        "rounds": len(rounds),
                        "last_round": last.get("round"),
                        "accuracy": last.get("accuracy"),
                        "epsilon": last.get("epsilon"),
                        "client_epsilon": last.get("client_epsilon"),
                        "updated": app.get("updated"),
                    }
                )
            )
        return out

    def rounds(self, run_id: str) -> list[dict[str, Any]] | None:
        """The run's ``rounds.jsonl`` as a list; None for an unknown run id."""
        for known, paths in self._runs():
            if known == run_id:
                return [finite(r) for r in read_jsonl(paths.rounds)]
        return None

    # -- releases -----------------------------------------------------------------------------

    def releases(self) -> dict[str, Any]:
        """Releases with their canary waves: what each profile serves, waves in flight."""
        try:
            state = load_state(self.releases_path)
        except ReleaseError as exc:
            return {"serving": {}, "in_flight": [], "releases": [], "error": str(exc)}
        serving: dict[str, int] = {}
        in_flight = []
        for release in state.releases:
            for profile, rollout in release.rollouts.items():
                if rollout.state == "promoted":
                    serving[profile] = release.release
                elif rollout.state == "canary":
                    in_flight.append({"release": release.release, "profile": profile})
        summary: dict[str, Any] = finite(
            {
                "serving": serving,
                "in_flight": in_flight,
                "releases": [r.model_dump(mode="json") for r in state.releases],
            }
        )
        return summary
