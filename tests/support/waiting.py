"""Poll a condition under a deadline: the one way tests wait (never a bare ``sleep``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    cond: Callable[[], T], timeout_s: float = 30.0, what: str = "condition", *, poll_s: float = 0.02
) -> T:
    """Poll ``cond`` until it returns something truthy and return that.

    Raises
    ------
    AssertionError
        After ``timeout_s`` seconds, naming ``what`` was waited for.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


async def wait_for_async(
    cond: Callable[[], T], timeout_s: float = 30.0, what: str = "condition", *, poll_s: float = 0.01
) -> T:
    """:func:`wait_for` inside an event loop (the loop keeps running while it polls)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(poll_s)


def wait_for_slow(cond: Callable[[], T], timeout_s: float = 30.0, what: str = "condition") -> T:
    """:func:`wait_for` polling every 0.1 s, for conditions that cost an RPC or a file scan."""
    return wait_for(cond, timeout_s, what, poll_s=0.1)
