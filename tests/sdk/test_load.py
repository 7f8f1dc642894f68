"""Bounded load: 10,000 requests with 10% of responses faulted, through one client.

Run with ``nox -s stress`` or ``pytest -m stress -o addopts= tests/sdk/test_load.py -s``
(the figures are printed). Traffic goes to a fake on 127.0.0.1 only, and every test
stops by itself well within a minute on two cores.

Each faulted request gets its fault injected on its own exact path just before it is
sent (so the fake never scans thousands of injections): a 503 or a 429 with a 10 ms
``Retry-After`` fails the first attempt only (one retry, then success), a 404 fails it
for good (never retried). So the outcome of every request is known in advance, and the
fake's request count must equal successes + retries + final failures exactly. Retries
are counted where the retry loop waits (``instant_retries``, which skips the waits: they
are 10-50 ms and would only slow the run, not change any count).
"""

from __future__ import annotations

import asyncio
import fnmatch
import gc
import os
import random
import re
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from phala_kms import (
    AsyncKMSClient,
    KMSClient,
    NotFoundError,
    PhalaKMSError,
    RetryPolicy,
)
from phala_kms.testing import FakeKMSServer, LatencyFault, StatusFault, instant_retries

TOTAL = 10_000

# Every app key stays cached in the fake, so a repeated run allocates nothing there.
pytestmark = [
    pytest.mark.stress,
    pytest.mark.fake_kms_options(
        phala_node_count=1,
        include_onchain=False,
        request_log_size=100,
        signature_cache_size=2 * TOTAL,
    ),
]

CONCURRENCY = 256
THREADS = 16
POOL = 64  # below the concurrency, so the pool limit is what bounds the fake's in-flight
POLICY = RetryPolicy(max_retries=3, initial_backoff=0.01, max_backoff=0.05, jitter=0.5)
SERVER_LATENCY = 0.002  # every request waits this long in the fake, so requests overlap
RETAINED_LIMIT = 4 * 1024 * 1024  # Python memory a run may leave behind (pool, caches)
GROWTH_LIMIT = 256 * 1024  # and how much more a second identical run may add

FAULTS: dict[str, Any] = {
    "503": StatusFault(503),
    "429": StatusFault(429, error_code="ERR-05-002", retry_after=0.01),
    "404": StatusFault(404, error_code="ERR-02-011", message="KMS not found"),
}
SHARE = {"503": 400, "429": 300, "404": 300}  # of every 10,000: 10% faulted


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def settle() -> None:
    """Collect garbage and drop the pattern caches the fake's per-path injections fill
    (fnmatch keeps up to 32,768 compiled patterns: ours, not the client's)."""
    compile_pattern = getattr(fnmatch, "_compile_pattern", None)
    if compile_pattern is not None and hasattr(compile_pattern, "cache_clear"):
        compile_pattern.cache_clear()
    re.purge()
    gc.collect()


def leftover_memory(run: Callable[[], object]) -> tuple[int, int, int, int]:
    """Run ``run`` twice under tracemalloc. Returns the Python memory still allocated
    after the first run and after the second (a bounded state, e.g. the connection pool,
    shows up once; a leak grows with every run), and the RSS before and after, in bytes."""
    settle()
    rss_before = rss()
    tracemalloc.start()
    try:
        run()
        settle()
        after_one = tracemalloc.get_traced_memory()[0]
        run()
        settle()
        after_two = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after_one, after_two, rss_before, rss()


def plan(total: int, seed: int) -> list[str | None]:
    """The fault (or None) for each request, shuffled deterministically."""
    kinds: list[str | None] = []
    for kind, per_10k in SHARE.items():
        kinds += [kind] * (total * per_10k // 10_000)
    kinds += [None] * (total - len(kinds))
    random.Random(seed).shuffle(kinds)
    return kinds


def app_ids(total: int, salt: int) -> list[str]:
    return [f"{salt:08x}{i:032x}" for i in range(total)]


@dataclass
class Tally:
    waits: list[float] = field(default_factory=list)  # the retry waits, from instant_retries
    latencies: list[float] = field(default_factory=list)
    timing: bool = True  # off while measuring memory (the list itself would count)

    @property
    def retries(self) -> int:
        return len(self.waits)

    def took(self, seconds: float) -> None:
        if self.timing:
            self.latencies.append(seconds)


@pytest.fixture
def tally() -> Tally:
    return Tally()


@pytest.fixture
def loaded(server: FakeKMSServer) -> FakeKMSServer:
    """``server`` with every pubkey request held for ``SERVER_LATENCY``."""
    server.inject("app_pubkey", LatencyFault(SERVER_LATENCY), times=None)
    return server


def reset(server: FakeKMSServer, tally: Tally) -> None:
    server.reset()
    server.inject("app_pubkey", LatencyFault(SERVER_LATENCY), times=None)
    tally.waits.clear()
    tally.latencies = []


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def check_and_report(
    name: str,
    server: FakeKMSServer,
    ids: list[str],
    kinds: list[str | None],
    outcomes: list[Any],
    tally: Tally,
    elapsed: float,
    pool_limit: int,
) -> None:
    successes = failures = 0
    for app, kind, outcome in zip(ids, kinds, outcomes, strict=True):
        if kind == "404":
            assert type(outcome) is NotFoundError, outcome
            assert outcome.attempts == 1 and outcome.error_code == "ERR-02-011"
            assert outcome.url.endswith(f"/pubkey/{app}")
            failures += 1
        else:
            assert not isinstance(outcome, BaseException), (kind, outcome)
            assert outcome.public_key_bytes == server.app_public_key("phala", app)
            successes += 1
    retried = sum(1 for k in kinds if k in ("503", "429"))
    assert tally.retries == retried  # each 503/429 cost exactly one retry, nothing else did
    requests = server.route_counts.get("app_pubkey", 0)
    assert requests == successes + tally.retries + failures  # the fake saw exactly that
    assert server.total_requests == requests
    assert [i.fault for i in server.injections] == [LatencyFault(SERVER_LATENCY)]  # all fired
    assert 2 <= server.peak_in_flight <= pool_limit  # overlapping, and never above the pool
    print(
        f"\n[stress] {name}: {len(ids)} calls, {requests} requests in {elapsed:.2f} s"
        f" = {len(ids) / elapsed:,.0f} calls/s ({requests / elapsed:,.0f} requests/s);"
        f" latency p50 {pct(tally.latencies, 0.5) * 1000:.1f} ms,"
        f" p99 {pct(tally.latencies, 0.99) * 1000:.1f} ms,"
        f" max {max(tally.latencies) * 1000:.1f} ms; peak in flight {server.peak_in_flight}"
        f" (limit {pool_limit}); {successes} ok, {failures} failed for good,"
        f" {tally.retries} retries"
    )


def report_memory(
    name: str, after_one: int, after_two: int, rss_before: int, rss_after: int
) -> None:
    growth = after_two - after_one
    print(
        f"[stress] {name} memory (tracemalloc): the same {TOTAL:,} calls run twice more"
        f" leave {after_one / 1024:,.0f} KiB after the first (pool and caches) and"
        f" {growth / 1024:+,.0f} KiB more after the second; RSS"
        f" {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB"
    )
    assert after_one < RETAINED_LIMIT
    assert growth < GROWTH_LIMIT  # < 26 bytes per request: nothing accumulates per call


async def run_async(
    client: AsyncKMSClient,
    server: FakeKMSServer,
    ids: list[str],
    kinds: list[str | None],
    tally: Tally,
) -> list[Any]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(app: str, kind: str | None) -> Any:
        async with gate:
            if kind is not None:
                server.inject(f"/kms/phala/pubkey/{app}", FAULTS[kind], times=1)
            started = time.perf_counter()
            try:
                return await client.get_app_env_encrypt_pubkey("phala", app)
            except PhalaKMSError as err:
                return err
            finally:
                tally.took(time.perf_counter() - started)

    return await asyncio.gather(*(one(a, k) for a, k in zip(ids, kinds, strict=True)))


@pytest.mark.timeout(60)
def test_ten_thousand_requests_through_one_async_client(
    loaded: FakeKMSServer, tally: Tally
) -> None:
    server = loaded
    loop = asyncio.new_event_loop()  # one loop for every run: the client stays bound to it
    client = AsyncKMSClient(
        server.api_key, server.base_url, retry_policy=POLICY, max_connections=POOL
    )

    def run(ids: list[str], kinds: list[str | None]) -> list[Any]:
        with instant_retries(client) as waits:
            try:
                return loop.run_until_complete(run_async(client, server, ids, kinds, tally))
            finally:
                tally.waits.extend(waits)

    try:
        run(app_ids(2_000, 1), plan(2_000, 1))  # warm up: connections, caches
        reset(server, tally)
        ids, kinds = app_ids(TOTAL, 2), plan(TOTAL, 2)
        started = time.perf_counter()
        outcomes = run(ids, kinds)
        elapsed = time.perf_counter() - started
        check_and_report(
            "async, gather + semaphore(256)", server, ids, kinds, outcomes, tally, elapsed, POOL
        )
        del outcomes
        # The same load again under tracemalloc: what does a long-lived client keep?
        reset(server, tally)
        tally.timing = False
        memory = leftover_memory(lambda: run(ids, kinds))
        assert tally.retries == 2 * 700
        assert server.route_counts["app_pubkey"] == 2 * (TOTAL + 700)
        report_memory("async", *memory)
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


@pytest.mark.timeout(60)
def test_ten_thousand_requests_through_one_sync_client_shared_by_16_threads(
    loaded: FakeKMSServer, tally: Tally
) -> None:
    server = loaded
    threads_before = threading.active_count()
    with (
        KMSClient(
            server.api_key, server.base_url, retry_policy=POLICY, max_connections=POOL
        ) as client,
        instant_retries(client) as waits,
    ):
        tally.waits = waits  # the same list: it fills as the threads' retries happen

        def one(item: tuple[str, str | None]) -> Any:
            app, kind = item
            if kind is not None:
                server.inject(f"/kms/phala/pubkey/{app}", FAULTS[kind], times=1)
            started = time.perf_counter()
            try:
                return client.get_app_env_encrypt_pubkey("phala", app)
            except PhalaKMSError as err:
                return err
            finally:
                tally.took(time.perf_counter() - started)

        with ThreadPoolExecutor(THREADS, thread_name_prefix="stress") as pool:
            list(pool.map(one, zip(app_ids(1_000, 4), plan(1_000, 4), strict=True)))
            reset(server, tally)
            ids, kinds = app_ids(TOTAL, 5), plan(TOTAL, 5)
            started = time.perf_counter()
            outcomes = list(pool.map(one, zip(ids, kinds, strict=True)))
            elapsed = time.perf_counter() - started
            assert threading.active_count() == threads_before + 1 + THREADS
            check_and_report(
                "sync, 16 threads", server, ids, kinds, outcomes, tally, elapsed, THREADS
            )
            del outcomes
            reset(server, tally)
            tally.timing = False
            again = list(zip(ids, kinds, strict=True))
            memory = leftover_memory(lambda: list(pool.map(one, again)))
            assert tally.retries == 2 * 700
            assert server.route_counts["app_pubkey"] == 2 * (TOTAL + 700)
            report_memory("sync", *memory)
    assert threading.active_count() == threads_before


@pytest.mark.timeout(60)
def test_fan_out_of_ten_thousand_ids_with_glob_faults(server: FakeKMSServer, tally: Tally) -> None:
    """``get_app_env_encrypt_pubkeys`` over 10,000 ids; faults by glob on the id's prefix:
    ``c0...`` ids always 404 (never retried); 500 of the ``c3...`` requests get a 503
    (whichever arrive first, retries included, so an unlucky id may run out of retries)."""
    ids = [
        f"{'c0' if i % 20 == 0 else 'c3' if i % 20 == 1 else '00'}{i:038x}" for i in range(TOTAL)
    ]
    server.reset()  # glob faults first: the 404 and 503 answer, the latency still applies
    not_found = server.inject("/kms/phala/pubkey/c0*", FAULTS["404"], times=None)
    unavailable = server.inject("/kms/phala/pubkey/c3*", FAULTS["503"], times=500)
    server.inject("app_pubkey", LatencyFault(SERVER_LATENCY), times=None)

    async def main() -> tuple[float, list[Any]]:
        async with AsyncKMSClient(
            server.api_key, server.base_url, retry_policy=POLICY, max_connections=POOL
        ) as client:
            with instant_retries(client) as waits:
                started = time.perf_counter()
                results = await client.get_app_env_encrypt_pubkeys(
                    "phala", ids, concurrency=CONCURRENCY, return_exceptions=True
                )
                elapsed = time.perf_counter() - started
            tally.waits.extend(waits)
            return elapsed, results

    elapsed, results = asyncio.run(main())
    ok = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    for app, result in zip(ids, results, strict=True):
        if app.startswith("c0"):
            assert type(result) is NotFoundError and result.attempts == 1
        elif isinstance(result, BaseException):  # four 503s in a row
            assert app.startswith("c3") and result.status == 503 and result.attempts == 4
        else:
            assert result.public_key_bytes == server.app_public_key("phala", app)
    requests = server.route_counts["app_pubkey"]
    assert unavailable.hits == 500 and not_found.hits == TOTAL // 20
    assert tally.retries == 500 - sum(1 for r in failed if getattr(r, "status", 0) == 503)
    assert requests == len(ok) + len(failed) + tally.retries
    assert 2 <= server.peak_in_flight <= POOL
    print(
        f"\n[stress] fan-out: {TOTAL} ids, {requests} requests in {elapsed:.2f} s"
        f" = {requests / elapsed:,.0f} requests/s; peak in flight {server.peak_in_flight}"
        f" (limit {POOL}); {len(ok)} ok, {len(failed)} failed, {tally.retries} retries"
    )
