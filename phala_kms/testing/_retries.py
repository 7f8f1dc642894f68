"""Retry waits without waiting: for tests of code that uses a client against faults."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..client import AsyncKMSClient
    from ..sync import KMSClient

__all__ = ["instant_retries"]


@contextlib.contextmanager
def instant_retries(client: AsyncKMSClient | KMSClient) -> Iterator[list[float]]:
    """Make a client's retry waits instant, and record how long each would have been.

    The retry decisions (which failures, how many retries, ``Retry-After``,
    ``deadline``, the retry budget) are unchanged; only the sleep between attempts is
    skipped. The client-wide waits of rate limiting are skipped too, and not recorded:
    the ``Retry-After`` gate that holds back the client's other requests, and the
    adaptive pacing that follows a throttle (a ``max_requests_per_second`` cap still
    holds).

    Args:
        client: An ``AsyncKMSClient`` or a ``KMSClient``.

    Yields:
        The list the waits are appended to, in seconds, in the order they were asked for.

    Example::

        with instant_retries(client) as waits:
            await client.get_kms_info("phala")
        assert waits == [1.0]  # one retry after the server's Retry-After: 1
    """
    from ..sync import KMSClient

    target = client._loop.get()[1] if isinstance(client, KMSClient) else client
    retrier = target._retrier
    throttle = target._throttle
    waits: list[float] = []

    async def record(delay: float) -> None:
        waits.append(delay)

    original, was_instant = retrier.sleep, throttle.instant
    retrier.sleep = record
    throttle.instant = True
    try:
        yield waits
    finally:
        retrier.sleep = original
        throttle.instant = was_instant
