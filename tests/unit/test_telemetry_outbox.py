"""The SQLite outbox (order, seq per boot, bound, persistence) and the consumer Deduplicator."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeai.telemetry import Deduplicator, Outbox, OutboxError


def test_enqueue_pending_ack_in_order(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", "boot-1") as box:
        seqs = [box.enqueue(f"t/{i}", f"p{i}".encode(), retain=i == 0) for i in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
        rows = box.pending(10)
        assert [r.topic for r in rows] == [f"t/{i}" for i in range(5)]
        assert [r.seq for r in rows] == seqs
        assert (rows[0].retain, rows[1].retain) == (True, False)
        assert (rows[0].payload, rows[0].qos, rows[0].boot_id) == (b"p0", 1, "boot-1")
        assert [r.id for r in box.pending(2, after_id=rows[1].id)] == [rows[2].id, rows[3].id]
        assert box.ack([rows[0].id, rows[2].id, 999]) == 2
        assert box.ack([rows[0].id]) == 0  # a duplicate PUBACK is harmless
        assert [r.seq for r in box.pending(10)] == [2, 4, 5]
        assert len(box) == 3


def test_payload_function_sees_its_seq_inside_the_transaction(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", "b") as box:
        box.enqueue("t", b"x")
        assert box.enqueue("t", lambda seq: f"seq={seq}".encode()) == 2
        assert box.pending(5)[-1].payload == b"seq=2"

        def boom(seq: int) -> bytes:
            raise ValueError(seq)

        with pytest.raises(ValueError, match="3"):
            box.enqueue("t", boom)
        assert len(box) == 2  # rolled back, and the seq was not consumed
        assert box.enqueue("t", b"y") == 3


def test_a_new_boot_numbers_afresh_and_keeps_the_old_boots_rows(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, "old") as box:
        for _ in range(3):
            box.enqueue("t", b"old")
    with Outbox(path, "new") as box:
        assert box.enqueue("t", b"new") == 1
        rows = box.pending(10)
        assert [(r.boot_id, r.seq) for r in rows] == [
            ("old", 1),
            ("old", 2),
            ("old", 3),
            ("new", 1),
        ]
        box.ack(r.id for r in rows)
    with Outbox(path, "new") as box:  # the same boot id continues its numbering
        assert box.enqueue("t", b"again") == 2
    with Outbox(path, "third"):
        pass
    boots = sqlite3.connect(path).execute("SELECT boot_id FROM boots ORDER BY 1").fetchall()
    assert boots == [("new",), ("third",)]  # finished boots are forgotten


def test_overflow_drops_oldest_non_retained_and_counts_persistently(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, "b", max_messages=4) as box:
        box.enqueue("status", b"s1", retain=True)
        for i in range(6):
            box.enqueue("m", f"m{i}".encode())
        assert len(box) == 4
        assert [r.payload for r in box.pending(10)] == [b"s1", b"m3", b"m4", b"m5"]
        assert box.dropped == 3
    with Outbox(path, "b2", max_messages=4) as box:
        assert box.dropped == 3
        assert len(box) == 4


def test_retained_rows_go_only_when_nothing_else_is_left(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", "b", max_messages=2) as box:
        for i in range(3):
            box.enqueue("status", f"s{i}".encode(), retain=True)
        assert [r.payload for r in box.pending(5)] == [b"s1", b"s2"]
        assert box.dropped == 1


def test_bad_arguments_and_files_raise_outbox_errors(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="max_messages"):
        Outbox(tmp_path / "o.db", "b", max_messages=0)
    with pytest.raises(OutboxError, match="synchronous"):
        Outbox(tmp_path / "o.db", "b", synchronous="OFF")  # type: ignore[arg-type]
    not_a_db = tmp_path / "junk.db"
    not_a_db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError, match=r"junk\.db"):
        Outbox(not_a_db, "b")
    with Outbox(tmp_path / "o.db", "b") as box, pytest.raises(OutboxError, match="qos"):
        box.enqueue("t", b"x", qos=3)


def test_wal_mode_and_synchronous_setting(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", "b", synchronous="FULL") as box:
        box.enqueue("t", b"x")
        assert box._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert box._db.execute("PRAGMA synchronous").fetchone() == (2,)


# -- Deduplicator --------------------------------------------------------------------


@settings(deadline=None)  # a shared CI core must not turn slowness into failure
@given(
    keys=st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]), st.sampled_from(["boot1", "boot2"]), st.integers(0, 60)
        ),
        max_size=200,
    )
)
def test_dedup_accepts_each_key_exactly_once(keys: list[tuple[str, str, int]]) -> None:
    dedup = Deduplicator(window=1000)
    accepted = [k for k in keys if dedup.is_new(*k)]
    assert sorted(accepted) == sorted(set(keys))


def test_dedup_memory_is_bounded() -> None:
    dedup = Deduplicator(window=8, max_streams=3)
    # Gaps (seq 0 never arrives) would grow the set without the window.
    for seq in range(1, 1000, 2):
        assert dedup.is_new("n", "b", seq)
    stream = dedup._streams[("n", "b")]
    assert len(stream.seen) <= 8
    assert not dedup.is_new("n", "b", 991)  # recent repeats are still caught
    for boot in range(10):
        dedup.is_new("n", f"boot{boot}", 1)
    assert len(dedup) == 3
    with pytest.raises(ValueError, match="window"):
        Deduplicator(window=0)


def test_dedup_in_order_stream_keeps_no_set() -> None:
    dedup = Deduplicator()
    assert all(dedup.is_new("n", "b", s) for s in range(1, 500))
    assert not dedup.is_new("n", "b", 7)
    assert dedup._streams[("n", "b")].seen == set()


# -- rows served from memory ---------------------------------------------------------


def file_rows(box: Outbox, limit: int, after_id: int) -> list[tuple[int, bytes, int]]:
    """What the file itself says :meth:`Outbox.pending` should return."""
    rows = box._db.execute(
        "SELECT id, payload, seq FROM messages WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
    ).fetchall()
    return [(i, bytes(p), s) for i, p, s in rows]


@settings(deadline=None, max_examples=150)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("enqueue"), st.booleans()),
            st.tuples(st.just("enqueue_many"), st.integers(0, 4)),
            st.tuples(st.just("read"), st.integers(1, 4)),
            st.tuples(st.just("ack"), st.integers(1, 4)),
            st.tuples(st.just("rewind"), st.integers(0, 3)),
        ),
        max_size=60,
    ),
    memory_rows=st.integers(0, 5),  # below and above the bound of 3
)
def test_pending_from_memory_always_matches_the_file(
    tmp_path_factory: pytest.TempPathFactory,
    ops: list[tuple[str, int]],
    memory_rows: int,
) -> None:
    # A pump-like reader (a cursor that only moves on, acks what it read) interleaved with
    # enqueues, overflow drops (bound 3) and re-reads from the start: whatever pending()
    # serves from memory must be exactly what the file holds.
    path = tmp_path_factory.mktemp("outbox") / "o.db"
    with Outbox(path, "b", max_messages=3, memory_rows=memory_rows) as box:
        cursor, sent = 0, []
        for op, arg in ops:
            if op == "enqueue":
                box.enqueue("t", lambda seq: f"m{seq}".encode(), retain=bool(arg))
            elif op == "enqueue_many":
                box.enqueue_many(
                    [("t", lambda seq: f"m{seq}".encode(), i == 0) for i in range(arg)]
                )
            elif op == "read":
                got = box.pending(arg, after_id=cursor)
                assert [(r.id, r.payload, r.seq) for r in got] == file_rows(box, arg, cursor)
                if got:
                    cursor = got[-1].id
                    sent += [r.id for r in got]
            elif op == "ack":
                box.ack(sent[:arg])
                del sent[:arg]
            else:
                got = box.pending(10, after_id=arg)
                assert [(r.id, r.payload, r.seq) for r in got] == file_rows(box, 10, arg)
        assert len(box) == len(file_rows(box, 100, 0))


def test_enqueue_many_is_one_all_or_nothing_transaction(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", "b", max_messages=5) as box:
        box.enqueue("t", b"first")
        assert box.enqueue_many([("t", b"a", False), ("s", b"b", True)]) == [2, 3]
        assert box.enqueue_many([]) == []

        def boom(seq: int) -> bytes:
            raise ValueError(seq)

        with pytest.raises(ValueError, match="5"):
            box.enqueue_many([("t", b"c", False), ("t", boom, False)])
        assert [(r.seq, r.topic, r.payload, r.retain) for r in box.pending(9)] == [
            (1, "t", b"first", False),
            (2, "t", b"a", False),
            (3, "s", b"b", True),
        ]
        # Over the bound inside one batch: the oldest non-retained rows go, counted.
        assert box.enqueue_many([("t", f"x{i}".encode(), False) for i in range(4)]) == [4, 5, 6, 7]
        assert [r.payload for r in box.pending(9)] == [b"b", b"x0", b"x1", b"x2", b"x3"]
        assert (len(box), box.dropped) == (5, 2)
        with pytest.raises(OutboxError, match="qos"):
            box.enqueue_many([("t", b"x", False)], qos=5)


def test_ids_keep_growing_after_the_newest_row_is_acked(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", "b") as box:
        box.enqueue("t", b"1")
        (row,) = box.pending(5)
        assert box.ack([row.id]) == 1
        box.enqueue("t", b"2")  # SQLite alone would give this row the acked row's id again
        (after,) = box.pending(5, after_id=row.id)
        assert (after.payload, after.id > row.id) == (b"2", True)


def test_an_autoincrement_outbox_file_is_migrated_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
            qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
            retain INTEGER NOT NULL CHECK (retain IN (0, 1)),
            boot_id TEXT NOT NULL, seq INTEGER NOT NULL);
        INSERT INTO messages (topic, payload, qos, retain, boot_id, seq)
            VALUES ('t', x'6f6c64', 1, 1, 'old', 7);
        """
    )
    old.close()
    with Outbox(path, "new") as box:
        box.enqueue("t", b"new")
        rows = box.pending(5)
        assert [(r.boot_id, r.seq, r.payload, r.retain) for r in rows] == [
            ("old", 7, b"old", True),
            ("new", 1, b"new", False),
        ]
        (sql,) = box._db.execute("SELECT sql FROM sqlite_master WHERE name = 'messages'").fetchone()
        assert "AUTOINCREMENT" not in sql


def test_an_unversioned_outbox_opens_with_its_rows_and_drop_count(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(  # the DDL of outboxes from before PRAGMA user_version
        """
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS boots (boot_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
        INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0);
        CREATE TABLE IF NOT EXISTS messages (
            id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,
            qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
            retain INTEGER NOT NULL CHECK (retain IN (0, 1)),
            boot_id TEXT NOT NULL, seq INTEGER NOT NULL);
        INSERT INTO messages VALUES (5, 't', x'6f6c64', 1, 0, 'b', 4);
        INSERT INTO boots VALUES ('b', 9);
        UPDATE meta SET value = 3 WHERE key = 'dropped';
        """
    )
    old.close()
    with Outbox(path, "b") as box:
        assert [(r.id, r.payload, r.seq) for r in box.pending(5)] == [(5, b"old", 4)]
        assert box.dropped == 3
        assert box.enqueue("t", b"new") == 10  # resumes after the boot's last_seq
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA application_id").fetchone() == (int.from_bytes(b"eaTO", "big"),)
        assert db.execute("PRAGMA user_version").fetchone() == (2,)


def test_a_database_of_another_program_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(OutboxError, match=r"other\.db: not a telemetry outbox"):
        Outbox(path, "b")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
