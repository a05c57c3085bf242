"""The privacy ledger's SQLite schema: its application id, migrations and old layout."""

from __future__ import annotations

import sqlite3

APPLICATION_ID = int.from_bytes(b"eaPL", "big")  # PRAGMA application_id: edgeai privacy ledger
# Append only: migrations[i] takes a file from user_version i to i + 1.
MIGRATIONS = (
    """
CREATE TABLE IF NOT EXISTS budgets (
    subject TEXT PRIMARY KEY,
    epsilon REAL NOT NULL CHECK (epsilon > 0),
    delta REAL NOT NULL CHECK (delta > 0 AND delta < 1),
    accountant TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL CHECK (round >= 0),
    noise_multiplier REAL NOT NULL CHECK (noise_multiplier >= 0),
    sample_rate REAL NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
    steps INTEGER NOT NULL CHECK (steps >= 0),
    delta REAL NOT NULL CHECK (delta > 0 AND delta < 1),
    accountant TEXT NOT NULL,
    recorded_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_subject ON sessions (subject, id);
""",
)
SCHEMA_VERSION = len(MIGRATIONS)


def legacy_version(db: sqlite3.Connection) -> int | None:
    """The schema version of a ledger from before ``user_version``: ``meta.schema_version``.

    Those files have the tables of migration 1 and a ``meta`` table naming the version;
    the ``meta`` table stays behind, unused.
    """
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:  # no meta table: not a ledger
        return None
    return None if row is None else int(row[0])
