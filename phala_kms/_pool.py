"""Connection slots: waiting for a free connection, kept apart from the request's timeout.

aiohttp's ``total`` timeout starts before a request has a pooled connection, so a
request queued behind a full pool can time out without ever being sent. The transport
therefore holds one :class:`PoolSlots` sized to the pool: a request takes a slot first
(waiting at most ``pool_timeout``), and only then starts its own timed request, which
never waits for a connection because the pool has one for every slot.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["PoolSlots"]


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(asyncio.TimeoutError())


class PoolSlots:
    """At most ``size`` holders at once; the others wait in arrival order.

    Like ``asyncio.Semaphore`` with a timeout on :meth:`acquire` that can neither lose
    a slot nor hand one to a waiter that already gave up (the race ``wait_for`` has on
    Python 3.10 and 3.11).

    Args:
        size: How many may hold a slot at once, >= 1.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def in_use(self) -> int:
        """Slots held right now."""
        return self.size - self._free

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot right now."""
        return sum(1 for future in self._waiters if not future.done())

    async def acquire(self, timeout: float | None) -> None:
        """Take a slot, waiting at most ``timeout`` seconds (``None``: as long as it takes).

        Raises:
            asyncio.TimeoutError: No slot came free within ``timeout``; none is held.
        """
        waiters = self._waiters
        while waiters and waiters[0].done():  # gave up waiting: drop them
            waiters.popleft()
        if self._free > 0 and not waiters:
            self._free -= 1
            return
        if timeout is not None and timeout <= 0:
            raise asyncio.TimeoutError
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiters.append(future)
        timer = None if timeout is None else loop.call_later(timeout, _expire, future)
        try:
            await future
        except BaseException:
            # Handed a slot, then cancelled before running on: give it to the next one.
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def release(self) -> None:
        """Give a slot back: to the first caller still waiting, else to the pool."""
        waiters = self._waiters
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self._free += 1
