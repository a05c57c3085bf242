"""What the device's privacy ledger says, as the agent reports it: rounds joined, ε, budget."""

from __future__ import annotations

from edgeai.agent.events import Reporter
from edgeai.agent.supernode import LedgerWatch


class PrivacyReport:
    """Follows the ledger; reports ``round_joined`` per new session, ``budget_exhausted`` once."""

    def __init__(self, ledger: LedgerWatch, reporter: Reporter) -> None:
        self.ledger = ledger
        self.reporter = reporter
        self.rounds_joined = 0
        self.epsilon: float | None = None
        self.delta: float | None = None
        self._budget_reported = False

    def poll(self) -> None:
        """Read what the ClientApp wrote since the last poll and report it."""
        change = self.ledger.poll()
        if change is None:
            return
        self.epsilon, self.delta = change.epsilon, change.delta
        for run_id, server_round in change.new_rounds:
            self.rounds_joined += 1
            self.reporter.event(
                "round_joined",
                run_id=run_id,
                round=server_round,
                epsilon=change.epsilon,
                delta=change.delta,
            )
        if change.exhausted and not self._budget_reported:
            self._budget_reported = True
            self.reporter.event(
                "budget_exhausted",
                epsilon=change.epsilon,
                budget=change.budget,
                delta=change.delta,
            )
