"""Rate-limit awareness, client-wide: the ``Retry-After`` gate, adaptive pacing, a fixed cap.

* The pure parts of :mod:`phala_kms._throttle` (and the helpers it uses) as tables: the
  gate, what counts as a throttle, the token-bucket fit, the adaptive rate's modes.
* On both clients against the fake: a 429 holds back the client's *other* requests
  until its ``Retry-After``; a ``Retry-After`` beyond ``max_retry_after`` does not;
  ``instant_retries`` skips the gate; a fan-out against a token-bucket rate limit
  completes with few 429s; ``max_requests_per_second`` caps the send rate.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from phala_kms import (
    AsyncKMSClient,
    ConfigurationError,
    KMSClient,
    PhalaKMSError,
    RateLimitError,
    RetryPolicy,
)
from phala_kms import _throttle as throttle_module
from phala_kms._bucket_fit import FLOOR_SPAN, accepted_rate_floor, fit_server_rate
from phala_kms._retry import is_throttle
from phala_kms._throttle import (
    MIN_RATE,
    PROBE_DOUBLING,
    PROBE_START,
    AdaptiveRate,
    RetryAfterGate,
    Throttle,
)
from phala_kms.testing import FakeKMSServer, RateLimit, StatusFault, instant_retries
from tests.helpers import MakeClient

NO_RETRY = RetryPolicy(max_retries=0)


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("holds", "now", "wait"),
    [
        ((), 5.0, 0.0),  # never closed
        ((10.0,), 5.0, 5.0),
        ((10.0,), 10.0, 0.0),
        ((10.0,), 12.0, 0.0),
        ((10.0, 7.0), 5.0, 5.0),  # an earlier moment never shortens it
        ((7.0, 10.0), 5.0, 5.0),  # a later one extends it
    ],
)
def test_the_gate(holds: tuple[float, ...], now: float, wait: float) -> None:
    gate = RetryAfterGate()
    for until in holds:
        gate.hold(until)
    assert gate.wait(now) == wait


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, None, True),
        (429, 1.0, True),
        (503, 2.0, True),  # an overloaded server saying when to come back
        (503, None, False),  # an outage: the retry budget's business
        (500, 1.0, False),
        (404, 1.0, False),
    ],
)
def test_what_counts_as_a_throttle(status: int, retry_after: float | None, expected: bool) -> None:
    assert is_throttle(status, retry_after) is expected


def bucket_refusal(sends: list[float], rate: float, burst: float, start: float = 0.0) -> int:
    """The index of the first send a real token bucket refuses."""
    level, last = burst, start
    for index, sent in enumerate(sends):
        level = min(burst, level + rate * (sent - last))
        last = sent
        if level < 1:
            return index
        level -= 1
    raise AssertionError("nothing refused")


@pytest.mark.parametrize(
    ("send_rate", "rate", "burst"),
    [(600.0, 300.0, 30.0), (400.0, 300.0, 30.0), (80.0, 50.0, 5.0), (5000.0, 1000.0, 100.0)],
)
def test_the_fit_finds_a_token_buckets_rate(send_rate: float, rate: float, burst: float) -> None:
    sends = [i / send_rate for i in range(10_000)]
    refused = bucket_refusal(sends, rate, burst)
    fitted = fit_server_rate(sends, refused, start=0.0, burst=burst)
    assert fitted == pytest.approx(rate, rel=0.05)


def test_the_fit_takes_the_burst_as_measured_with_its_refill() -> None:
    # 40 got through in 0.05 s before the first throttle: at 300 req/s, a burst of 25
    sends = [i / 500 for i in range(5_000)]
    refused = bucket_refusal(sends, 300.0, 25.0)
    fitted = fit_server_rate(sends, refused, start=0.0, burst=40.0, slope=0.05)
    assert fitted == pytest.approx(300.0, rel=0.05)


def test_the_fit_with_a_measured_burst_explains_a_burst_then_a_ramp() -> None:
    # After a gate: 15 at once, then faster and faster. At high rates the measured
    # burst (40 - 0.05 r) is too small for those 15, so the fit must not look there.
    ramp = [0.15 * math.log2(1 + i * math.log(2) / 18) for i in range(1, 400)]  # 120/s, x2
    sends = [0.0] * 15 + ramp
    refused = bucket_refusal(sends, 300.0, 25.0)
    fitted = fit_server_rate(sends, refused, start=0.0, burst=40.0, slope=0.05)
    assert fitted == pytest.approx(300.0, rel=0.05)


@pytest.mark.parametrize(
    ("sends", "refused", "burst"),
    [
        ([0.0, 0.1, 0.2], 1, 30.0),  # the bucket outlasts the refusal: not full at start
        ([0.0, 0.1], 5, 1.0),  # nothing refused
        ([0.0, 0.1], 1, 0.5),  # no bucket holds less than one request
    ],
)
def test_the_fit_gives_up_when_no_token_bucket_explains_it(
    sends: list[float], refused: int, burst: float
) -> None:
    assert fit_server_rate(sends, refused, start=0.0, burst=burst) is None


@pytest.mark.parametrize(
    ("accepted", "burst", "span", "floor"),
    [
        (630, 30.0, 3.0, 200.0),  # 600 beyond the burst in 3 s: at least 200/s
        (630, 30.0, FLOOR_SPAN / 2, 0.0),  # too short a history: the burst dominates
        (20, 30.0, 3.0, 0.0),  # all within the burst: no bound
        (5, 0.0, 2.0, 2.0),  # a bucket holds at least one request
    ],
)
def test_what_the_server_accepted_bounds_its_rate_from_below(
    accepted: int, burst: float, span: float, floor: float
) -> None:
    assert accepted_rate_floor(accepted, burst, span) == pytest.approx(floor)


def test_a_fit_below_what_the_server_accepted_is_raised_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a starved client's send times can fit a rate far below the server's (83 req/s
    # against 400 was seen); what the server accepted since the first request says
    # it is at least (accepted - burst) / time
    rate = AdaptiveRate()
    drive(rate, [0.0] * 30)  # 30 got through before the first throttle
    rate.take(0.0)
    rate.on_throttle(0.01, 0.0, resume_at=1.0)
    drive(rate, [1.0 + i / 300 for i in range(600)])  # then 300/s for 2 s
    monkeypatch.setattr(throttle_module, "fit_server_rate", lambda *_a, **_k: 10.0)
    rate.take(3.0)
    assert rate.on_throttle(3.01, 3.0, resume_at=4.0)
    assert rate.estimate == pytest.approx((630 - 30) / 3.01)


def drive(rate: AdaptiveRate, times: list[float]) -> None:
    for t in times:
        rate.take(t)
        rate.on_success(t)


def test_adaptive_rate_is_off_until_the_first_throttle() -> None:
    rate = AdaptiveRate()
    drive(rate, [i / 1000 for i in range(100)])
    assert rate.mode == "off"
    assert rate.rate(1.0) is None
    assert rate.ready_in(1.0) == 0.0


def test_the_first_throttle_starts_a_slow_start_from_what_got_through() -> None:
    rate = AdaptiveRate()
    drive(rate, [0.0] * 30)  # 30 got through at once
    rate.take(0.0)  # the 31st is refused
    assert rate.on_throttle(0.01, 0.0, resume_at=1.01)
    assert rate.mode == "probe"
    assert rate.rate(1.01) == pytest.approx(30.0 / PROBE_START)  # one burst per PROBE_START
    assert rate.rate(1.01 + 2 * PROBE_DOUBLING) == pytest.approx(4 * 30.0 / PROBE_START)
    assert rate.ready_in(0.5) == pytest.approx(1.01 - 0.5)  # nothing before the episode
    for _ in range(15):  # then half the burst the server refilled during the gate at once
        assert rate.ready_in(1.01) == 0.0
        rate.take(1.01)
    # the next waits, looked at again within a doubling
    assert 0.0 < rate.ready_in(1.01) <= PROBE_DOUBLING


def test_a_throttle_of_a_request_sent_before_the_decrease_does_not_decrease_again() -> None:
    rate = AdaptiveRate()
    drive(rate, [0.0] * 30)
    rate.take(0.0)
    assert rate.on_throttle(0.01, 0.0, resume_at=1.01)
    assert not rate.on_throttle(0.02, 0.005, resume_at=1.02)  # sent before the cut
    assert rate.throttles == 1


def test_a_later_throttle_fits_the_servers_rate_and_paces_below_it() -> None:
    server_rate, burst = 300.0, 30.0
    rate = AdaptiveRate()
    drive(rate, [0.0] * 30)
    rate.take(0.0)
    rate.on_throttle(0.01, 0.0, resume_at=1.0)
    # follow the slow start until a token bucket of 300/s refuses, as the server would
    now, level, last = 1.0, burst, 1.0
    while True:
        now += rate.ready_in(now) or 1e-4
        if rate.ready_in(now) > 0:
            continue
        level = min(burst, level + server_rate * (now - last))
        last = now
        rate.take(now)
        if level < 1:
            break
        level -= 1
        rate.on_success(now)
    assert rate.on_throttle(now + 0.002, now, resume_at=now + 1.0)
    assert rate.mode == "cubic"
    assert rate.estimate == pytest.approx(server_rate, rel=0.05)
    assert rate.burst == pytest.approx(burst, abs=2)
    paced = rate.rate(now + 1.0)
    assert paced is not None and paced < server_rate  # below the server's rate ...
    later = rate.rate(now + 60.0)
    assert later is not None and later > paced  # ... then climbing back


def follow_the_probe(rate: AdaptiveRate, start: float, server_rate: float, burst: float) -> float:
    """Send as the probe allows against a token bucket, full at ``start``, until it
    refuses; returns when the refused request was sent."""
    now, level, last = start, burst, start
    while True:
        now += rate.ready_in(now) or 1e-4
        if rate.ready_in(now) > 0:
            continue
        level = min(burst, level + server_rate * (now - last))
        last = now
        rate.take(now)
        if level < 1:
            return now
        level -= 1
        rate.on_success(now, now + 0.001)


def test_a_first_burst_skewed_by_connection_set_up_does_not_inflate_the_estimate() -> None:
    # The client took 30 ms to send its first 31 requests (connections opening), but
    # they reached the server at once: 30 went through, answered within 2 ms. Fitting
    # the 30 ms as refill time would take the burst for 21 and the rate for far more.
    rate = AdaptiveRate()
    for i in range(30):
        rate.take(i / 1000)
    for i in range(30):
        rate.on_success(i / 1000, 0.031 + i / 30_000)
    rate.take(0.030)
    assert rate.on_throttle(0.032, 0.030, resume_at=1.032)
    refused_at = follow_the_probe(rate, 1.032, 300.0, 30.0)
    assert rate.on_throttle(refused_at + 0.001, refused_at, resume_at=refused_at + 1.0)
    assert rate.estimate == pytest.approx(300.0, rel=0.03)
    assert rate.burst == pytest.approx(30.0, abs=2)


def test_without_a_fit_the_rate_drops_to_beta_times_the_send_rate() -> None:
    rate = AdaptiveRate()
    drive(rate, [0.0] * 10)
    rate.take(0.0)
    rate.on_throttle(0.01, 0.0, resume_at=0.01)
    drive(rate, [0.02])  # one send, then a refusal no bucket of 10 explains
    rate.take(0.03)
    assert rate.on_throttle(0.04, 0.03, resume_at=0.04)
    assert rate.mode == "cubic"
    assert rate.estimate is None
    start = rate.rate(0.04)
    assert start is not None and start >= MIN_RATE


def test_pacing_turns_off_once_the_server_takes_more_than_the_client_sends() -> None:
    rate = AdaptiveRate()
    drive(rate, [0.0] * 10)
    rate.take(0.0)
    rate.on_throttle(0.01, 0.0, resume_at=0.01)
    assert rate.mode == "probe"
    rate.take(20.0)  # one request in 20 s, while the slow start has grown far past it
    assert rate.ready_in(20.5) == 0.0
    assert rate.rate(21.0) is None  # off


async def test_waiters_queue_in_order_and_are_released_at_the_gate() -> None:
    throttle = Throttle()
    throttle.gate.hold(time.monotonic() + 0.1)
    started = time.monotonic()
    order: list[int] = []

    async def send(n: int) -> None:
        await throttle.pace()
        order.append(n)

    await asyncio.gather(*(send(n) for n in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert time.monotonic() - started >= 0.09


async def test_a_deadline_shorter_than_the_gate_gives_up_at_once() -> None:
    from phala_kms import PoolTimeoutError

    throttle = Throttle()
    throttle.gate.hold(time.monotonic() + 5.0)
    started = time.monotonic()
    with pytest.raises(PoolTimeoutError, match="Retry-After"):
        await throttle.pace(deadline=time.monotonic() + 0.05)
    assert time.monotonic() - started < 1.0


# --------------------------------------------------------------------------- the gate


def arrivals(server: FakeKMSServer, route: str) -> list[float]:
    return [r.timestamp for r in server.requests if r.route == route]


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_429_holds_back_the_clients_other_requests(kind: str, server: FakeKMSServer) -> None:
    server.inject("kms_info", StatusFault(429, error_code="ERR-05-002", retry_after=0.3))
    if kind == "async":

        async def go() -> float:
            async with AsyncKMSClient(server.api_key, server.base_url, retry_policy=NO_RETRY) as c:
                with pytest.raises(RateLimitError):
                    await c.get_kms_info("phala")
                refused = time.monotonic()
                await c.get_kms_list()  # another call: held until the Retry-After
                return time.monotonic() - refused

        held = asyncio.run(go())
    else:
        with KMSClient(server.api_key, server.base_url, retry_policy=NO_RETRY) as c:
            with pytest.raises(RateLimitError):
                c.get_kms_info("phala")
            refused = time.monotonic()
            c.get_kms_list()
            held = time.monotonic() - refused
    assert held >= 0.25
    (info,) = arrivals(server, "kms_info")
    (listing,) = arrivals(server, "kms_list")
    assert listing - info >= 0.25  # the server saw nothing else before the Retry-After


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_the_gate_holds_concurrent_calls_of_a_fan_out(kind: str, server: FakeKMSServer) -> None:
    """One 429 with Retry-After 0.3 s on the third id: the fan-out's other requests wait
    too, so none arrives during the 0.3 s after it."""
    ids = [f"{i:040x}" for i in range(1, 13)]
    server.inject(f"/kms/phala/pubkey/{ids[2]}", StatusFault(429, retry_after=0.3))
    if kind == "async":

        async def go() -> list[Any]:
            async with AsyncKMSClient(server.api_key, server.base_url) as client:
                return await client.get_app_env_encrypt_pubkeys("phala", ids, concurrency=2)

        keys = asyncio.run(go())
    else:
        with KMSClient(server.api_key, server.base_url) as client:
            keys = client.get_app_env_encrypt_pubkeys("phala", ids, concurrency=2)
    assert len(keys) == len(ids)
    log = [r for r in server.requests if r.route == "app_pubkey"]
    refused_at = next(r.timestamp for r in log if r.path.endswith(ids[2]))
    after = sorted(r.timestamp - refused_at for r in log if r.timestamp > refused_at)
    # at most the other worker's request, already in flight, comes before the Retry-After
    in_flight = [t for t in after if t < 0.05]
    assert len(in_flight) <= 1
    assert all(t >= 0.25 for t in after[len(in_flight) :]), after


def test_a_retry_after_beyond_max_retry_after_does_not_close_the_gate(
    make_client: MakeClient, server: FakeKMSServer
) -> None:
    server.inject("kms_info", StatusFault(429, retry_after=30))
    policy = RetryPolicy(max_retries=3, max_retry_after=1.0)
    driver = make_client(retry_policy=policy, instant_retries=False)

    def both(client: Any) -> Any:
        if isinstance(client, AsyncKMSClient):

            async def go() -> float:
                with pytest.raises(RateLimitError) as caught:
                    await client.get_kms_info("phala")
                assert caught.value.retry_after == 30
                started = time.monotonic()
                await client.get_kms_list()
                return time.monotonic() - started

            return go()
        with pytest.raises(RateLimitError):
            client.get_kms_info("phala")
        started = time.monotonic()
        client.get_kms_list()
        return time.monotonic() - started

    assert driver.run(both) < 1.0  # raised at once; the caller decides
    assert server.route_counts == {"kms_info": 1, "kms_list": 1}


def test_instant_retries_skips_the_gate(make_client: MakeClient, server: FakeKMSServer) -> None:
    server.inject("kms_info", StatusFault(429, retry_after=20))
    kms = make_client()  # instant_retries
    started = time.monotonic()
    assert kms.get_kms_info("phala").slug == "phala"
    assert kms.waits == [20.0]
    assert time.monotonic() - started < 5.0


# --------------------------------------------------------------------------- adaptive pacing


@pytest.mark.timeout(30)
def test_a_fan_out_against_a_token_bucket_finishes_with_few_429s(
    make_client: MakeClient, server: FakeKMSServer
) -> None:
    ids = [f"{i:040x}" for i in range(1, 401)]
    server.rate_limit = RateLimit(rate=400, burst=20, retry_after=0.1)
    kms = make_client(instant_retries=False)
    results = kms.get_app_env_encrypt_pubkeys("phala", ids, concurrency=16, return_exceptions=True)
    assert not [r for r in results if isinstance(r, PhalaKMSError)]
    assert server.route_counts["app_pubkey"] == len(ids) + server.rate_limited_count
    assert server.rate_limited_count <= 0.1 * len(ids)


async def test_the_client_estimates_the_servers_rate() -> None:
    # The fake runs on this test's loop, not in a thread: a fake in a thread of the
    # client's process shares its GIL, so the two take turns and the refusals land at
    # times no remote server would produce (the estimate then misses, or is None).
    # 200 req/s leaves the client headroom on a busy machine: at 400 req/s, with both
    # cores taken by other work, a starved client fitted 83 req/s in 2 runs of 8.
    ids = [f"{i:040x}" for i in range(1, 401)]
    async with FakeKMSServer(host="127.0.0.1", port=0) as server:
        server.rate_limit = RateLimit(rate=200, burst=20, retry_after=0.1)
        async with AsyncKMSClient(server.api_key, server.base_url) as client:
            await client.get_app_env_encrypt_pubkeys("phala", ids, concurrency=16)
            adaptive = client._throttle.adaptive
    assert adaptive.mode != "off"
    assert adaptive.throttles >= 2
    assert adaptive.estimate is not None and 150 <= adaptive.estimate <= 250


# --------------------------------------------------------------------------- the fixed cap


def test_max_requests_per_second_caps_the_send_rate(
    make_client: MakeClient, server: FakeKMSServer
) -> None:
    kms = make_client(max_requests_per_second=50)  # one at a time, 50/s
    started = time.monotonic()
    kms.get_app_env_encrypt_pubkeys("phala", [f"{i:040x}" for i in range(1, 21)], concurrency=8)
    elapsed = time.monotonic() - started
    times = arrivals(server, "app_pubkey")
    assert len(times) == 20
    assert elapsed >= 0.3 and max(times) - min(times) >= 0.3  # 19 intervals of 20 ms


@pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, True, "10"])
@pytest.mark.parametrize("cls", [AsyncKMSClient, KMSClient])
def test_max_requests_per_second_is_validated(cls: Any, value: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        cls("k", "http://127.0.0.1:1/api/v1", max_requests_per_second=value)
    assert caught.value.setting == "max_requests_per_second"


def test_max_requests_per_second_is_in_the_config() -> None:
    client = AsyncKMSClient("k", "http://127.0.0.1:1/api/v1", max_requests_per_second=7)
    assert client.config.max_requests_per_second == 7.0
    assert AsyncKMSClient("k", "http://127.0.0.1:1/api/v1").config.max_requests_per_second is None


def test_instant_retries_restores_the_throttle(server: FakeKMSServer) -> None:
    with KMSClient(server.api_key, server.base_url) as client:
        throttle = client._loop.get()[1]._throttle
        with instant_retries(client):
            assert throttle.instant
        assert not throttle.instant
