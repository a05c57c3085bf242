"""The one SQLite opener: fresh files, migrations, foreign and newer files, read-only, legacy."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from edgeai.plumbing.sqlite import (
    DatabaseOpenError,
    SchemaTooNewError,
    WrongApplicationError,
    open_db,
)

APP = int.from_bytes(b"eaTT", "big")
V1 = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
# Two statements, a ';' inside a string and a trigger body: the splitter keeps them whole.
V2 = """
ALTER TABLE items ADD COLUMN note TEXT NOT NULL DEFAULT 'a; b';
CREATE TABLE log (item INTEGER);
CREATE TRIGGER items_log AFTER INSERT ON items BEGIN
    INSERT INTO log VALUES (new.id);
END;
"""

OLD_CONVENTION = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
"""


def header(path: Path) -> tuple[int, int, str]:
    with sqlite3.connect(path) as db:
        return (
            db.execute("PRAGMA application_id").fetchone()[0],
            db.execute("PRAGMA user_version").fetchone()[0],
            db.execute("PRAGMA journal_mode").fetchone()[0],
        )


def test_a_fresh_file_gets_the_id_the_schema_and_wal(tmp_path: Path):
    path = tmp_path / "sub" / "t.db"
    db = open_db(path, application_id=APP, migrations=[V1, V2], synchronous="NORMAL")
    assert db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    db.execute("INSERT INTO items (name) VALUES ('x')")
    assert db.execute("SELECT note FROM items").fetchone() == ("a; b",)
    assert db.execute("SELECT item FROM log").fetchall() == [(1,)]
    db.close()
    assert header(path) == (APP, 2, "wal")
    full = open_db(path, application_id=APP, migrations=[V1, V2])
    assert full.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL, the default
    full.close()


def test_an_older_file_is_migrated_forward_keeping_its_rows(tmp_path: Path):
    path = tmp_path / "t.db"
    with open_db(path, application_id=APP, migrations=[V1]) as db:
        db.execute("INSERT INTO items (name) VALUES ('kept')")
    db.close()
    assert header(path)[:2] == (APP, 1)
    db = open_db(path, application_id=APP, migrations=[V1, V2])
    assert db.execute("SELECT name, note FROM items").fetchall() == [("kept", "a; b")]
    db.close()
    assert header(path)[:2] == (APP, 2)


def test_a_failing_migration_leaves_the_file_at_the_previous_version(tmp_path: Path):
    path = tmp_path / "t.db"
    open_db(path, application_id=APP, migrations=[V1]).close()
    broken = "CREATE TABLE half (x); INSERT INTO nowhere VALUES (1);"
    with pytest.raises(DatabaseOpenError, match=r"t\.db"):
        open_db(path, application_id=APP, migrations=[V1, broken])
    assert header(path)[:2] == (APP, 1)
    with sqlite3.connect(path) as db:  # the half-applied migration was rolled back
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchone() is None


def test_a_file_of_another_application_is_refused_untouched(tmp_path: Path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA application_id = 12345")
        db.execute("CREATE TABLE theirs (x)")
    with pytest.raises(WrongApplicationError, match=r"other\.db.*0x00003039"):
        open_db(path, application_id=APP, migrations=[V1], name="test store")
    plain = tmp_path / "plain.db"  # no application id, but tables nobody recognises
    with sqlite3.connect(plain) as db:
        db.execute("CREATE TABLE theirs (x)")
    with pytest.raises(WrongApplicationError, match=r"plain\.db: not a test store"):
        open_db(plain, application_id=APP, migrations=[V1], name="test store")
    assert header(plain)[:2] == (0, 0)


def test_a_file_that_is_not_sqlite_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(DatabaseOpenError, match=r"junk\.db.*damaged"):
        open_db(path, application_id=APP, migrations=[V1])


def test_a_newer_file_is_refused(tmp_path: Path):
    path = tmp_path / "t.db"
    open_db(path, application_id=APP, migrations=[V1, V2]).close()
    with pytest.raises(SchemaTooNewError, match=r"t\.db.*version 2.*\(1\); upgrade edgeai"):
        open_db(path, application_id=APP, migrations=[V1])
    with pytest.raises(SchemaTooNewError):
        open_db(path, application_id=APP, migrations=[V1], readonly=True)


def test_readonly_reads_and_never_writes(tmp_path: Path):
    path = tmp_path / "t.db"
    with pytest.raises(DatabaseOpenError, match=r"t\.db"):
        open_db(path, application_id=APP, migrations=[V1], readonly=True)  # missing
    assert not path.exists()
    open_db(path, application_id=APP, migrations=[V1]).close()
    ro = open_db(path, application_id=APP, migrations=[V1, V2], readonly=False)
    ro.close()
    reader = open_db(path, application_id=APP, migrations=[V1, V2], readonly=True)
    assert reader.execute("SELECT COUNT(*) FROM items").fetchone() == (0,)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.execute("INSERT INTO items (name) VALUES ('x')")
    reader.close()
    older = tmp_path / "older.db"
    open_db(older, application_id=APP, migrations=[V1]).close()
    with pytest.raises(DatabaseOpenError, match="open it once read-write"):
        open_db(older, application_id=APP, migrations=[V1, V2], readonly=True)
    assert header(older)[:2] == (APP, 1)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(WrongApplicationError, match="empty"):
        open_db(empty, application_id=APP, migrations=[V1], readonly=True)


def test_a_legacy_file_is_adopted_at_the_version_its_old_convention_names(tmp_path: Path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the old convention: a meta table with a version
        db.executescript(OLD_CONVENTION)
        db.execute("INSERT INTO items (name) VALUES ('old')")

    def legacy(db: sqlite3.Connection) -> int | None:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return None if row is None else int(row[0])

    reader = open_db(path, application_id=APP, migrations=[V1], readonly=True, legacy=legacy)
    assert reader.execute("SELECT name FROM items").fetchall() == [("old",)]
    reader.close()
    assert header(path)[:2] == (0, 0)  # read-only: recognised, not rewritten
    db = open_db(path, application_id=APP, migrations=[V1, V2], legacy=legacy)
    assert db.execute("SELECT name, note FROM items").fetchall() == [("old", "a; b")]
    db.close()
    assert header(path)[:2] == (APP, 2)


def test_concurrent_openers_apply_each_migration_once(tmp_path: Path):
    path = tmp_path / "t.db"
    counting = """
CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE applied (n INTEGER);
INSERT INTO applied VALUES (1);
"""
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            barrier.wait()
            open_db(path, application_id=APP, migrations=[counting, V2], timeout_s=30).close()
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM applied").fetchone() == (1,)
    assert header(path)[:2] == (APP, 2)


def test_bad_arguments(tmp_path: Path):
    with pytest.raises(ValueError, match="application_id"):
        open_db(tmp_path / "t.db", application_id=0, migrations=[V1])
    with pytest.raises(ValueError, match="synchronous"):
        open_db(tmp_path / "t.db", application_id=APP, migrations=[V1], synchronous="OFF")  # type: ignore[arg-type]
