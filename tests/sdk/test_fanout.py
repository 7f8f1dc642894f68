"""The fan-out: many apps' keys at once (unverified, or verified one by one), in input
order, each distinct id fetched once, bounded by ``concurrency`` and the pool,
cancellable, with per-request retries; and the pool (``phala_kms._fanout.fan_out``)
on its own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phala_kms import (
    AsyncKMSClient,
    InvalidArgumentError,
    KMSClient,
    NotFoundError,
    PhalaKMSError,
    SignatureVerificationError,
)
from phala_kms._fanout import fan_out
from phala_kms.testing import FakeKMSServer, LatencyFault, StatusFault
from tests.helpers import app_id_texts

APP_IDS = [f"{i:040x}" for i in range(1, 6)]
APP_ID = "cd" * 20


# --------------------------------------------------------------------------- the pool


def _upper(raw: object) -> str:
    if not isinstance(raw, str) or not raw.isalpha():
        raise InvalidArgumentError(f"bad key {raw!r}", argument="keys")
    return raw.upper()


async def test_the_pool_keeps_input_order_and_fetches_each_distinct_key_once() -> None:
    fetched: list[str] = []
    progress: list[tuple[int, int]] = []

    async def fetch(key: str) -> str:
        fetched.append(key)
        await asyncio.sleep(0.001 * (ord(key[0]) % 3))  # finish out of order
        return key.lower() + "!"

    got = await fan_out(
        ["b", "a", "B", "c", "a"],
        fetch,
        normalise=_upper,
        workers=2,
        return_exceptions=False,
        on_progress=lambda done, total: progress.append((done, total)),
        argument="keys",
    )
    assert got == ["b!", "a!", "b!", "c!", "a!"]
    assert sorted(fetched) == ["A", "B", "C"]
    assert progress == [(1, 3), (2, 3), (3, 3)]


async def test_the_pool_reports_a_malformed_key_by_position_before_fetching() -> None:
    fetched: list[str] = []

    async def fetch(key: str) -> str:
        fetched.append(key)
        return key

    with pytest.raises(InvalidArgumentError, match=r"^keys\[1\]: bad key '1x'") as caught:
        await fan_out(
            ["a", "1x"],
            fetch,
            normalise=_upper,
            workers=4,
            return_exceptions=False,
            on_progress=None,
            argument="keys",
        )
    assert caught.value.argument == "keys"
    assert fetched == []
    mixed = await fan_out(
        ["a", "1x"],
        fetch,
        normalise=_upper,
        workers=4,
        return_exceptions=True,
        on_progress=None,
        argument="keys",
    )
    assert mixed[0] == "A" and isinstance(mixed[1], InvalidArgumentError)


async def test_the_pool_cancels_the_rest_on_the_first_failure() -> None:
    started: list[str] = []
    cancelled: list[str] = []

    async def fetch(key: str) -> str:
        started.append(key)
        if key == "A":
            raise NotFoundError("404", status=404)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(key)
            raise
        return key

    with pytest.raises(NotFoundError):
        await fan_out(
            ["b", "a", "c"],
            fetch,
            normalise=_upper,
            workers=3,
            return_exceptions=False,
            on_progress=None,
            argument="keys",
        )
    assert sorted(cancelled) == ["B", "C"]
    assert sorted(started) == ["A", "B", "C"]


async def test_the_pool_with_nothing_to_do() -> None:
    async def fetch(key: str) -> str:
        raise AssertionError("nothing to fetch")

    got = await fan_out(
        [],
        fetch,
        normalise=_upper,
        workers=8,
        return_exceptions=False,
        on_progress=None,
        argument="keys",
    )
    assert got == []


# --------------------------------------------------------------------------- against the fake


def test_fan_out_order_dedup_and_errors(kms: Any, server: FakeKMSServer) -> None:
    ids = [APP_IDS[2], APP_IDS[0], "0x" + APP_IDS[2].upper(), APP_IDS[1]]
    keys = kms.get_app_env_encrypt_pubkeys("phala", ids, concurrency=4)
    assert [k.public_key_bytes for k in keys] == [
        server.app_public_key("phala", a) for a in (APP_IDS[2], APP_IDS[0], APP_IDS[2], APP_IDS[1])
    ]
    fetched = [r.path for r in server.requests if r.path.startswith("/api/v1/kms/phala/pubkey/")]
    assert len(fetched) == 3  # the duplicate was fetched once
    mixed = kms.get_app_env_encrypt_pubkeys(
        "phala", [APP_IDS[0], "not-hex", APP_IDS[1]], return_exceptions=True
    )
    assert mixed[0].public_key_bytes == server.app_public_key("phala", APP_IDS[0])
    assert type(mixed[1]).__name__ == "InvalidArgumentError"
    assert mixed[2].public_key_bytes == server.app_public_key("phala", APP_IDS[1])
    with pytest.raises(NotFoundError):
        kms.get_app_env_encrypt_pubkeys("no-such-kms", APP_IDS)


def test_fan_out_verifies_when_asked(kms: Any, server: FakeKMSServer) -> None:
    good = kms.get_verified_app_env_encrypt_pubkeys(
        "phala", APP_IDS, trusted_signer=server.k256_pubkey
    )
    assert len(good) == len(APP_IDS)
    assert [k.public_key_bytes for k in good] == [
        server.app_public_key("phala", a) for a in APP_IDS
    ]
    bad = kms.get_verified_app_env_encrypt_pubkeys(
        "phala",
        APP_IDS[:2],
        trusted_signer=server.k256_pubkey_for("base"),
        return_exceptions=True,
    )
    assert all(isinstance(b, SignatureVerificationError) for b in bad)
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_verified_app_env_encrypt_pubkeys(
            "phala", APP_IDS[:2], trusted_signer=server.k256_pubkey_for("base")
        )
    assert caught.value.reason == "signer_mismatch"


def test_fan_out_verifies_with_a_looked_up_trusted_signer(kms: Any, server: FakeKMSServer) -> None:
    signer = kms.get_trusted_signer("base")
    keys = kms.get_verified_app_env_encrypt_pubkeys("base", APP_IDS[:3], trusted_signer=signer)
    assert [k.public_key_bytes for k in keys] == [
        server.app_public_key("base", a) for a in APP_IDS[:3]
    ]


def test_fan_out_refuses_a_missing_signer_instead_of_skipping_verification(
    server: FakeKMSServer,
) -> None:
    with KMSClient(server.api_key, server.base_url) as kms:
        with pytest.raises(SignatureVerificationError) as caught:
            kms.get_verified_app_env_encrypt_pubkeys("phala", [APP_ID], trusted_signer=None)  # type: ignore[arg-type]
        assert caught.value.reason == "invalid_trusted_signer"
        assert server.total_requests == 0
        unverified = kms.get_app_env_encrypt_pubkeys("phala", [APP_ID])  # the unverified twin
        assert unverified[0].public_key_bytes == server.app_public_key("phala", APP_ID)


@pytest.mark.parametrize("concurrency", [0, -1, 1.5, True])
def test_fan_out_concurrency_must_be_a_positive_int(
    kms: Any, server: FakeKMSServer, concurrency: Any
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        kms.get_app_env_encrypt_pubkeys("phala", APP_IDS, concurrency=concurrency)
    assert caught.value.argument == "concurrency"
    assert server.total_requests == 0


def test_fan_out_retries_inside_a_batch(kms: Any, server: FakeKMSServer) -> None:
    ids = [f"{i:040x}" for i in range(200, 212)]
    server.inject(f"/kms/phala/pubkey/{ids[3]}", StatusFault(503), times=2)
    server.inject(f"/kms/phala/pubkey/{ids[7]}", StatusFault(429, retry_after=0), times=1)
    server.inject(f"/kms/phala/pubkey/{ids[9]}", StatusFault(404), times=None)
    results = kms.get_app_env_encrypt_pubkeys("phala", ids, concurrency=4, return_exceptions=True)
    for index, (app_id, result) in enumerate(zip(ids, results, strict=True)):
        if index == 9:
            assert isinstance(result, NotFoundError)
            assert result.attempts == 1
        else:
            assert result.public_key_bytes == server.app_public_key("phala", app_id)
    per_app = [sum(r.path.endswith(a) for r in server.requests) for a in ids]
    assert per_app == [1, 1, 1, 3, 1, 1, 1, 2, 1, 1, 1, 1]


@pytest.mark.fake_kms_options(phala_node_count=1, include_onchain=False)
async def test_fan_out_ten_thousand_ids(server: FakeKMSServer) -> None:
    ids = [f"{i:040x}" for i in range(10_000)]
    async with AsyncKMSClient(server.api_key, server.base_url) as client:
        progress: list[int] = []
        keys = await client.get_app_env_encrypt_pubkeys(
            "phala", ids, concurrency=16, on_progress=lambda done, total: progress.append(done)
        )
    assert len(keys) == 10_000
    for index in (0, 4_321, 9_999):
        assert keys[index].public_key_bytes == server.app_public_key("phala", ids[index])
    assert server.route_counts["app_pubkey"] == 10_000
    assert progress == list(range(1, 10_001))


@pytest.mark.fake_kms_options(phala_node_count=1, include_onchain=False)
async def test_fan_out_concurrency_bound(server: FakeKMSServer) -> None:
    # Latency makes every request stay in flight long enough for the peak to show the bound
    # (without it the fake answers each request before the next one arrives).
    server.inject("app_pubkey", LatencyFault(0.01), times=None)
    ids = [f"{i:040x}" for i in range(200)]
    async with AsyncKMSClient(server.api_key, server.base_url) as client:
        await client.get_app_env_encrypt_pubkeys("phala", ids, concurrency=16)
    assert server.peak_in_flight == 16


@pytest.mark.fake_kms_options(phala_node_count=1, include_onchain=False)
async def test_fan_out_never_exceeds_the_pool(server: FakeKMSServer) -> None:
    server.inject("app_pubkey", LatencyFault(0.02), times=None)
    async with AsyncKMSClient(server.api_key, server.base_url, max_connections=4) as client:
        await client.get_app_env_encrypt_pubkeys(
            "phala", APP_IDS * 1 + [f"{i:040x}" for i in range(100, 140)], concurrency=64
        )
    assert server.peak_in_flight <= 4


@pytest.mark.fake_kms_options(phala_node_count=1, include_onchain=False)
async def test_fan_out_cancellation_leaves_nothing_running(server: FakeKMSServer) -> None:
    server.inject("app_pubkey", LatencyFault(5.0), times=None)

    def workers() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if "worker" in t.get_coro().__qualname__]  # type: ignore[union-attr]

    async with AsyncKMSClient(server.api_key, server.base_url) as client:
        task = asyncio.ensure_future(
            client.get_app_env_encrypt_pubkeys("phala", [f"{i:040x}" for i in range(50)])
        )
        for _ in range(200):
            await asyncio.sleep(0.01)
            if server.in_flight >= 8:
                break
        assert server.in_flight >= 8
        assert len(workers()) == 32
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert workers() == []  # every fetch was cancelled and awaited
    for _ in range(100):
        if server.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    assert server.in_flight == 0


# --------------------------------------------------------------------------- properties

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@PROPS
@given(ids=st.lists(app_id_texts, max_size=6))
def test_fan_out_sends_each_valid_id_once(
    server: FakeKMSServer, sync_client: KMSClient, ids: list[str]
) -> None:
    server.reset()
    results = sync_client.get_app_env_encrypt_pubkeys("phala", ids, return_exceptions=True)
    valid = set()
    for raw, result in zip(ids, results, strict=True):
        text = raw[2:] if raw[:2] in ("0x", "0X") else raw
        if len(text) == 40 and all(c in "0123456789abcdefABCDEF" for c in text):
            valid.add(text.lower())
            assert not isinstance(result, PhalaKMSError)
            assert result.public_key_bytes == server.app_public_key("phala", text)
        else:
            assert isinstance(result, InvalidArgumentError)
    assert sorted(r.path for r in server.requests) == sorted(
        f"/api/v1/kms/phala/pubkey/{v}" for v in valid
    )
