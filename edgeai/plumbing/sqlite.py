"""The one SQLite opener: WAL, ``synchronous``, an application id and forward-only migrations.

Every edgeai database (the privacy ledger, the telemetry outbox, the collector's fleet
file) is opened by :func:`open_db`, which owns three conventions:

- **Which application.** ``PRAGMA application_id`` (a 32-bit number in the file header,
  https://www.sqlite.org/pragma.html#pragma_application_id) names the program the file
  belongs to; a file of another program is refused with its path, before anything is
  written to it.
- **Which schema.** ``PRAGMA user_version`` is the schema version: the number of
  ``migrations`` applied.  A file at version *n* gets ``migrations[n:]``, each in its own
  ``BEGIN IMMEDIATE`` transaction together with the new version number, so a crash leaves
  the file at one version or the next, never in between, and two processes opening a new
  file at once apply each migration once.  A file newer than the code is refused.
- **Files from before these conventions** (no application id, version 0, but tables) are
  passed to the caller's ``legacy`` function, which recognises its own old format (a
  ``meta`` table, an application string) and says at which version it is; anything it
  does not recognise is refused as a file of another application.

WAL lets readers in other processes read while one process writes; ``synchronous`` is
the caller's durability choice (https://www.sqlite.org/pragma.html#pragma_synchronous):
``FULL`` survives power loss, ``NORMAL`` in WAL mode survives process crashes (the last
commits before a power loss may roll back; the file is never corrupted).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from edgeai.errors import EdgeAIError

__all__ = [
    "DamagedDatabaseError",
    "DatabaseOpenError",
    "Legacy",
    "SchemaTooNewError",
    "Synchronous",
    "WrongApplicationError",
    "open_db",
]

Synchronous = Literal["NORMAL", "FULL"]
# Recognises a file written before application_id/user_version: the schema version it is
# at (0: apply every migration), or None when it is not this application's file.
Legacy = Callable[[sqlite3.Connection], int | None]


class DatabaseOpenError(EdgeAIError, OSError):
    """A database cannot be opened: unreadable, damaged, or not what the caller expects."""


class WrongApplicationError(DatabaseOpenError):
    """The file belongs to another application (its ``application_id`` differs)."""


class DamagedDatabaseError(DatabaseOpenError):
    """The file is not an SQLite database, or SQLite finds it damaged."""


class SchemaTooNewError(DatabaseOpenError):
    """The file's schema is newer than this code knows (written by a newer edgeai)."""


def open_db(
    path: Path | str,
    *,
    application_id: int,
    migrations: Sequence[str],
    name: str = "database",
    synchronous: Synchronous = "FULL",
    readonly: bool = False,
    timeout_s: float = 5.0,
    legacy: Legacy | None = None,
    exclusive: bool = False,
    check_same_thread: bool = True,
    isolation_level: Literal["DEFERRED", "IMMEDIATE", "EXCLUSIVE"] | None = None,
) -> sqlite3.Connection:
    """Open (creating or migrating) an edgeai SQLite database.

    Parameters
    ----------
    path
        The file; its directory is created when writable.  ``":memory:"`` for tests.
    application_id
        This application's id (a positive 32-bit number, e.g. four ASCII letters).
    migrations
        SQL scripts; ``migrations[i]`` takes the schema from version ``i`` to ``i + 1``.
        Only ever append: a released migration is never edited.
    name
        What the file is, for error messages ("privacy ledger").
    synchronous
        ``"FULL"`` (the default: survives power loss) or ``"NORMAL"`` (survives process
        crashes, no fsync per commit).
    readonly
        Open an existing file without ever writing it (``mode=ro``); it must already be
        at the latest version.
    timeout_s
        How long a statement waits for another connection's lock.
    legacy
        Recognises this application's files from before the conventions above.
    exclusive
        ``PRAGMA locking_mode=EXCLUSIVE``: one process owns the file, and WAL then needs
        no shared-memory index.
    check_same_thread
        Passed to :func:`sqlite3.connect` (``False`` for a connection shared by threads
        under the caller's lock).
    isolation_level
        The returned connection's ``isolation_level``: ``None`` (autocommit; the caller
        writes ``BEGIN``/``COMMIT``) or one for Python's implicit transactions.

    Raises
    ------
    WrongApplicationError
        The file is another application's (or, read-only, holds no schema at all).
    SchemaTooNewError
        The file's version is higher than ``len(migrations)``.
    DatabaseOpenError
        It cannot be opened, read or migrated (the message names the file and the cause).
    """
    if not 0 < application_id < 2**31:
        raise ValueError(f"application_id must be a positive 32-bit number; got {application_id}")
    where = str(path)
    try:
        if readonly:
            uri = f"{Path(path).resolve().as_uri()}?mode=ro"
            db = sqlite3.connect(
                uri, uri=True, timeout=timeout_s, check_same_thread=check_same_thread
            )
        else:
            if where != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                path, timeout=timeout_s, isolation_level=None, check_same_thread=check_same_thread
            )
    except (sqlite3.Error, OSError) as exc:
        raise DatabaseOpenError(f"{name} {where}: cannot open it: {exc}") from exc
    try:
        db.isolation_level = None  # migrations manage their own transactions
        if not readonly:
            if exclusive:
                db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={_checked(synchronous)}")
        _migrate(
            db,
            where=where,
            name=name,
            application_id=application_id,
            migrations=migrations,
            readonly=readonly,
            legacy=legacy,
        )
        db.isolation_level = isolation_level
    except BaseException as exc:
        db.close()
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
            raise DamagedDatabaseError(
                f"{name} {where}: not a {name}, or a damaged one: {exc}"
            ) from exc
        if isinstance(exc, sqlite3.Error):
            raise DatabaseOpenError(f"{name} {where}: cannot open it: {exc}") from exc
        raise
    return db


def _checked(synchronous: str) -> str:
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous must be 'NORMAL' or 'FULL'; got {synchronous!r}")
    return synchronous


def _header(db: sqlite3.Connection) -> tuple[int, int]:
    (app,) = db.execute("PRAGMA application_id").fetchone()
    (version,) = db.execute("PRAGMA user_version").fetchone()
    return int(app), int(version)


def _has_tables(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is not None


def _migrate(
    db: sqlite3.Connection,
    *,
    where: str,
    name: str,
    application_id: int,
    migrations: Sequence[str],
    readonly: bool,
    legacy: Legacy | None,
) -> None:
    latest = len(migrations)
    app, version = _header(db)
    # The fast path reads two header fields and takes no write lock: opening a file that
    # is up to date never waits for another process's writer.
    if app == application_id and version == latest:
        return
    if readonly:
        version = _recognise(
            db, where=where, name=name, application_id=application_id, legacy=legacy, readonly=True
        )
        _check_version(where, name, version, latest)
        if version < latest:
            raise DatabaseOpenError(
                f"{name} {where}: schema version {version}, this edgeai reads {latest}; open "
                f"it once read-write (start the program that writes it) to migrate it"
            )
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        # Under the write lock: another process may have created or migrated it meanwhile.
        version = _recognise(
            db, where=where, name=name, application_id=application_id, legacy=legacy, readonly=False
        )
        _check_version(where, name, version, latest)
        if _header(db)[0] != application_id:
            db.execute(f"PRAGMA application_id = {int(application_id)}")
            db.execute(f"PRAGMA user_version = {int(version)}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    for target in range(version + 1, latest + 1):
        _apply(db, migrations[target - 1], target)


def _recognise(
    db: sqlite3.Connection,
    *,
    where: str,
    name: str,
    application_id: int,
    legacy: Legacy | None,
    readonly: bool,
) -> int:
    """The schema version of a file (a legacy one's, as ``legacy`` says); raise if not ours."""
    app, version = _header(db)
    if app == application_id:
        return version
    if app == 0 and version == 0:
        if not _has_tables(db):
            if readonly:
                raise WrongApplicationError(f"{name} {where}: empty, not a {name}")
            return 0  # a new file
        found = legacy(db) if legacy is not None else None
        if found is not None:
            return found
    raise WrongApplicationError(
        f"{name} {where}: not a {name} (application_id {app:#010x}, expected "
        f"{application_id:#010x}); point edgeai at the right file, or move this one away"
    )


def _check_version(where: str, name: str, version: int, latest: int) -> None:
    if version > latest:
        raise SchemaTooNewError(
            f"{name} {where}: schema version {version} is newer than this edgeai's "
            f"({latest}); upgrade edgeai (files are never migrated backwards)"
        )
    if version < 0:
        raise DatabaseOpenError(f"{name} {where}: schema version {version} is invalid")


def _apply(db: sqlite3.Connection, script: str, target: int) -> None:
    # executescript() would COMMIT before running; this script is its own transaction, with
    # the version bump inside it, and re-checks the version under the write lock.
    db.execute("BEGIN IMMEDIATE")
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version < target:
            for statement in _statements(script):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {int(target)}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """Split an SQL script into statements (a ``;`` inside a string or trigger is kept)."""
    statements: list[str] = []
    start = 0
    for end, char in enumerate(script, start=1):
        if char == ";" and sqlite3.complete_statement(script[start:end]):
            statements.append(script[start:end].strip())
            start = end
    rest = script[start:].strip()
    if rest:
        statements.append(rest)
    return [s for s in statements if s.strip("; \n\t")]
