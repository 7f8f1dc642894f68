"""A server's token bucket, estimated from which of the client's requests it refused.

Pure arithmetic on send times (no clock, no I/O), used by the adaptive pacing of
:mod:`._throttle` to find a server's rate limit from its throttles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["FLOOR_SPAN", "accepted_rate_floor", "first_refused", "fit_server_rate"]

FLOOR_SPAN = 1.0
"""Seconds of history :func:`accepted_rate_floor` needs before it bounds anything."""


def accepted_rate_floor(accepted: int, burst: float, span: float) -> float:
    """The least fill rate at which a token bucket of at most ``burst`` tokens (full at
    the start) could have accepted ``accepted`` requests in ``span`` seconds: it accepts
    at most ``burst + rate * span``, so ``rate >= (accepted - burst) / span``.

    Returns:
        Requests per second; ``0.0`` over less than :data:`FLOOR_SPAN` seconds (the
        burst dominates) or when ``accepted`` is within the burst.
    """
    if not span >= FLOOR_SPAN:
        return 0.0
    return max(0.0, (accepted - max(1.0, burst)) / span)


def first_refused(
    sends: Sequence[float], start: float, burst: float, rate: float, slope: float = 0.0
) -> int:
    """The index of the first send a token bucket (``burst - slope * rate`` tokens, at
    least 1, full at ``start``, refilled at ``rate`` per second) refuses; ``len(sends)``
    when none is."""
    burst = max(1.0, burst - slope * rate)
    level = burst
    last = start
    for index, sent in enumerate(sends):
        if sent > last:
            level = min(burst, level + rate * (sent - last))
            last = sent
        if level < 1.0:
            return index
        level -= 1.0
    return len(sends)


def fit_server_rate(
    sends: Sequence[float], refused: int, *, start: float, burst: float, slope: float = 0.0
) -> float | None:
    """Estimate a server's rate limit from which request it refused.

    The server is taken to be a token bucket, full at ``start``, refilled at an
    unknown rate ``r``, holding ``burst - slope * r`` tokens (at least 1);
    ``sends[refused]`` is the first request it refused, every earlier one went
    through. The answer is the middle of the range of rates that refuse exactly that
    request.

    The size may depend on the rate because it is measured as what got through before
    the client's first throttle, ``n`` requests in ``t`` seconds: a bucket of ``b``
    tokens refilled at ``r`` lets ``b + r * t`` through, so ``b = n - r * t``
    (``burst=n, slope=t``).

    Args:
        sends: Send times in seconds, oldest first.
        refused: The index in ``sends`` of the first refused request.
        start: When the bucket was full (the gate last opened).
        burst: The bucket's size in requests (at ``r = 0``).
        slope: How much smaller the bucket is per request per second of ``r``.

    Returns:
        The rate in requests per second, or ``None`` when no token bucket of that size
        explains what happened (the bucket was not full at ``start``, or nothing was
        refused).
    """
    if not 0 <= refused < len(sends) or burst < 1.0:
        return None
    sends = sends[: refused + 1]
    span = sends[-1] - start
    if span <= 0 or first_refused(sends, start, burst, 0.0, slope) > refused:
        return None  # even with no refill the bucket outlasts the refused request
    # The lowest rate, on a grid 25 % apart, at which the refused request would have
    # gone through. Climb in small steps: with a slope a faster refill means a smaller
    # bucket, so past some rate a burst is refused again; and past ``limit`` the bucket
    # would hold less than one request.
    limit = (burst - 1.0) / slope if slope > 0 else 1e9
    high = min(max(1.0, (refused + 1) / span) / 8.0, limit)
    while first_refused(sends, start, burst, high, slope) <= refused:
        if high >= limit:
            return None
        high = min(high * 1.25, limit)

    def boundary(refuses_by: Callable[[int], bool]) -> float:
        # the smallest rate at which refuses_by(first refused index) turns False
        lo, hi = 0.0, high
        for _ in range(30):
            mid = (lo + hi) / 2
            if refuses_by(first_refused(sends, start, burst, mid, slope)):
                lo = mid
            else:
                hi = mid
        return hi

    lowest = boundary(lambda first: first < refused)  # everything before went through
    highest = boundary(lambda first: first <= refused)  # and the refused one was refused
    return (lowest + highest) / 2
