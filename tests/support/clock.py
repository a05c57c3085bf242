"""A clock that moves only when the test moves it: ``clock()`` for time, ``clock.sleep`` to wait."""

from __future__ import annotations


class FakeClock:
    """Manual time for code that takes ``clock`` (and ``sleep``) arguments.

    ``sleep(s)`` advances the clock by ``s`` at once, so bounded waits finish instantly and
    a test can assert how long the code under test would have waited.
    """

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds``."""
        self.now += seconds

    def advance(self, seconds: float) -> float:
        """Advance the clock by ``seconds``; return the new time."""
        self.now += seconds
        return self.now
