"""A first-in, first-out budget of request bytes in flight: the server's bound on memory.

A request's bytes are held from before its body is read until its response is built, so
the bodies, the decoded tensors and the queued batches of all requests together stay
within one number. Decoding costs a multiple of the body (JSON numbers become Python
objects, then an array), so the budget is a few maximum-size requests, not the memory
limit itself. A request waits its turn for bytes (the kernel keeps unread bodies, not
us) up to a deadline, then gets :class:`OverloadedError`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from edgeai.serving.errors import OverloadedError


class ByteBudget:
    """At most ``limit`` bytes held at once; waiters are served in arrival order.

    Parameters
    ----------
    limit
        Bytes that may be held together. A single claim larger than ``limit`` is
        capped at ``limit`` (it then runs alone), since the size limit of one request
        is checked elsewhere.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, n: int) -> bool:
        return self.held + n <= self.limit

    async def acquire(self, n: int, timeout_s: float) -> int:
        """Hold ``n`` bytes (capped at the limit), waiting up to ``timeout_s``; return them.

        Raises
        ------
        OverloadedError
            The bytes did not come free in time.
        """
        n = min(max(n, 0), self.limit)
        if not self._waiters and self._fits(n):
            self.held += n
            return n
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            if future.done():  # granted just as the deadline passed: keep it
                return n
            self._waiters.remove(entry)
            self._wake()  # a large waiter leaving may let smaller ones behind it in
            raise OverloadedError(
                f"requests in flight hold {self.held} of {self.limit} bytes "
                f"(max_inflight_bytes) and this one needs {n}; retry later"
            ) from None
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(n)  # granted, but the caller is gone
            elif entry in self._waiters:
                self._waiters.remove(entry)
                self._wake()
            raise
        return n

    def release(self, n: int) -> None:
        """Give back ``n`` bytes taken by :meth:`acquire`."""
        self.held -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            n, future = self._waiters.popleft()
            if future.done():
                continue
            self.held += n
            future.set_result(None)

    @asynccontextmanager
    async def hold(self, n: int, timeout_s: float) -> AsyncIterator[int]:
        """``async with budget.hold(n, t):`` holds the bytes for the block."""
        got = await self.acquire(n, timeout_s)
        try:
            yield got
        finally:
            self.release(got)
