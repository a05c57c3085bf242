"""A durable, bounded SQLite outbox: telemetry is written here first, and deleted on PUBACK.

Durability.  The file is in WAL mode and every :meth:`Outbox.enqueue` is one ``BEGIN
IMMEDIATE`` transaction, so once ``enqueue`` returns the row survives the process being
SIGKILLed at any later moment.  ``synchronous`` defaults to ``NORMAL``: in WAL mode a commit
then reaches the OS (which keeps it across a process crash) without an fsync, which would
cost a disk flush per telemetry message and wear an SD card; the database can never be
corrupted, only the last commits before a *power loss* can roll back.  Devices that must
keep those choose ``FULL`` (an fsync of the WAL per commit).  See
https://www.sqlite.org/pragma.html#pragma_synchronous and https://www.sqlite.org/wal.html.

Bound.  At most ``max_messages`` rows are kept.  On overflow the oldest non-retained row is
dropped (a retained status/profile is state a late subscriber needs; a metric sample is not),
and the drop is counted in the file, so the count survives restarts and can be reported.

Sequence numbers are per boot: each process run has a new ``boot_id`` and numbers its rows
1, 2, 3, ...  The seq is stored in every row; the counter lives in memory (a boot id belongs
to one process run) and resumes, when an outbox is reopened with the same boot id, after the
larger of the highest queued seq and the ``boots`` table's ``last_seq`` (written on close).
Rows of earlier boots keep their own boot id and seq and are delivered, in insertion
(``id``) order, before anything newer.

Cost: an enqueue is one INSERT into a table with no secondary index (the overflow delete
walks the primary key from the oldest row, where non-retained rows are found at once), so
the commit is most of its price.  Ids are handed out from a counter in memory rather than by
``AUTOINCREMENT``, which would rewrite the ``sqlite_sequence`` page in every commit (a second
WAL frame: ~14 instead of ~9 us per enqueue here); within a process they only grow, which is
all the pump's ``after_id`` needs.

Schema.  The file is opened by :func:`edgeai.plumbing.sqlite.open_db` (application id,
``user_version`` migrations).  Outboxes from before that had no version: they are recognised
by their ``messages`` table and run every migration, which is why migration 1 only creates
what is missing and migration 2 rebuilds ``messages`` (dropping the ``AUTOINCREMENT`` of
older files).

Fresh rows.  The newest rows are also kept in a bounded deque, each appended only after its
commit, so :meth:`Outbox.pending` serves the pump from memory instead of re-reading what was
just written; anything older (earlier boots, a backlog beyond the deque) is read from the
file.  The invariant: every row in the file with ``id > _fresh_after`` is in the deque.

One process owns an outbox file at a time; within it the object is thread-safe.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from edgeai.errors import EdgeAIError
from edgeai.plumbing.sqlite import DatabaseOpenError, Synchronous, open_db
from edgeai.telemetry._outbox_schema import APPLICATION_ID, MIGRATIONS, legacy_version

log = logging.getLogger(__name__)

_INSERT = (
    "INSERT INTO messages (id, topic, payload, qos, retain, boot_id, seq) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SELECT = (
    "SELECT id, topic, payload, qos, retain, boot_id, seq FROM messages "
    "WHERE id > ? ORDER BY id LIMIT ?"
)


class OutboxError(EdgeAIError, OSError):
    """The outbox file cannot be opened, read or written."""


class Row(NamedTuple):
    """One queued message (a named tuple: the pump makes one per message)."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    boot_id: str
    seq: int


class Outbox:
    """The SQLite outbox of one node.

    Parameters
    ----------
    path
        The database file (created with its directory if missing).
    boot_id
        This process run's boot id; rows enqueued now carry it.
    max_messages
        The bound; the oldest non-retained rows are dropped beyond it.
    synchronous
        ``"NORMAL"`` (survives process crashes) or ``"FULL"`` (also power loss).
    timeout_s
        How long to wait for a lock held by another connection.
    memory_rows
        How many of the newest rows are also kept in memory for :meth:`pending`.
    """

    def __init__(
        self,
        path: Path,
        boot_id: str,
        *,
        max_messages: int = 100_000,
        synchronous: Synchronous = "NORMAL",
        timeout_s: float = 5.0,
        memory_rows: int = 4096,
    ) -> None:
        if max_messages < 1:
            raise OutboxError(f"max_messages must be ≥ 1; got {max_messages}")
        if synchronous not in ("NORMAL", "FULL"):
            raise OutboxError(f"synchronous must be 'NORMAL' or 'FULL'; got {synchronous!r}")
        self.path = Path(path)
        self.boot_id = boot_id
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._fresh: deque[Row] = deque()
        self._memory_rows = max(memory_rows, 0)
        try:
            # Autocommit mode: transactions are the explicit BEGIN IMMEDIATE ... COMMIT below.
            self._db = open_db(
                self.path,
                application_id=APPLICATION_ID,
                migrations=MIGRATIONS,
                name="telemetry outbox",
                synchronous=synchronous,
                timeout_s=timeout_s,
                legacy=legacy_version,
                # One process owns the file: exclusive locking skips the WAL's shared-memory
                # index (https://www.sqlite.org/wal.html#noshm), ~5 us of a ~20 us commit.
                exclusive=True,
                check_same_thread=False,
            )
        except DatabaseOpenError as exc:
            raise OutboxError(str(exc)) from exc
        try:
            with self._transaction():
                self._db.execute(
                    "INSERT OR IGNORE INTO boots (boot_id, last_seq) VALUES (?, 0)", (boot_id,)
                )
                (last_seq,) = self._db.execute(
                    "SELECT MAX(last_seq, IFNULL((SELECT MAX(seq) FROM messages WHERE boot_id = ?"
                    "), 0)) FROM boots WHERE boot_id = ?",
                    (boot_id, boot_id),
                ).fetchone()
                # Forget finished boots so the table stays as small as the backlog.
                self._db.execute(
                    "DELETE FROM boots WHERE boot_id != ? AND boot_id NOT IN "
                    "(SELECT DISTINCT boot_id FROM messages)",
                    (boot_id,),
                )
            self._seq = int(last_seq)
            count, last_id = self._db.execute(
                "SELECT COUNT(*), IFNULL(MAX(id), 0) FROM messages"
            ).fetchone()
            self._count, self._last_id = int(count), int(last_id)
            # Everything on disk now is read from the file; rows from here on also from memory.
            self._fresh_after = self._last_id
        except sqlite3.Error as exc:
            self._db.close()
            raise OutboxError(f"cannot open the telemetry outbox {self.path}: {exc}") from exc

    def _transaction(self) -> _Tx:
        return _Tx(self._db)

    def enqueue(
        self,
        topic: str,
        payload: bytes | Callable[[int], bytes],
        *,
        qos: int = 1,
        retain: bool = False,
    ) -> int:
        """Store one message durably and return its sequence number in this boot.

        ``payload`` may be a function of the sequence number (so the number can be written
        into the payload inside the same transaction).
        """
        if qos not in (0, 1, 2):
            raise OutboxError(f"qos must be 0, 1 or 2; got {qos!r}")
        try:
            with self._lock:
                seq = self._seq + 1
                row_id = self._last_id + 1
                body = bytes(payload(seq) if callable(payload) else payload)  # a copy if mutable
                row = Row(row_id, topic, body, qos, retain, self.boot_id, seq)
                if self._count < self.max_messages:
                    # In autocommit mode one statement is its own transaction: no BEGIN/COMMIT
                    # round trips on the hot path.
                    self._db.execute(_INSERT, row)
                    self._count += 1
                    self._remember(row)
                else:
                    with self._transaction():
                        self._db.execute(_INSERT, row)
                        self._count += 1
                        self._drop_oldest(self._count - self.max_messages)
                    # Dropped rows may be in memory: read everything up to here from the file.
                    self._fresh.clear()
                    self._fresh_after = row_id
                # Only once committed: a rolled-back enqueue uses no number.
                self._seq, self._last_id = seq, row_id
        except sqlite3.Error as exc:
            with self._lock:
                self._recount()
            raise OutboxError(f"cannot write to the telemetry outbox {self.path}: {exc}") from exc
        return seq

    def enqueue_many(
        self,
        messages: Iterable[tuple[str, bytes | Callable[[int], bytes], bool]],
        *,
        qos: int = 1,
    ) -> list[int]:
        """Store ``(topic, payload, retain)`` messages in one transaction; returns their seqs.

        For bursts: one commit for all of them instead of one each.  All or none are stored.
        """
        if qos not in (0, 1, 2):
            raise OutboxError(f"qos must be 0, 1 or 2; got {qos!r}")
        try:
            with self._lock:
                rows: list[Row] = []
                seq, row_id = self._seq, self._last_id
                for topic, payload, retain in messages:
                    seq, row_id = seq + 1, row_id + 1
                    body = payload(seq) if callable(payload) else payload
                    rows.append(Row(row_id, topic, bytes(body), qos, retain, self.boot_id, seq))
                if not rows:
                    return []
                with self._transaction():
                    self._db.executemany(_INSERT, rows)
                    self._count += len(rows)
                    over = self._count - self.max_messages
                    if over > 0:
                        self._drop_oldest(over)
                if over > 0:
                    self._fresh.clear()
                    self._fresh_after = row_id
                else:
                    for row in rows:
                        self._remember(row)
                self._seq, self._last_id = seq, row_id
        except sqlite3.Error as exc:
            with self._lock:
                self._recount()
            raise OutboxError(f"cannot write to the telemetry outbox {self.path}: {exc}") from exc
        return [row.seq for row in rows]

    def _remember(self, row: Row) -> None:
        fresh = self._fresh
        fresh.append(row)
        if len(fresh) > self._memory_rows:  # e.g. during an outage: keep the newest only
            self._fresh_after = fresh.popleft().id

    def _drop_oldest(self, n: int) -> None:
        for retained in (0, 1):  # retained rows only if nothing else is left to drop
            if n <= 0:
                return
            cur = self._db.execute(
                "DELETE FROM messages WHERE id IN "
                "(SELECT id FROM messages WHERE retain = ? ORDER BY id LIMIT ?)",
                (retained, n),
            )
            n -= cur.rowcount
            self._count -= cur.rowcount
            self._db.execute(
                "UPDATE meta SET value = value + ? WHERE key = 'dropped'", (cur.rowcount,)
            )

    def _recount(self) -> None:
        (self._count,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()

    def pending(self, limit: int, after_id: int = 0) -> list[Row]:
        """Up to ``limit`` queued rows with ``id > after_id``, oldest first.

        Rows enqueued by this process come from memory when the caller reads onwards
        (``after_id`` not behind what it read before), so the pump costs no query per row.
        """
        with self._lock:
            fresh = self._fresh
            if after_id >= self._fresh_after:
                while fresh and fresh[0].id <= after_id:
                    fresh.popleft()
                # Rows handed out leave memory: the reader has them, and a reader that asks
                # again from further back reads the file, where acked rows are gone.
                rows = [fresh.popleft() for _ in range(min(limit, len(fresh)))]
                self._fresh_after = rows[-1].id if rows else after_id
                return rows
            try:
                rows = self._db.execute(_SELECT, (after_id, limit)).fetchall()
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot read the telemetry outbox {self.path}: {exc}") from exc
        return [Row(i, t, bytes(p), q, bool(r), b, s) for i, t, p, q, r, b, s in rows]

    def ack(self, ids: Iterable[int]) -> int:
        """Delete delivered rows in one transaction; returns how many were still there."""
        runs = _runs(sorted(set(ids)))
        if not runs:
            return 0
        try:
            with self._lock, self._transaction():
                before = self._db.total_changes
                # PUBACKs come mostly in order: a run of consecutive ids is one range delete.
                self._db.executemany("DELETE FROM messages WHERE id BETWEEN ? AND ?", runs)
                deleted = self._db.total_changes - before
                self._count -= deleted
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot update the telemetry outbox {self.path}: {exc}") from exc
        return deleted

    def __len__(self) -> int:
        return int(self._count)

    @property
    def dropped(self) -> int:
        """How many messages overflow has dropped from this file, ever."""
        try:
            with self._lock:
                (value,) = self._db.execute(
                    "SELECT value FROM meta WHERE key = 'dropped'"
                ).fetchone()
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot read the telemetry outbox {self.path}: {exc}") from exc
        return int(value)

    def close(self) -> None:
        """Close the database (rows stay on disk for the next run)."""
        with self._lock:
            try:
                self._db.execute(
                    "UPDATE boots SET last_seq = ? WHERE boot_id = ?", (self._seq, self.boot_id)
                )
            except sqlite3.Error as exc:
                log.warning("cannot record the last seq in %s: %s", self.path, exc)
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """Sorted unique ids as (first, last) runs of consecutive integers."""
    runs: list[tuple[int, int]] = []
    for i in ids:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


class _Tx:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
