"""Client-wide rate-limit awareness: the ``Retry-After`` gate, adaptive pacing, a fixed cap.

Every request of one client passes :meth:`Throttle.pace` right before it is sent (once
it holds a connection slot), so the three parts below hold for the whole client, not
for one call:

* **The gate** (:class:`RetryAfterGate`). A 429, or a 503 with ``Retry-After``, closes
  it until that moment: no new request of the client is sent before then. (A
  ``Retry-After`` longer than ``RetryPolicy.max_retry_after`` does not close it: that
  error is raised at once, so the caller decides.)
* **Adaptive pacing** (:class:`AdaptiveRate`), client-side rate estimation in the
  spirit of the AWS SDKs' *adaptive* retry mode. Off until the server first throttles
  the client (a 429, or a 503 with ``Retry-After``). Then requests are paced by a token
  bucket whose fill rate follows what the server accepts:

  - At the first throttle, what got through before it (``n`` requests in ``t``
    seconds) tells the size of the server's burst, ``n - r * t`` for a server rate
    ``r`` not yet known. ``t`` is the shorter of two spans, of the send times and of
    the answer times: set-up of new connections skews the first, the client's own
    queue the second. The slow start (the probe) begins once the gate opens, with
    :data:`RESUME_BURST` of ``n`` at once (the server's bucket refilled during the
    gate), then at ``n`` per :data:`PROBE_START` seconds, doubling every
    :data:`PROBE_DOUBLING` seconds, until the server throttles again.
  - At every later throttle, the server's rate is estimated by fitting a token bucket
    of that burst to the send times since the gate last opened: the fill rate that
    refuses exactly the request that was refused
    (:func:`._bucket_fit.fit_server_rate`; a refusal of an earlier request that
    arrives later refines it), never below what the server has demonstrably accepted
    (:func:`._bucket_fit.accepted_rate_floor`, which guards a fit skewed by a starved
    client: 83 req/s against 400 was seen). The fill rate drops to :data:`FIT_MARGIN`
    of that estimate (of :data:`PROBE_FIT_MARGIN` of it, twice, after the probe, whose
    fast ramp makes the fit rougher) or, when no estimate fits, to :data:`BETA` (0.7)
    times the send rate; then it climbs back along a cubic curve (as in CUBIC and
    the AWS SDKs): fast at first, flat around the estimate, then probing above it,
    so a server that accepts more is found again. How slowly it climbs scales with
    the stall the throttle caused (:data:`RECOVERY`). A throttle of a request sent
    before the last decrease does not decrease again. When the gate opens,
    :data:`RESUME_BURST` of the estimated burst goes at once.
  - Once the rate is twice what the client actually sends and no throttle came for
    :data:`OFF_AFTER` seconds, pacing turns off.

  Two throttles are the least any client that starts without knowing the server's
  rate must take to learn it (the first tells that there is a limit, the second
  where it is), so against ``Retry-After: 1`` the first seconds cost two 1 s stalls
  (see the pressure section of ``benchmarks/README.md`` for what that costs).

* **A fixed cap** (``max_requests_per_second=``), for users who know their quota:
  an :class:`aiolimiter.AsyncLimiter` (a leaky bucket, at most
  :data:`FIXED_BURST_SECONDS` worth of requests at once, so the server's own burst is
  left as slack for jitter).

The decisions are pure (every method of :class:`RetryAfterGate` and
:class:`AdaptiveRate` takes ``now``), so they are tested as tables; :class:`Throttle`
is the one place that waits: requests that must wait queue in order and one event
loop timer releases them.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import attrs

from ._bucket_fit import accepted_rate_floor, fit_server_rate
from ._retry import is_throttle
from .errors import PoolTimeoutError

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

__all__ = [
    "BETA",
    "FIT_MARGIN",
    "MIN_RATE",
    "OFF_AFTER",
    "PROBE_DOUBLING",
    "PROBE_FIT_MARGIN",
    "PROBE_START",
    "RECOVERY",
    "RESUME_BURST",
    "AdaptiveRate",
    "RetryAfterGate",
    "Throttle",
]

logger = logging.getLogger("phala_kms")

MIN_RATE = 0.5
"""The lowest fill rate, in requests per second."""

BETA = 0.7
"""On a throttle without a fitted estimate, the fill rate drops to this share of the send rate."""

FIT_MARGIN = 0.95
"""On a throttle with a fitted estimate, the fill rate drops to this share of the estimate."""

PROBE_FIT_MARGIN = 0.98
"""On the throttle that ends the probe, the estimate is taken at this share and the fill
rate drops to this share of that (0.96 of the fit in all). The probe's ramp drains the
server's burst in a fraction of a second, so its fit is rougher than a paced one (it
erred by up to 2 % in the pressure benchmark); :data:`FIT_MARGIN` twice would leave
some 10 % of the server's rate unused while the rate climbs back."""

PROBE_DOUBLING = 0.15
"""While probing after the first throttle, the rate doubles every this many seconds."""

PROBE_START = 0.25
"""The probe starts at what got through before the first throttle per this many seconds."""

RESUME_BURST = 0.5
"""When a gate opens, this share of the server's estimated burst (what its bucket refilled
during the gate) goes at once, at most the (starting) rate times the gate's length."""

RECOVERY = 10.0
"""How slowly the rate climbs after a throttle, in multiples of the stall the throttle
caused (its ``Retry-After``): the cubic climb takes this many stalls to return from a
30 % cut (smaller cuts take less), and probing above the estimate drains a server's
burst after about as long again. So a probe that ends in a throttle costs about a tenth
of the time. Kept between :data:`MIN_RECOVERY` and :data:`MAX_RECOVERY` seconds."""

MIN_RECOVERY = 2.0
MAX_RECOVERY = 30.0

OFF_AFTER = 10.0
"""Seconds without a throttle before pacing may turn off (see :class:`AdaptiveRate`)."""

BURST_SECONDS = 0.02
"""Pacing lets at most this many seconds' worth of requests go at once (at least one)."""

FIXED_BURST_SECONDS = 0.02
"""``max_requests_per_second`` lets at most this many seconds' worth go at once (at least one)."""

FIT_WINDOW = 512
"""The fit looks at most at this many of the latest sends."""


@attrs.define
class RetryAfterGate:
    """The moment before which no new request of the client is sent.

    Attributes:
        until: A monotonic time in seconds; ``-inf`` while open.
    """

    until: float = -math.inf

    def hold(self, until: float) -> None:
        """Keep the gate closed until ``until`` at least (a later moment never shortens)."""
        if until > self.until:
            self.until = until

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until the gate opens (0.0 when open)."""
        return max(0.0, self.until - now)


Mode = Literal["off", "probe", "cubic"]


@attrs.define
class AdaptiveRate:
    """Client-side rate estimation: a token bucket whose fill rate follows the server.

    Every method takes ``now`` (monotonic seconds), so it never reads a clock itself.
    See the module docstring for the policy.

    Attributes:
        mode: ``"off"`` (no pacing), ``"probe"`` (the slow start after the first
            throttle) or ``"cubic"`` (climbing back after a later one).
        burst: The server's burst, as estimated from what got through before the first
            throttle and the fitted rate, or ``None`` before the first throttle.
        estimate: The last fitted server rate, in requests per second, or ``None``.
        throttles: Throttles that decreased the rate.
    """

    mode: Mode = "off"
    burst: float | None = None
    estimate: float | None = None
    throttles: int = 0
    _start_rate: float = 0.0
    _w_max: float = 0.0
    _k: float = 0.0
    _c: float = 0.0
    _episode: float = -math.inf  # when the gate last opened after a decrease
    _cut_at: float = -math.inf  # when the last decrease happened
    _sends: list[float] = attrs.field(factory=list)  # send times since _episode
    # the last fit's sends, episode start, refused send time and rate, for _refine
    _last_fit: tuple[list[float], float, float, float] | None = None
    # (send, answer) times of successes before the first throttle
    _oks: list[tuple[float, float]] = attrs.field(factory=list)
    _through: float = 0.0  # requests that got through before the first throttle...
    _through_span: float = 0.0  # ... in this many seconds
    _through_window: tuple[float, float] = (0.0, 0.0)  # ... sent in [start, end)
    _recovery: float = MIN_RECOVERY
    _tokens: float = 0.0
    _filled_at: float = -math.inf
    _first_sent: float = math.inf  # when the first request was sent
    _accepted: int = 0  # requests that succeeded

    def rate(self, now: float) -> float | None:
        """The fill rate at ``now`` in requests per second, or ``None`` when not pacing."""
        if self.mode == "off":
            return None
        elapsed = max(0.0, now - self._episode)
        if self.mode == "probe":
            start = max(self._through / PROBE_START, MIN_RATE)
            value: float = start * 2.0 ** min(elapsed / PROBE_DOUBLING, 60.0)
        else:
            value = self._w_max + self._c * (elapsed - self._k) ** 3
        return max(MIN_RATE, value)

    def send_rate(self, now: float, window: float = 1.0) -> float:
        """Requests sent per second over the last ``window`` seconds of this episode."""
        since = max(now - window, self._episode)
        span = now - since
        if span <= 0:
            return 0.0
        count = len(self._sends) - bisect.bisect_left(self._sends, since)
        return count / span

    def ready_in(self, now: float) -> float:
        """Seconds from ``now`` until the bucket holds a token (0.0: send now, or not pacing)."""
        rate = self.rate(now)
        if rate is None:
            return 0.0
        if (
            now - self._cut_at > OFF_AFTER
            and now - self._episode > 1.0
            and rate > 2.0 * self.send_rate(now) + 1.0
        ):
            self.mode = "off"  # the server has taken more than the client sends for a while
            logger.debug("adaptive pacing off: no throttle for %.0f s", now - self._cut_at)
            return 0.0
        if now < self._episode:
            return self._episode - now  # the gate after the decrease
        if now > self._filled_at:
            capacity = max(1.0, rate * BURST_SECONDS)
            # a resume burst above the capacity is spent before the bucket refills
            refilled = min(capacity, self._tokens + (now - self._filled_at) * rate)
            self._tokens = max(self._tokens, refilled)
            self._filled_at = now
        if self._tokens >= 1.0:
            return 0.0
        wait = (1.0 - self._tokens) / rate
        # While the slow start grows the rate, look again at least once per doubling.
        return min(wait, PROBE_DOUBLING) if self.mode == "probe" else wait

    def take(self, now: float) -> None:
        """Send a request at ``now``: spend a token (when pacing) and record the send."""
        if self.mode != "off":
            self._tokens -= 1.0
        self.on_sent(now)

    def on_sent(self, now: float) -> None:
        """Record that a request was sent at ``now``."""
        if now < self._first_sent:
            self._first_sent = now
        sends = self._sends
        sends.append(now)
        if len(sends) > 4 * FIT_WINDOW:
            del sends[: len(sends) - FIT_WINDOW]

    def on_success(self, sent_at: float, now: float | None = None) -> None:
        """A request sent at ``sent_at`` succeeded (answered at ``now``; default ``sent_at``).

        Until the first throttle is an episode old, a success of a request sent before
        it counts toward what got through before it (its answer may arrive after the
        throttle's).
        """
        self._accepted += 1
        if self.throttles == 0:
            oks = self._oks
            oks.append((sent_at, sent_at if now is None else now))
            if len(oks) > 4 * FIT_WINDOW:
                del oks[: len(oks) - FIT_WINDOW]
        elif self.throttles == 1 and self._through_window[0] <= sent_at <= self._through_window[1]:
            self._through += 1.0

    def on_throttle(self, now: float, sent_at: float, resume_at: float) -> bool:
        """A request sent at ``sent_at`` was throttled; lower the rate (at most once per episode).

        Args:
            now: When the throttle arrived.
            sent_at: When the throttled request was sent.
            resume_at: When sending may resume (the gate's end; ``now`` without one).

        Returns:
            Whether the rate was lowered (``False`` for a request sent before the last
            decrease: the server is still answering for the old rate).
        """
        if sent_at <= self._cut_at:
            self._refine(now, sent_at)
            return False
        self._recovery = min(MAX_RECOVERY, max(MIN_RECOVERY, RECOVERY * (resume_at - now)))
        sends = self._sends
        refused = bisect.bisect_left(sends, sent_at)
        current = self.rate(now)
        fitted = None if self.throttles == 0 else self._fit(sends, self._episode, refused, now)
        margin = PROBE_FIT_MARGIN if self.mode == "probe" else FIT_MARGIN
        if fitted is not None and self.mode == "probe":
            fitted *= margin
        if fitted is not None and current is not None:
            fitted = min(fitted, current)
        self._last_fit = None
        if fitted is not None:
            self._enter_cubic(fitted, margin * fitted)
            self._last_fit = (sends, self._episode, sent_at, fitted)
        elif self.throttles == 0:
            # The first throttle: what got through before it (sent in the second before
            # the refused request; later successes are counted as they arrive, by
            # on_success) tells the server's burst; probe from there.
            start = sent_at - 1.0
            first = bisect.bisect_left(sends, start)
            if first < len(sends):
                start = sends[first]
            oks = [ok for ok in self._oks if start <= ok[0] <= sent_at]
            self._through = float(len(oks))
            # The server saw them over a span the client can only estimate: its send
            # times are skewed by connection set-up, its answer times by its own
            # queue. A span too long makes the burst look smaller and the rate
            # higher, which costs a throttle: take the shorter of the two.
            answered = min((ok[1] for ok in oks), default=now)
            self._through_span = max(0.0, min(sent_at - start, now - answered))
            self._through_window = (start, sent_at)
            self._oks = []
            self.mode = "probe"
        else:
            top = current if current is not None else max(self.send_rate(now), MIN_RATE)
            self._enter_cubic(top, max(MIN_RATE, BETA * top))
        self.throttles += 1
        self._cut_at = now
        self._episode = max(now, resume_at)
        # The server's bucket refills while the gate is closed: spend part of it at once.
        burst = self._through if self.mode == "probe" else (self.burst or 1.0)
        start_rate = self.rate(self._episode) or MIN_RATE
        self._tokens = max(1.0, min(RESUME_BURST * burst, start_rate * (self._episode - now)))
        self._filled_at = self._episode
        self._sends = []
        logger.debug(
            "throttled: pacing %s from %.1f req/s (server estimate %s)",
            self.mode,
            self.rate(self._episode) or 0.0,
            "unknown" if self.estimate is None else f"{self.estimate:.1f} req/s",
        )
        return True

    def _refine(self, now: float, sent_at: float) -> None:
        """A throttle for a request sent before the one the last fit used, answered
        before the lowered rate took effect: refit with it (answers on many
        connections arrive out of order, so the first refusal to arrive need not be
        the first one the server made)."""
        last = self._last_fit
        if last is None or now >= self._episode:
            return
        sends, episode, refused_at, fitted = last
        if not episode <= sent_at < refused_at:
            return
        refit = self._fit(sends, episode, bisect.bisect_left(sends, sent_at), now)
        if refit is None:
            return
        margin = FIT_MARGIN
        if self.throttles == 2:  # the fit of the slow start: discounted as in on_throttle
            margin = PROBE_FIT_MARGIN
            refit *= margin
        refit = min(refit, fitted)
        self._enter_cubic(refit, margin * refit)
        self._last_fit = (sends, episode, sent_at, refit)

    def _fit(self, sends: list[float], episode: float, refused: int, now: float) -> float | None:
        first = max(0, refused - FIT_WINDOW)
        start = episode if first == 0 else sends[first - 1]
        span = self._through_span
        fitted = fit_server_rate(
            sends[first : refused + 1],
            refused - first,
            start=start,
            burst=max(1.0, self._through),
            slope=span,
        )
        if fitted is None and span > 0:  # no bucket that small explains it: the largest
            span = 0.0
            fitted = fit_server_rate(
                sends[first : refused + 1], refused - first, start=start, burst=self._through
            )
        if fitted is not None:
            floor = accepted_rate_floor(self._accepted, self._through, now - self._first_sent)
            self.estimate = max(fitted, floor, MIN_RATE)
            self.burst = max(1.0, self._through - span * self.estimate)
            return self.estimate
        return None

    def _enter_cubic(self, w_max: float, start_rate: float) -> None:
        self.mode = "cubic"
        self._w_max = w_max
        self._start_rate = start_rate
        self._c = 0.3 * w_max / self._recovery**3
        self._k = ((w_max - start_rate) / self._c) ** (1.0 / 3.0) if w_max > start_rate else 0.0


class Throttle:
    """The client-wide gate, adaptive pacing and optional fixed cap, in one wait.

    Requests that must wait queue in order; one timer releases them as the gate and
    the pacing allow, so a thousand waiting requests cost one wake-up per send.

    Args:
        max_requests_per_second: A fixed cap on the send rate, or ``None``.
        clock: Monotonic seconds, on the same scale as the event loop's clock
            (``time.monotonic``).

    Attributes:
        gate: The ``Retry-After`` gate.
        adaptive: The adaptive pacing.
        instant: Skip the gate and the adaptive pacing (set by
            :func:`phala_kms.testing.instant_retries`); the fixed cap still holds.
    """

    def __init__(
        self,
        *,
        max_requests_per_second: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gate = RetryAfterGate()
        self.adaptive = AdaptiveRate()
        self.clock = clock
        self.instant = False
        self._max_rate = max_requests_per_second
        self._limiter: AsyncLimiter | None = None
        self._waiters: deque[tuple[asyncio.Future[float], float | None]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def _fixed_cap(self) -> AsyncLimiter | None:
        if self._max_rate is None:
            return None
        if self._limiter is None:
            from aiolimiter import AsyncLimiter

            burst = max(1.0, self._max_rate * FIXED_BURST_SECONDS)
            self._limiter = AsyncLimiter(burst, burst / self._max_rate)
        return self._limiter

    def _wait_needed(self, now: float) -> float:
        return max(self.gate.wait(now), self.adaptive.ready_in(now))

    async def pace(self, deadline: float | None = None) -> float:
        """Wait until a request may be sent; record it as sent and return the send time.

        Args:
            deadline: A time on :attr:`clock` the wait may not pass, or ``None``.

        Raises:
            PoolTimeoutError: The wait would pass ``deadline``; nothing is sent.
        """
        limiter = self._fixed_cap()
        if limiter is not None:
            await _acquire_fixed(limiter, deadline, self.clock)
        now = self.clock()
        if self.instant or (not self._waiters and self._wait_needed(now) <= 0.0):
            self.adaptive.take(now)
            return now
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.append((future, deadline))
        if self._timer is None:
            self._release()
        return await future

    def _release(self) -> None:
        """Let the waiters at the head of the queue go while the gate and pacing allow."""
        self._timer = None
        waiters = self._waiters
        while waiters:
            future, _ = waiters[0]
            if future.done():  # cancelled while waiting
                waiters.popleft()
                continue
            now = self.clock()
            wait = self._wait_needed(now)
            if wait > 0.0:
                self._expire(now + wait)
                if waiters:
                    loop = asyncio.get_running_loop()
                    self._timer = loop.call_at(loop.time() + wait, self._release)
                return
            waiters.popleft()
            self.adaptive.take(now)
            future.set_result(now)

    def _expire(self, earliest: float) -> None:
        """Fail the waiters whose deadline comes before ``earliest``, the next release."""
        kept: deque[tuple[asyncio.Future[float], float | None]] = deque()
        for future, deadline in self._waiters:
            if future.done():
                continue
            if deadline is not None and deadline < earliest:
                why = "the server's Retry-After" if self.gate.until >= earliest else "its turn"
                future.set_exception(
                    PoolTimeoutError(
                        f"the call's deadline would pass while waiting for {why}"
                        " (the client is rate limited); nothing was sent",
                        method="GET",
                    )
                )
                continue
            kept.append((future, deadline))
        self._waiters = kept

    def on_success(self, sent_at: float) -> None:
        """Take in a success for a request sent at ``sent_at``, answered now."""
        self.adaptive.on_success(sent_at, self.clock())

    def on_refused(
        self, sent_at: float, status: int, retry_after: float | None, max_retry_after: float
    ) -> None:
        """Take in an error status for a request sent at ``sent_at``.

        A throttle (:func:`._retry.is_throttle`) lowers the adaptive rate; its ``Retry-After``,
        when no longer than ``max_retry_after``, closes the gate until then.
        """
        if not is_throttle(status, retry_after):
            return
        now = self.clock()
        if retry_after is not None and retry_after <= max_retry_after:
            self.gate.hold(now + retry_after)
        self.adaptive.on_throttle(now, sent_at, max(now, self.gate.until))


async def _acquire_fixed(
    limiter: AsyncLimiter, deadline: float | None, clock: Callable[[], float]
) -> None:
    if deadline is None:
        await limiter.acquire()
        return
    try:
        await asyncio.wait_for(limiter.acquire(), max(0.0, deadline - clock()))
    except asyncio.TimeoutError:
        raise PoolTimeoutError(
            "the call's deadline passed while waiting for max_requests_per_second;"
            " nothing was sent",
            method="GET",
        ) from None
