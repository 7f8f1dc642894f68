"""Streaming fan-out for very large batches, and paging that cannot loop (``max_pages``).

* :func:`phala_kms._fanout.stream_fan_out` with a fake fetch: keys are read lazily
  (never more than ``workers`` ahead of what was yielded), nothing is de-duplicated,
  errors are yielded with their id, closing early cancels what is in flight.
* Both clients against the fake: ``iter_app_env_encrypt_pubkeys`` and its verified
  twin yield every id once, with the right key or a labelled error, and stop early
  cleanly (no request after the stop; the client stays usable).
* ``iter_kms_list`` / ``iter_kms_contracts`` with ``max_pages``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from phala_kms import (
    AsyncKMSClient,
    InvalidArgumentError,
    KMSClient,
    NotFoundError,
    PhalaKMSError,
    ResponseValidationError,
    SignatureVerificationError,
)
from phala_kms._fanout import stream_fan_out
from phala_kms._params import app_id_hex
from phala_kms.testing import FakeKMSServer, LatencyFault, StatusFault
from tests.helpers import ClientDriver, MakeClient

IDS = [f"{i:040x}" for i in range(1, 41)]


# --------------------------------------------------------------------------- the pool


class Counted:
    """A lazy iterable of keys that records how many were taken."""

    def __init__(self, count: int) -> None:
        self.taken = 0
        self.count = count

    def __iter__(self) -> Iterator[str]:
        for i in range(self.count):
            self.taken += 1
            yield f"{i + 1:040x}"


async def test_keys_are_read_lazily_and_in_flight_stays_bounded() -> None:
    keys = Counted(10_000)
    in_flight = peak = 0

    async def fetch(key: str) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        in_flight -= 1
        return key.upper()

    yielded = 0
    async for raw, result in stream_fan_out(keys, fetch, normalise=app_id_hex, workers=8):
        yielded += 1
        assert result == str(raw).upper()
        assert keys.taken <= yielded + 8  # never more than the workers ahead
    assert yielded == 10_000 and peak <= 8


async def test_duplicates_are_fetched_again_and_errors_are_yielded() -> None:
    fetched: list[str] = []

    async def fetch(key: str) -> str:
        fetched.append(key)
        if key == IDS[1]:
            raise NotFoundError("404", status=404)
        return key

    given = [IDS[0], IDS[1], "0x" + IDS[0].upper(), "bad"]
    got: dict[object, Any] = {}
    async for raw, result in stream_fan_out(
        given, fetch, normalise=app_id_hex, workers=2, kms="phala"
    ):
        got[raw] = result
    assert sorted(fetched) == sorted([IDS[0], IDS[1], IDS[0]])
    assert set(got) == set(given)
    assert isinstance(got[IDS[1]], NotFoundError) and got[IDS[1]].app_id == IDS[1]
    assert isinstance(got["bad"], InvalidArgumentError) and got["bad"].kms == "phala"


async def test_closing_early_cancels_what_is_in_flight() -> None:
    started: list[str] = []
    cancelled: list[str] = []

    async def fetch(key: str) -> str:
        started.append(key)
        try:
            await asyncio.sleep(0 if key == IDS[0] else 10)
        except asyncio.CancelledError:
            cancelled.append(key)
            raise
        return key

    keys = Counted(1_000)
    stream = stream_fan_out(keys, fetch, normalise=app_id_hex, workers=4)
    async with contextlib.aclosing(stream):
        async for _raw, _result in stream:
            break
    assert len(started) <= 5 and sorted(cancelled) == sorted(started[1:])
    assert keys.taken <= 5


async def test_a_fetch_that_fails_with_a_bug_is_raised_after_cancelling_the_rest() -> None:
    async def fetch(key: str) -> str:
        if key == IDS[2]:
            raise RuntimeError("bug")
        await asyncio.sleep(10 if key == IDS[3] else 0)
        return key

    with pytest.raises(RuntimeError, match="bug"):
        async for _ in stream_fan_out(IDS, fetch, normalise=app_id_hex, workers=4):
            pass


# --------------------------------------------------------------------------- both clients


def stream_all(kms: ClientDriver, method: str, ids: Any, **kwargs: Any) -> list[Any]:
    return list(kms.run(lambda client: getattr(client, method)("phala", ids, **kwargs)))


def test_every_id_is_yielded_once_with_its_key(kms: ClientDriver, server: FakeKMSServer) -> None:
    server.inject(f"/kms/phala/pubkey/{IDS[7]}", StatusFault(404, error_code="ERR-02-011"))
    given = (app for app in [*IDS, "0x" + IDS[0].upper(), "nope"])  # a one-shot generator
    pairs = stream_all(kms, "iter_app_env_encrypt_pubkeys", given, concurrency=8)
    assert sorted(p[0] for p in pairs) == sorted([*IDS, "0x" + IDS[0].upper(), "nope"])
    results = dict(pairs)
    for app in IDS:
        if app == IDS[7]:
            assert isinstance(results[app], NotFoundError)
            assert (results[app].app_id, results[app].kms) == (app, "phala")
        else:
            assert results[app].public_key_bytes == server.app_public_key("phala", app)
    assert isinstance(results["nope"], InvalidArgumentError)
    assert server.route_counts["app_pubkey"] == len(IDS) + 1  # the duplicate fetched again


def test_the_verified_twin_verifies_each_key(kms: ClientDriver, server: FakeKMSServer) -> None:
    pairs = stream_all(
        kms,
        "iter_verified_app_env_encrypt_pubkeys",
        IDS[:10],
        trusted_signer=server.k256_pubkey,
        concurrency=4,
    )
    assert sorted(app for app, _ in pairs) == IDS[:10]
    assert not [key for _, key in pairs if isinstance(key, PhalaKMSError)]
    wrong = stream_all(
        kms,
        "iter_verified_app_env_encrypt_pubkeys",
        IDS[:3],
        trusted_signer=server.k256_pubkey_for("base"),
    )
    assert all(isinstance(key, SignatureVerificationError) for _, key in wrong)
    assert sorted(key.app_id for _, key in wrong) == IDS[:3]


def test_bad_arguments_fail_before_any_request(
    make_client: MakeClient, server: FakeKMSServer
) -> None:
    kms = make_client()
    with pytest.raises(InvalidArgumentError):
        stream_all(kms, "iter_app_env_encrypt_pubkeys", IDS, concurrency=0)
    with pytest.raises(SignatureVerificationError):
        stream_all(kms, "iter_verified_app_env_encrypt_pubkeys", IDS, trusted_signer=None)
    assert server.total_requests == 0


async def eventually(predicate: Any, timeout: float) -> bool:
    give_up = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > give_up:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_stopping_early_cancels_and_sends_nothing_more_async(server: FakeKMSServer) -> None:
    server.inject("app_pubkey", LatencyFault(0.5), times=None)
    server.inject(f"/kms/phala/pubkey/{IDS[0]}", LatencyFault(0.0))  # ... except the first
    keys = Counted(100_000)
    async with AsyncKMSClient(server.api_key, server.base_url) as client:
        stream: Any = client.iter_app_env_encrypt_pubkeys("phala", keys, concurrency=4)
        async with contextlib.aclosing(stream):
            async for _app, _key in stream:
                break
        assert keys.taken <= 5
        assert await eventually(lambda: server.in_flight == 0, timeout=2.0)  # cancelled
        sent = server.total_requests
        await asyncio.sleep(0.1)
        assert server.total_requests == sent <= 5
        assert (await client.get_kms_info("phala")).slug == "phala"  # still usable


def test_stopping_early_cancels_and_sends_nothing_more_sync(
    server: FakeKMSServer, wait_until: Any
) -> None:
    server.inject("app_pubkey", LatencyFault(0.5), times=None)
    keys = Counted(100_000)
    with KMSClient(server.api_key, server.base_url) as client:
        stream: Any = client.iter_app_env_encrypt_pubkeys("phala", keys, concurrency=4)
        started = time.monotonic()
        first = next(stream)
        assert first[0] in IDS[:5] or int(first[0], 16) <= 5
        stream.close()  # closes the async iterator on the loop thread
        assert time.monotonic() - started < 2.0
        assert wait_until(lambda: server.in_flight == 0, timeout=2.0)
        sent = server.total_requests
        time.sleep(0.1)
        assert server.total_requests == sent <= 5
        assert keys.taken <= 5
        pairs = list(itertools.islice(client.iter_app_env_encrypt_pubkeys("phala", IDS[:2]), 5))
        assert len(pairs) == 2  # the client is fine


# --------------------------------------------------------------------------- max_pages


@pytest.mark.fake_kms_options(phala_node_count=45)
@pytest.mark.parametrize(
    ("method", "page_size", "walked"), [("iter_kms_list", 20, 40), ("iter_kms_contracts", 1, 2)]
)
def test_max_pages_stops_the_walk(
    kms: ClientDriver, server: FakeKMSServer, method: str, page_size: int, walked: int
) -> None:
    items: list[Any] = []

    def walk(client: Any) -> Any:
        iterator = getattr(client, method)(page_size=page_size, max_pages=2)
        if isinstance(client, AsyncKMSClient):

            async def collect() -> None:
                async for item in iterator:
                    items.append(item)

            return collect()
        for item in iterator:
            items.append(item)
        return None

    with pytest.raises(ResponseValidationError, match="max_pages"):
        kms.run(walk)
    assert len(items) == walked  # both pages' items, then the error instead of page 3
    assert server.route_counts["kms_list"] == 2


@pytest.mark.fake_kms_options(phala_node_count=5)
def test_max_pages_that_suffices_is_silent(kms: ClientDriver) -> None:
    assert len(list(kms.iter_kms_list(page_size=20, max_pages=1))) == 10
    assert len(list(kms.iter_kms_contracts(page_size=20, max_pages=3))) == 3


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
def test_max_pages_is_validated_before_any_request(
    kms: ClientDriver, server: FakeKMSServer, value: Any
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        list(kms.iter_kms_list(max_pages=value))
    assert caught.value.argument == "max_pages"
    assert server.total_requests == 0
