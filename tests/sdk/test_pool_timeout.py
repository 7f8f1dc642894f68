"""Waiting for a connection is not a request timeout.

* :class:`~phala_kms._pool.PoolSlots`: order, timeouts that neither lose nor leak a
  slot, cancellation after a hand-over.
* Both clients: calls queued behind a full pool are not timed out while they wait
  (``pool_timeout=None``); ``pool_timeout`` raises :class:`PoolTimeoutError`, which is
  not retried; a ``RetryPolicy.deadline`` bounds the wait; a caller session's
  connector limit sizes the slots.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import aiohttp
import pytest

from phala_kms import (
    APITimeoutError,
    AsyncKMSClient,
    ConfigurationError,
    KMSClient,
    PoolTimeoutError,
    RetryPolicy,
    TransportError,
)
from phala_kms._pool import PoolSlots
from phala_kms.testing import FakeKMSServer, LatencyFault

IDS = [f"{i:040x}" for i in range(1, 7)]


# --------------------------------------------------------------------------- slots


async def test_slots_are_handed_over_in_order() -> None:
    slots = PoolSlots(1)
    await slots.acquire(None)
    order: list[int] = []

    async def take(n: int) -> None:
        await slots.acquire(None)
        order.append(n)
        slots.release()

    tasks = [asyncio.ensure_future(take(n)) for n in range(4)]
    await asyncio.sleep(0)
    assert slots.waiting == 4
    slots.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]
    assert slots.in_use == 0


async def test_a_timed_out_wait_holds_no_slot() -> None:
    slots = PoolSlots(1)
    await slots.acquire(None)
    with pytest.raises(asyncio.TimeoutError):
        await slots.acquire(0.01)
    with pytest.raises(asyncio.TimeoutError):
        await slots.acquire(0)
    slots.release()
    assert slots.in_use == 0
    await asyncio.wait_for(slots.acquire(None), 1)  # the slot was not lost
    assert slots.in_use == 1


async def test_a_waiter_cancelled_after_the_hand_over_passes_the_slot_on() -> None:
    slots = PoolSlots(1)
    await slots.acquire(None)
    first = asyncio.ensure_future(slots.acquire(None))
    second = asyncio.ensure_future(slots.acquire(None))
    await asyncio.sleep(0)
    slots.release()  # handed to `first` ...
    first.cancel()  # ... which is cancelled before it runs on
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)  # so `second` gets it
    assert slots.in_use == 1


# --------------------------------------------------------------------------- both clients


def gather_calls(kind: str, server: FakeKMSServer, **settings: Any) -> list[Any]:
    """Six concurrent pubkey calls on one client; results or errors, in order."""
    if kind == "async":

        async def go() -> list[Any]:
            async with AsyncKMSClient(server.api_key, server.base_url, **settings) as client:
                calls = (client.get_app_env_encrypt_pubkey("phala", app) for app in IDS)
                return list(await asyncio.gather(*calls, return_exceptions=True))

        return asyncio.run(go())
    results: list[Any] = [None] * len(IDS)
    with KMSClient(server.api_key, server.base_url, **settings) as client:

        def call(index: int) -> None:
            try:
                results[index] = client.get_app_env_encrypt_pubkey("phala", IDS[index])
            except Exception as exc:
                results[index] = exc

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(IDS))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return results


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_calls_queued_for_a_connection_are_not_timed_out(kind: str, server: FakeKMSServer) -> None:
    """Pool of 2, six 0.25 s calls, timeout 0.5 s: the last ones wait 0.5 s for a
    connection, which aiohttp's own total timeout would have counted."""
    server.inject("app_pubkey", LatencyFault(0.25), times=None)
    started = time.monotonic()
    results = gather_calls(kind, server, max_connections=2, timeout=0.5, max_retries=0)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert server.route_counts == {"app_pubkey": len(IDS)}
    assert server.peak_in_flight <= 2
    assert time.monotonic() - started >= 0.7  # three rounds of two


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_pool_timeout_raises_and_is_not_retried(kind: str, server: FakeKMSServer) -> None:
    server.inject("app_pubkey", LatencyFault(0.4), times=None)
    results = gather_calls(kind, server, max_connections=2, max_retries=3, pool_timeout=0.1)
    waited = [r for r in results if isinstance(r, PoolTimeoutError)]
    assert len(waited) == len(IDS) - 2
    assert server.route_counts == {"app_pubkey": 2}  # only the two that had a connection
    for err in waited:
        assert isinstance(err, TransportError) and isinstance(err, TimeoutError)
        assert not isinstance(err, APITimeoutError)
        assert err.pool_timeout == 0.1 and err.attempts == 1
        assert "pool_timeout=0.1 s" in str(err) and "was not sent" in str(err)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_the_deadline_bounds_the_wait_for_a_connection(kind: str, server: FakeKMSServer) -> None:
    server.inject("app_pubkey", LatencyFault(0.5), times=None)
    policy = RetryPolicy(deadline=0.15)
    started = time.monotonic()
    results = gather_calls(kind, server, max_connections=1, retry_policy=policy, timeout=5)
    assert time.monotonic() - started < 1.0
    waited = [r for r in results if isinstance(r, PoolTimeoutError)]
    assert all(err.pool_timeout is None and "deadline" in str(err) for err in waited)
    # The one sent first had the deadline (not timeout=5) as its limit. A call whose
    # deadline is a hair later may get the freed connection with what little is left
    # (how many do varies), but only one call was ever sent with real time to run.
    timed_out = [r for r in results if isinstance(r, APITimeoutError)]
    assert len(waited) + len(timed_out) == len(IDS)
    limits = sorted(err.timeout or 0.0 for err in timed_out)
    assert limits and limits[-1] <= policy.deadline
    assert sum(limit > policy.deadline / 2 for limit in limits) == 1, limits
    assert 1 <= server.total_requests <= len(timed_out)


async def test_a_caller_sessions_connector_limit_sizes_the_slots(server: FakeKMSServer) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=3)) as session:
        client = AsyncKMSClient(server.api_key, server.base_url, session=session)
        assert client._pool_limit == 3
        await client.aclose()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=50, limit_per_host=2)
    ) as session:
        client = AsyncKMSClient(server.api_key, server.base_url, session=session)
        assert client._pool_limit == 2
        await client.aclose()


@pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, "1", True])
@pytest.mark.parametrize("cls", [AsyncKMSClient, KMSClient])
def test_pool_timeout_is_validated(cls: Any, value: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        cls("k", "http://127.0.0.1:1/api/v1", pool_timeout=value)
    assert caught.value.setting == "pool_timeout"


def test_pool_timeout_is_in_the_config() -> None:
    assert AsyncKMSClient("k", "http://127.0.0.1:1/api/v1", pool_timeout=2).config.pool_timeout == 2
    assert AsyncKMSClient("k", "http://127.0.0.1:1/api/v1").config.pool_timeout is None
