"""A persistent privacy ledger: every DP session of a subject, and its budget, in SQLite.

A subject is whoever's privacy is being spent: a device (its node id) for
DP-SGD, or the whole federation for client-level DP.  Each session is stored as
the numbers anyone needs to recompute ε — ``(noise_multiplier, sample_rate,
steps)`` plus δ and the accountant used — and ε is always recomputed from the
full history, never summed.

The file is opened by :func:`edgeai.plumbing.sqlite.open_db` in WAL mode with
``synchronous=FULL`` (a device's ε must survive a power cut); every write is one
``BEGIN IMMEDIATE`` transaction, so a crash leaves either the whole entry or
none of it, and a second process waits (up to ``timeout_s``) instead of failing.
Ledgers written before ``PRAGMA user_version`` kept their version in a ``meta``
table; they open as they are (see :func:`legacy_version`).
"""

from __future__ import annotations

import math
import numbers
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from pathlib import Path

from edgeai.errors import EdgeAIError, PrivacyError
from edgeai.plumbing.sqlite import (
    DamagedDatabaseError,
    DatabaseOpenError,
    WrongApplicationError,
    open_db,
)
from edgeai.privacy._ledger_schema import (
    APPLICATION_ID,
    MIGRATIONS,
    legacy_version,
)
from edgeai.privacy.accounting import ACCOUNTANTS, epsilon_for

Planned = tuple[float, float, int]


class LedgerError(EdgeAIError, OSError):
    """The ledger file cannot be opened, read or written."""


class BudgetExhaustedError(PrivacyError):
    """A session would take a subject past its privacy budget (``.decision`` says how far)."""

    def __init__(self, decision: BudgetDecision) -> None:
        self.decision = decision
        super().__init__(
            f"privacy budget of {decision.subject!r} exhausted: ε = {decision.spent_before:.4g} "
            f"spent, this session would make it {decision.spent_after:.4g}, over the budget of "
            f"{decision.budget:.4g} at δ = {decision.delta:g}; leave this subject out of further "
            "training, add noise or take fewer steps, or (if policy allows) raise its budget "
            "with set_budget"
        )


@dataclass(frozen=True)
class Session:
    """One recorded DP session."""

    subject: str
    run_id: str
    server_round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    recorded_at: float  # Unix time


@dataclass(frozen=True)
class Budget:
    """How much privacy a subject may spend: ε at δ, under one accountant."""

    epsilon: float
    delta: float
    accountant: str = "rdp"


@dataclass(frozen=True)
class BudgetDecision:
    """Whether a planned session fits the budget, and the ε before and after it."""

    subject: str
    allowed: bool
    spent_before: float
    spent_after: float
    budget: float
    delta: float
    reason: str


def _check_subject(subject: str) -> str:
    if not isinstance(subject, str) or not subject.strip():
        raise PrivacyError(f"subject must be a non-empty string; got {subject!r}")
    return subject


def check_delta(delta: float) -> float:
    """Validate δ: in (0, 1)."""
    if not 0 < delta < 1:  # also false for NaN
        raise PrivacyError(f"delta must be in (0, 1), typically below 1/dataset size; got {delta}")
    return float(delta)


def _check_accountant(name: str) -> str:
    if name not in ACCOUNTANTS:
        raise PrivacyError(f"unknown accountant {name!r}; choose one of {', '.join(ACCOUNTANTS)}")
    return name


def check_session(
    noise_multiplier: float, sample_rate: float, steps: int, steps_name: str = "steps"
) -> Planned:
    """Validate one DP session's numbers; return them as ``(σ, q, steps)``."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise PrivacyError(f"noise_multiplier must be >= 0 and finite; got {noise_multiplier}")
    if not 0 < sample_rate <= 1:
        raise PrivacyError(f"sample_rate must be in (0, 1]; got {sample_rate}")
    return float(noise_multiplier), float(sample_rate), _whole(steps_name, steps)


def _whole(name: str, value: float) -> int:
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not (integral or (isinstance(value, float) and value.is_integer())) or value < 0:
        raise PrivacyError(f"{name} must be a whole number >= 0; got {value!r}")
    return int(value)


def compact(history: Sequence[Planned]) -> list[Planned]:
    """Merge entries with equal (σ, q): composition only depends on their total steps."""
    merged: dict[tuple[float, float], int] = {}
    for sigma, q, steps in history:
        merged[(sigma, q)] = merged.get((sigma, q), 0) + steps
    return [(s, q, n) for (s, q), n in merged.items()]


class PrivacyLedger:
    """Privacy sessions and budgets of many subjects, kept in one SQLite file.

    Parameters
    ----------
    path
        The database file (created if missing); ``":memory:"`` for tests.
    timeout_s
        How long a write waits for another process's transaction to finish.
    clock
        Returns the Unix time stored with each entry.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = str(path)
        self._clock = clock
        try:
            # Opening a ledger that is up to date reads its header only: it never waits
            # for another process's writer.
            self._db = open_db(
                self.path,
                application_id=APPLICATION_ID,
                migrations=MIGRATIONS,
                name="privacy ledger",
                synchronous="FULL",
                timeout_s=timeout_s,
                legacy=legacy_version,
            )
        except (WrongApplicationError, DamagedDatabaseError) as exc:
            raise LedgerError(
                f"{exc}; restore the ledger from a backup, never start a fresh one for a "
                "device that has already trained"
            ) from exc
        except DatabaseOpenError as exc:  # e.g. newer than this edgeai, or locked
            raise LedgerError(str(exc)) from exc

    # -- plumbing ---------------------------------------------------------------

    @contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            hint = (
                "another process held it longer than timeout_s; retry or raise timeout_s"
                if "locked" in str(exc) or "busy" in str(exc)
                else "check the file's permissions and free disk space"
            )
            raise LedgerError(
                f"privacy ledger {self.path}: {action} failed: {exc}; {hint}"
            ) from exc
        except sqlite3.DatabaseError as exc:
            raise LedgerError(
                f"privacy ledger {self.path}: {action} failed: {exc}; the file is not a "
                "ledger or is damaged — restore it from a backup, never start a fresh one "
                "for a device that has already trained"
            ) from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: a read-then-write (record with
        # enforce=True) cannot interleave with another writer.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the database; the object cannot be used afterwards."""
        self._db.close()

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------

    def subjects(self) -> list[str]:
        """Every subject with a budget or a session, sorted."""
        with self._translate("read"):
            rows = self._db.execute(
                "SELECT subject FROM budgets UNION SELECT subject FROM sessions ORDER BY 1"
            ).fetchall()
        return [r[0] for r in rows]

    def sessions(self, subject: str) -> list[Session]:
        """The subject's sessions, oldest first."""
        with self._translate("read"):
            rows = self._db.execute(
                "SELECT subject, run_id, round, noise_multiplier, sample_rate, steps, delta, "
                "accountant, recorded_at FROM sessions WHERE subject = ? ORDER BY id",
                (_check_subject(subject),),
            ).fetchall()
        return [Session(*row) for row in rows]

    def history(self, subject: str) -> list[Planned]:
        """The subject's DP-SGD history ``[(σ, q, steps), ...]``, oldest first."""
        return [(s.noise_multiplier, s.sample_rate, s.steps) for s in self.sessions(subject)]

    def budget(self, subject: str) -> Budget | None:
        """The subject's budget, or None if none was set."""
        with self._translate("read"):
            row = self._db.execute(
                "SELECT epsilon, delta, accountant FROM budgets WHERE subject = ?",
                (_check_subject(subject),),
            ).fetchone()
        return None if row is None else Budget(*row)

    def spent(
        self, subject: str, delta: float | None = None, accountant: str | None = None
    ) -> float:
        """ε the subject has spent at ``delta`` (default: its budget's δ and accountant)."""
        budget = self.budget(subject)
        if delta is None:
            if budget is None:
                raise PrivacyError(f"{subject!r} has no budget; pass delta explicitly")
            delta = budget.delta
        accountant = accountant or (budget.accountant if budget else "rdp")
        return epsilon_for(
            compact(self.history(subject)), check_delta(delta), _check_accountant(accountant)
        )

    def check(self, subject: str, planned: Planned) -> BudgetDecision:
        """Would ``planned = (σ, q, steps)`` fit the subject's budget? Records nothing."""
        return self._decide(subject, check_session(*planned), self.history(subject))

    def require(self, subject: str, planned: Planned) -> BudgetDecision:
        """Like :meth:`check`, but raise :class:`BudgetExhaustedError` when refused."""
        decision = self.check(subject, planned)
        if not decision.allowed:
            raise BudgetExhaustedError(decision)
        return decision

    def _decide(self, subject: str, planned: Planned, history: list[Planned]) -> BudgetDecision:
        budget = self.budget(subject)
        if budget is None:
            raise PrivacyError(
                f"{subject!r} has no privacy budget; call set_budget(subject, epsilon, delta) "
                "before training (a subject without a budget is never allowed to train)"
            )
        before = epsilon_for(compact(history), budget.delta, budget.accountant)
        after = epsilon_for(compact([*history, planned]), budget.delta, budget.accountant)
        allowed = after <= budget.epsilon
        verdict = "fits" if allowed else "exceeds"
        reason = (
            f"ε {before:.4g} → {after:.4g} {verdict} the budget {budget.epsilon:.4g} "
            f"at δ = {budget.delta:g} ({budget.accountant})"
        )
        return BudgetDecision(subject, allowed, before, after, budget.epsilon, budget.delta, reason)

    # -- writing ----------------------------------------------------------------

    def set_budget(
        self, subject: str, epsilon: float, delta: float, accountant: str = "rdp"
    ) -> None:
        """Set (or replace) the subject's budget: at most ``epsilon`` at ``delta``."""
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise PrivacyError(f"epsilon budget must be positive and finite; got {epsilon}")
        row = (_check_subject(subject), float(epsilon), check_delta(delta))
        with self._translate("set budget"), self._write() as db:
            db.execute(
                "INSERT INTO budgets VALUES (?, ?, ?, ?, ?) ON CONFLICT (subject) DO UPDATE SET "
                "epsilon = excluded.epsilon, delta = excluded.delta, "
                "accountant = excluded.accountant, updated_at = excluded.updated_at",
                (*row, _check_accountant(accountant), self._clock()),
            )

    def record(
        self,
        subject: str,
        *,
        run_id: str,
        server_round: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        delta: float,
        accountant: str = "rdp",
        enforce: bool = False,
    ) -> Session:
        """Record one DP session (noise already released: the spend is real).

        With ``enforce=True`` the budget check and the insert happen in one
        transaction, and a session over the budget raises
        :class:`BudgetExhaustedError` and is not recorded — use it when the
        record is made *before* the result is released.
        """
        sigma, q, n = check_session(noise_multiplier, sample_rate, steps)
        if not isinstance(run_id, str) or not run_id:
            raise PrivacyError(f"run_id must be a non-empty string; got {run_id!r}")
        session = Session(
            _check_subject(subject),
            run_id,
            _whole("server_round", server_round),
            sigma,
            q,
            n,
            check_delta(delta),
            _check_accountant(accountant),
            self._clock(),
        )
        with self._translate("record"), self._write() as db:
            if enforce:
                decision = self._decide(subject, (sigma, q, n), self.history(subject))
                if not decision.allowed:
                    raise BudgetExhaustedError(decision)
            db.execute(
                "INSERT INTO sessions (subject, run_id, round, noise_multiplier, sample_rate, "
                "steps, delta, accountant, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                astuple(session),
            )
        return session
