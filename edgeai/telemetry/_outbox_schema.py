"""The telemetry outbox's SQLite schema: its application id, migrations and old layout."""

from __future__ import annotations

import sqlite3

APPLICATION_ID = int.from_bytes(b"eaTO", "big")  # PRAGMA application_id: telemetry outbox
_MESSAGES = """CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
    retain INTEGER NOT NULL CHECK (retain IN (0, 1)),
    boot_id TEXT NOT NULL,
    seq INTEGER NOT NULL
)"""
# Append only: migrations[i] takes a file from user_version i to i + 1.
MIGRATIONS = (
    # 1: the tables (IF NOT EXISTS: unversioned outboxes run this too).
    ";\n".join(
        (
            _MESSAGES,
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS boots "
            "(boot_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL)",
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0);",
        )
    ),
    # 2: ids from memory: the same table, rebuilt without the AUTOINCREMENT older files had.
    ";\n".join(
        (
            _MESSAGES.replace("IF NOT EXISTS messages", "messages_new"),
            "INSERT INTO messages_new (id, topic, payload, qos, retain, boot_id, seq) "
            "SELECT id, topic, payload, qos, retain, boot_id, seq FROM messages",
            "DROP TABLE messages",
            "ALTER TABLE messages_new RENAME TO messages;",
        )
    ),
)
_LEGACY_TABLES = {"messages", "meta", "boots", "sqlite_sequence"}


def legacy_version(db: sqlite3.Connection) -> int | None:
    """An outbox from before ``user_version`` (its tables, no more): run every migration."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return 0 if "messages" in tables and tables <= _LEGACY_TABLES else None
