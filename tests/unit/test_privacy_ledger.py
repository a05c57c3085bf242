import itertools
import math
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from edgeai.errors import PrivacyError
from edgeai.privacy.accounting import epsilon_for
from edgeai.privacy.ledger import (
    Budget,
    BudgetExhaustedError,
    LedgerError,
    PrivacyLedger,
    compact,
)
from tests.support.waiting import wait_for

DELTA = 1e-5
SESSION: dict[str, Any] = {
    "noise_multiplier": 1.2,
    "sample_rate": 0.02,
    "steps": 100,
    "delta": DELTA,
}


def _record(ledger: PrivacyLedger, subject: str, rnd: int, **changes: Any) -> None:
    ledger.record(subject, **{"run_id": "run-1", "server_round": rnd, **SESSION, **changes})


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


def test_spent_is_identical_after_reopening(path: Path) -> None:
    with PrivacyLedger(path) as ledger:
        ledger.set_budget("dev-1", 8.0, DELTA)
        for rnd in range(3):
            _record(ledger, "dev-1", rnd)
        _record(ledger, "dev-1", 3, noise_multiplier=0.9)
        _record(ledger, "dev-2", 0)
        before = ledger.spent("dev-1")
        sessions = ledger.sessions("dev-1")
    with PrivacyLedger(path) as ledger:
        assert ledger.spent("dev-1") == before
        assert ledger.sessions("dev-1") == sessions
        assert ledger.budget("dev-1") == Budget(8.0, DELTA, "rdp")
        assert ledger.budget("dev-2") is None
        assert ledger.subjects() == ["dev-1", "dev-2"]
        assert ledger.history("dev-1") == [(1.2, 0.02, 100)] * 3 + [(0.9, 0.02, 100)]
    # ε is recomputed from the whole history, never summed per session
    assert before == pytest.approx(epsilon_for([(1.2, 0.02, 300), (0.9, 0.02, 100)], DELTA))
    assert before < 3 * epsilon_for([(1.2, 0.02, 100)], DELTA)


def test_compact_merges_equal_mechanisms_only() -> None:
    history = [(1.0, 0.1, 5), (2.0, 0.1, 1), (1.0, 0.1, 7), (1.0, 0.2, 1)]
    assert compact(history) == [(1.0, 0.1, 12), (2.0, 0.1, 1), (1.0, 0.2, 1)]
    assert epsilon_for(compact(history), DELTA) == pytest.approx(epsilon_for(history, DELTA))


def _independent_epsilon(sigma: float, q: float, steps: int) -> float:
    # Google's dp_accounting, not Opacus (which the ledger uses)
    accountant = RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return float(accountant.get_epsilon(DELTA))


def test_budget_refuses_exactly_the_round_that_would_exceed_it(path: Path) -> None:
    budget = 2.5
    sigma, q, steps = 1.2, 0.02, 100
    independent = [_independent_epsilon(sigma, q, steps * k) for k in range(1, 12)]
    expected = next(k for k, eps in enumerate(independent, start=1) if eps > budget)
    # The libraries agree within 1 %, so that must not be able to move the boundary.
    assert independent[expected - 2] < 0.99 * budget < 1.01 * budget < independent[expected - 1]

    with PrivacyLedger(path) as ledger:
        ledger.set_budget("dev", budget, DELTA)
        refused = None
        for rnd in range(1, 12):
            decision = ledger.check("dev", (sigma, q, steps))
            if not decision.allowed:
                refused = rnd
                break
            _record(ledger, "dev", rnd)
        assert refused == expected
        assert decision.spent_before == pytest.approx(independent[expected - 2], rel=0.01)
        assert decision.spent_after == pytest.approx(independent[expected - 1], rel=0.01)
        assert decision.budget == budget
        assert "exceeds" in decision.reason
        assert len(ledger.sessions("dev")) == expected - 1  # check() records nothing

        with pytest.raises(BudgetExhaustedError, match="'dev'") as info:
            ledger.require("dev", (sigma, q, steps))
        assert info.value.decision == decision
        assert decision.spent_after > budget > decision.spent_before
        assert "set_budget" in str(info.value)
        assert isinstance(info.value, PrivacyError)

        with pytest.raises(BudgetExhaustedError):
            _record(ledger, "dev", expected, enforce=True)
        assert len(ledger.sessions("dev")) == expected - 1  # refused: nothing written
        # a spend that already happened is always recorded
        _record(ledger, "dev", expected)
        assert ledger.spent("dev") > budget


def test_a_subject_without_budget_is_never_allowed(path: Path) -> None:
    with PrivacyLedger(path) as ledger, pytest.raises(PrivacyError, match="set_budget"):
        ledger.check("new-device", (1.0, 0.1, 10))


def test_zero_noise_spends_everything(path: Path) -> None:
    with PrivacyLedger(path) as ledger:
        ledger.set_budget("dev", 100.0, DELTA)
        assert not ledger.check("dev", (0.0, 0.1, 1)).allowed
        _record(ledger, "dev", 0, noise_multiplier=0.0)
        assert ledger.spent("dev") == math.inf


def test_prv_budget_is_accounted_with_prv(path: Path) -> None:
    with PrivacyLedger(path) as ledger:
        ledger.set_budget("dev", 5.0, DELTA, accountant="prv")
        _record(ledger, "dev", 0)
        assert ledger.spent("dev") == pytest.approx(epsilon_for([(1.2, 0.02, 100)], DELTA, "prv"))
        assert ledger.spent("dev") <= ledger.spent("dev", DELTA, "rdp")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("noise_multiplier", -0.1),
        ("noise_multiplier", math.nan),
        ("noise_multiplier", math.inf),
        ("sample_rate", 0.0),
        ("sample_rate", 1.5),
        ("sample_rate", math.nan),
        ("steps", -1),
        ("steps", 2.5),
        ("steps", math.nan),
        ("delta", 0.0),
        ("delta", 1.0),
        ("delta", math.nan),
        ("accountant", "gdp"),
        ("run_id", ""),
        ("server_round", -1),
    ],
)
def test_invalid_sessions_are_rejected_and_not_written(path: Path, field: str, value: Any) -> None:
    with PrivacyLedger(path) as ledger:
        with pytest.raises(PrivacyError, match=field.split("_", maxsplit=1)[0]):
            _record(ledger, "dev", 0, **{field: value})
        assert ledger.sessions("dev") == []


def test_invalid_budgets_and_plans_are_rejected(path: Path) -> None:
    with PrivacyLedger(path) as ledger:
        for eps in (0.0, -1.0, math.inf, math.nan):
            with pytest.raises(PrivacyError, match="epsilon"):
                ledger.set_budget("dev", eps, DELTA)
        with pytest.raises(PrivacyError, match="delta"):
            ledger.set_budget("dev", 1.0, 1.0)
        with pytest.raises(PrivacyError, match="subject"):
            ledger.set_budget("", 1.0, DELTA)
        ledger.set_budget("dev", 1.0, DELTA)
        with pytest.raises(PrivacyError, match="sample_rate"):
            ledger.check("dev", (1.0, 0.0, 10))
        with pytest.raises(PrivacyError, match="pass delta"):
            ledger.spent("other")


def test_two_connections_see_each_others_writes(path: Path) -> None:
    with PrivacyLedger(path) as a, PrivacyLedger(path) as b:
        a.set_budget("dev", 4.0, DELTA)
        _record(a, "dev", 0)
        assert b.budget("dev") == Budget(4.0, DELTA)
        assert b.spent("dev") == a.spent("dev")
        _record(b, "dev", 1)
        assert len(a.sessions("dev")) == 2
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_writer_waits_for_another_writer_then_gives_up_clearly(path: Path) -> None:
    PrivacyLedger(path).close()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with PrivacyLedger(path, timeout_s=0.1) as impatient:
        with pytest.raises(LedgerError, match="timeout_s"):
            _record(impatient, "dev", 0)
        assert impatient.sessions("dev") == []
    release = threading.Timer(0.2, lambda: other.execute("COMMIT"))
    release.start()
    with PrivacyLedger(path, timeout_s=10) as patient:
        _record(patient, "dev", 0)  # waits for the commit, then writes
        assert len(patient.sessions("dev")) == 1
    release.join()
    other.close()


_WRITER = """
import sys, time
from pathlib import Path
from edgeai.privacy.ledger import PrivacyLedger
ledger = PrivacyLedger(sys.argv[1])
Path(sys.argv[1] + "." + sys.argv[2]).touch()  # ready
deadline = time.monotonic() + 60
while not Path(sys.argv[1] + ".go").exists() and time.monotonic() < deadline:
    time.sleep(0.005)
for rnd in range(150):
    ledger.record("dev", run_id=sys.argv[2], server_round=rnd, noise_multiplier=1.0,
                  sample_rate=0.01, steps=10, delta=1e-5)
    time.sleep(0.002)  # a real device does work between sessions; lets the other writer in
ledger.close()
"""


def test_two_processes_write_concurrently_without_losing_entries(path: Path) -> None:
    PrivacyLedger(path).close()
    names = ["proc-0", "proc-1"]
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), n]) for n in names]
    try:
        ready = [Path(f"{path}.{n}") for n in names]
        wait_for(lambda: all(p.exists() for p in ready), 60, f"writers to be ready: {ready}")
        Path(f"{path}.go").touch()  # start both at once
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    with PrivacyLedger(path) as ledger:
        sessions = ledger.sessions("dev")
        assert len(sessions) == 300
        assert {s.run_id for s in sessions} == set(names)
        # the writers really interleaved, and each one's entries are all there, in order
        order = [s.run_id for s in sessions]
        assert sum(a != b for a, b in itertools.pairwise(order)) > 1
        for n in names:
            assert [s.server_round for s in sessions if s.run_id == n] == list(range(150))
        assert ledger.spent("dev", DELTA) == pytest.approx(epsilon_for([(1.0, 0.01, 3000)], DELTA))


_CRASHER = """
import os, sys
from edgeai.privacy.ledger import PrivacyLedger
ledger = PrivacyLedger(sys.argv[1])
ledger.record("dev", run_id="r", server_round=0, noise_multiplier=1.0, sample_rate=0.01,
              steps=10, delta=1e-5)
with ledger._write() as db:  # the process dies in the middle of the next write
    db.execute("INSERT INTO sessions (subject, run_id, round, noise_multiplier, sample_rate, "
               "steps, delta, accountant, recorded_at) VALUES ('dev', 'r', 1, 1, 0.01, 10, "
               "1e-5, 'rdp', 0)")
    os._exit(9)
"""


def test_a_crash_mid_write_leaves_no_partial_entry(path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _CRASHER, str(path)], check=False, timeout=120)
    assert proc.returncode == 9
    with PrivacyLedger(path) as ledger:
        assert [s.server_round for s in ledger.sessions("dev")] == [0]


def test_a_foreign_or_newer_file_fails_with_a_fix(path: Path) -> None:
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match="backup"):
        PrivacyLedger(path)
    newer = path.with_name("newer.db")
    PrivacyLedger(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(LedgerError, match=r"newer\.db.*upgrade edgeai"):
        PrivacyLedger(newer)
    other = path.with_name("other.db")  # another program's SQLite file
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(LedgerError, match=r"other\.db: not a privacy ledger.*backup"):
        PrivacyLedger(other)


# The DDL of ledgers written before PRAGMA user_version (schema 1 in a meta table).
_OLD_LEDGER = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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
INSERT OR IGNORE INTO meta VALUES ('schema_version', '1');
"""


def test_a_ledger_from_before_user_version_opens_with_its_history(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(_OLD_LEDGER)
        db.execute("INSERT INTO budgets VALUES ('dev', 4.0, ?, 'rdp', 0)", (DELTA,))
        db.execute(
            "INSERT INTO sessions (subject, run_id, round, noise_multiplier, sample_rate, "
            "steps, delta, accountant, recorded_at) VALUES ('dev', 'r', 0, 1.2, 0.02, 100, ?, "
            "'rdp', 0)",
            (DELTA,),
        )
    with PrivacyLedger(path) as ledger:
        assert ledger.budget("dev") == Budget(4.0, DELTA)
        assert [s.server_round for s in ledger.sessions("dev")] == [0]
        _record(ledger, "dev", 1)
        assert [s.server_round for s in ledger.sessions("dev")] == [0, 1]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA application_id").fetchone() == (int.from_bytes(b"eaPL", "big"),)
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
    with sqlite3.connect(path) as db:  # a meta table naming a newer schema is refused
        db.execute("PRAGMA application_id = 0")
        db.execute("PRAGMA user_version = 0")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(LedgerError, match="upgrade edgeai"):
        PrivacyLedger(path)
