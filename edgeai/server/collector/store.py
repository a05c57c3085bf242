"""The collector's SQLite file: latest record per node, bounded history, release announcements.

One connection, shared by paho's network thread (writes) and readers (the release manager,
a Prometheus scrape), serialised by a lock.  WAL lets ``edgeai fleet status`` read the file
from another process while the collector writes it.

The ``UNIQUE (node, boot_id, seq)`` index on the history is also the persistent half of
deduplication: a message the broker re-delivers after a collector restart (QoS 1 is "at
least once") is refused by the index, so it is neither stored nor folded in twice.  The
guarantee lasts as long as the history row does (``history_days`` / ``max_history_rows``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeai.errors import EdgeAIError
from edgeai.plumbing.sqlite import DatabaseOpenError, open_db
from edgeai.server.collector import state as fsm
from edgeai.server.collector.fleet import FleetEvent
from edgeai.telemetry.topics import Envelope, Topic

APPLICATION_ID = int.from_bytes(b"eaFC", "big")  # PRAGMA application_id: fleet collector
# Files from before PRAGMA application_id/user_version: a meta table with these two rows.
_LEGACY_APPLICATION = "edgeai-collector"
# Append only: migrations[i] takes a file from user_version i to i + 1.
MIGRATIONS = (
    """
CREATE TABLE IF NOT EXISTS nodes (node TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    node TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    name TEXT,
    body TEXT NOT NULL,
    received REAL NOT NULL,
    UNIQUE (node, boot_id, seq)
);
CREATE INDEX IF NOT EXISTS history_by_kind_ts ON history (kind, ts);
CREATE INDEX IF NOT EXISTS history_by_received ON history (received);
CREATE TABLE IF NOT EXISTS releases (
    profile TEXT PRIMARY KEY, body TEXT NOT NULL, received REAL NOT NULL
);
""",
)
SCHEMA = len(MIGRATIONS)


def _legacy_version(db: sqlite3.Connection) -> int | None:
    """A collector file from before ``user_version``: ``meta`` names the application and schema.

    Those files have the tables of migration 1; the ``meta`` table stays behind, unused.
    """
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.OperationalError:  # no meta table: not a collector file
        return None
    if meta.get("application") != _LEGACY_APPLICATION:
        return None
    try:
        return int(meta["schema"])
    except (KeyError, ValueError):
        return None


def open_database(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open (creating or migrating, unless ``readonly``) a collector database.

    The connection may be shared by threads under the caller's lock, and uses Python's
    implicit transactions (``with db:`` is one transaction).

    Raises
    ------
    edgeai.plumbing.sqlite.DatabaseOpenError
        Missing (read-only), unreadable, another application's, or newer than this code.
    """
    return open_db(
        path,
        application_id=APPLICATION_ID,
        migrations=MIGRATIONS,
        name="collector database",
        synchronous="NORMAL",  # WAL: durable across process crashes
        readonly=readonly,
        timeout_s=5.0,
        legacy=_legacy_version,
        check_same_thread=False,
        isolation_level="DEFERRED",
    )


class StoreError(EdgeAIError, RuntimeError):
    """The collector's database is missing, unreadable or not a collector database."""


class Store:
    """The SQLite file behind the collector (or, ``readonly``, behind ``fleet status``).

    Parameters
    ----------
    path
        The database file.
    readonly
        Open an existing file without ever writing it.
    shared
        Other collectors write the same file (a shared subscription group): every message
        folds into the record as stored in the file, read inside its write transaction,
        and readers see the file, not this process's cache.
    """

    def __init__(self, path: Path, *, readonly: bool = False, shared: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.shared = shared
        self._lock = threading.Lock()
        if readonly and not self.path.is_file():
            raise StoreError(
                f"{self.path}: no collector database here; is the server's collector "
                "running, and is this its [collector] db_path?"
            )
        try:
            self._db = open_database(self.path, readonly=readonly)
        except DatabaseOpenError as exc:
            raise StoreError(str(exc)) from exc
        self._records: dict[str, fsm.NodeRecord] | None = None if readonly else self._load()

    def _load(self) -> dict[str, fsm.NodeRecord]:
        try:
            rows = self._db.execute("SELECT node, record FROM nodes").fetchall()
            return {node: fsm.loads(node, text) for node, text in rows}
        except (sqlite3.Error, ValueError) as exc:
            raise StoreError(f"{self.path}: unreadable node table: {exc}") from exc

    # -- writing (the collector) ------------------------------------------------------------

    def ingest(self, topic: Topic, env: Envelope, received: float) -> bool:
        """Store one node message and fold it into the node's record; False if a duplicate."""
        body = json.dumps(env.body, separators=(",", ":"), allow_nan=False)
        with self._lock, self._db:  # one transaction: the history row and the record together
            cur = self._db.execute(
                "INSERT OR IGNORE INTO history (node, boot_id, seq, ts, kind, name, body, "
                "received) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (env.node, env.boot_id, env.seq, env.ts, topic.kind, topic.name, body, received),
            )
            if cur.rowcount == 0:
                return False
            records = self._writable()
            old = (self._stored(env.node) if self.shared else records.get(env.node)) or (
                fsm.NodeRecord(env.node)
            )
            new = fsm.apply(old, topic, env)
            self._db.execute(
                "INSERT OR REPLACE INTO nodes (node, record) VALUES (?, ?)",
                (env.node, fsm.dumps(new)),
            )
        records[env.node] = new  # only once committed
        return True

    def put_release(self, profile: str, body: dict[str, Any], received: float) -> None:
        """Remember the latest release announcement of one profile."""
        text = json.dumps(body, separators=(",", ":"), allow_nan=False)
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO releases (profile, body, received) VALUES (?, ?, ?)",
                (profile, text, received),
            )

    def prune(self, older_than: float, max_rows: int) -> int:
        """Delete history received before ``older_than`` and beyond the newest ``max_rows``."""
        with self._lock, self._db:
            n = self._db.execute("DELETE FROM history WHERE received < ?", (older_than,)).rowcount
            n += self._db.execute(
                "DELETE FROM history WHERE id <= (SELECT MAX(id) FROM history) - ?", (max_rows,)
            ).rowcount
        return n

    def _stored(self, node: str) -> fsm.NodeRecord | None:
        row = self._db.execute("SELECT record FROM nodes WHERE node = ?", (node,)).fetchone()
        return None if row is None else fsm.loads(node, row[0])

    def _writable(self) -> dict[str, fsm.NodeRecord]:
        if self._records is None:
            raise StoreError(f"{self.path}: opened read-only")
        return self._records

    # -- reading ------------------------------------------------------------------------------

    def records(self) -> list[fsm.NodeRecord]:
        """Every node's record, sorted by name."""
        if self._records is not None and not self.shared:
            with self._lock:
                return [self._records[n] for n in sorted(self._records)]
        with self._lock:
            records = self._load()
        return [records[n] for n in sorted(records)]

    def events(self, since: float = 0.0, kinds: Sequence[str] = ()) -> list[FleetEvent]:
        """Events with ``ts >= since`` (of ``kinds``, or all), oldest first."""
        sql = "SELECT node, name, ts, body FROM history WHERE kind = 'events' AND ts >= ?"
        args: list[Any] = [since]
        if kinds:
            # Only "?" placeholders are formatted in; the names travel as parameters.
            sql += f" AND name IN ({', '.join('?' * len(kinds))})"
            args += list(kinds)
        try:
            with self._lock:
                rows = self._db.execute(sql + " ORDER BY ts, id", args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read events: {exc}") from exc
        return [FleetEvent(node, name, ts, json.loads(body)) for node, name, ts, body in rows]

    def releases(self) -> dict[str, dict[str, Any]]:
        """The latest release announcement per profile."""
        with self._lock:
            rows = self._db.execute("SELECT profile, body FROM releases").fetchall()
        return {profile: json.loads(body) for profile, body in rows}

    def history_rows(self) -> int:
        """How many history rows the file holds."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM history").fetchone()[0])

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()
