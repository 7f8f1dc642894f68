"""End to end: both clients against the fake Phala Cloud KMS API over real sockets."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Iterator
from typing import Any

import pytest

from phala_kms import (
    AsyncKMSClient,
    AuthenticationError,
    BadRequestError,
    KMSClient,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    SignatureVerificationError,
    UnprocessableEntityError,
)
from phala_kms.testing import FakeKMSServer, StatusFault, decrypt_env_vars
from tests.conftest import FIXTURES

APP_IDS = [f"{i:040x}" for i in range(1, 6)]
FAST_RETRIES = RetryPolicy(max_retries=3, initial_backoff=0.0, jitter=0.0)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeKMSServer]:
    with FakeKMSServer.in_thread() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _reset(server: FakeKMSServer) -> None:
    # A previous test may have cancelled requests still on their way to the shared server.
    deadline = time.monotonic() + 5
    while server.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.02)
    server.reset()
    server.timestamped_signatures = False


class AsyncDriver:
    """Calls AsyncKMSClient methods from sync test code: one asyncio.run per call."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            async def go() -> Any:
                async with AsyncKMSClient(**self.kwargs) as client:
                    result = getattr(client, name)(*args, **kwargs)
                    if inspect.isasyncgen(result):
                        return [item async for item in result]
                    return await result

            return asyncio.run(go())

        return call


class SyncDriver:
    def __init__(self, client: KMSClient) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            result = getattr(self.client, name)(*args, **kwargs)
            return list(result) if inspect.isgenerator(result) else result

        return call


@pytest.fixture(params=["async", "sync"])
def kms(request: pytest.FixtureRequest, server: FakeKMSServer) -> Iterator[Any]:
    kwargs = {
        "api_key": server.api_key,
        "base_url": server.base_url,
        "retry_policy": FAST_RETRIES,
    }
    if request.param == "async":
        yield AsyncDriver(**kwargs)
    else:
        with KMSClient(**kwargs) as client:
            yield SyncDriver(client)


def test_kms_list_pages_and_iteration(kms: Any, server: FakeKMSServer) -> None:
    first = kms.get_kms_list(page=1, page_size=20)
    assert first.total == 50 and first.pages == 3 and len(first.items) == 20
    last = kms.get_kms_list(page=3, page_size=20)
    assert len(last.items) == 10
    everything = kms.iter_kms_list(page_size=20)
    assert len(everything) == 50
    assert len({item.id for item in everything}) == 50
    assert [i.id for i in everything[:20]] == [i.id for i in first.items]
    onchain = kms.iter_kms_list(is_onchain=True)
    assert onchain and all(i.chain_id is not None for i in onchain)
    versions = {r.phala_version for r in server.requests if r.route == "kms_list"}
    assert versions == {"2026-05-22"}  # node-centric calls pin the old version


def test_empty_page_beyond_the_end(kms: Any) -> None:
    page = kms.get_kms_list(page=99, page_size=100)
    assert page.items == () and page.total == 50


def test_kms_info_and_not_found(kms: Any) -> None:
    info = kms.get_kms_info("phala")
    assert info.slug == "phala" and info.chain_id is None
    with pytest.raises(NotFoundError) as caught:
        kms.get_kms_info("no-such-kms")
    err = caught.value
    assert err.status == 404
    assert err.error_code == "ERR-02-011"
    assert err.request_id
    assert err.attempts == 1


def test_on_chain_detail(kms: Any, server: FakeKMSServer) -> None:
    detail = kms.get_kms_on_chain_detail("base")
    assert detail.chain_id == 8453
    (contract,) = detail.contracts
    assert contract.k256_pubkey and contract.devices and contract.os_images
    assert contract.k256_pubkey.lower() == server.k256_pubkey_for("base").lower()
    with pytest.raises(BadRequestError):
        kms.get_kms_on_chain_detail("solana")


def test_next_app_ids(kms: Any) -> None:
    ids = kms.next_app_ids(counts=3)
    assert len(ids.app_ids) == 3
    nonces = [a.nonce for a in ids.app_ids]
    assert nonces == sorted(nonces) and len(set(nonces)) == 3
    assert all(len(a.app_id) == 40 for a in ids.app_ids)


def test_contract_routes(kms: Any, server: FakeKMSServer) -> None:
    page = kms.list_kms_contracts()
    slugs = {c.slug for c in page.items}
    assert {"phala", "base"} <= slugs
    phala = kms.get_kms_contract("phala")
    assert phala.chain_id == 0 and phala.is_onchain is False
    assert phala.k256_pubkey.lower() == server.k256_pubkey.lower()
    nodes = kms.list_kms_contract_nodes("phala")
    assert nodes.total == len(nodes.items) == 45
    assert len(kms.iter_kms_contracts(page_size=1)) == page.total
    versions = {r.phala_version for r in server.requests if r.route in ("kms_list", "kms_info")}
    assert versions == {"2026-06-23"}


def test_pubkey_matches_the_kms_key_and_verifies(kms: Any, server: FakeKMSServer) -> None:
    key = kms.get_app_env_encrypt_pubkey("phala", "0x" + APP_IDS[0].upper())
    assert key.public_key_bytes == server.app_public_key("phala", APP_IDS[0])
    verified = kms.get_verified_app_env_encrypt_pubkey(
        "phala", APP_IDS[0], trusted_signer=server.k256_pubkey
    )
    assert verified == key
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_verified_app_env_encrypt_pubkey(
            "phala", APP_IDS[0], trusted_signer=server.k256_pubkey_for("base")
        )
    assert caught.value.reason == "signer_mismatch"


def test_timestamped_signature_is_preferred(kms: Any, server: FakeKMSServer) -> None:
    server.timestamped_signatures = True
    key = kms.get_verified_app_env_encrypt_pubkey(
        "base", APP_IDS[1], trusted_signer=server.k256_pubkey_for("base")
    )
    assert key.timestamp is not None and key.signature_v1 is not None
    server.clock = lambda: 1_000.0  # a signature from 1970: stale
    try:
        with pytest.raises(SignatureVerificationError) as caught:
            kms.get_verified_app_env_encrypt_pubkey(
                "base", APP_IDS[2], trusted_signer=server.k256_pubkey_for("base")
            )
        assert caught.value.reason == "stale_timestamp"
    finally:
        server.clock = time.time


def test_encrypt_env_vars_for_app_round_trip(kms: Any, server: FakeKMSServer) -> None:
    env = {"DATABASE_URL": "postgres://u:p@h/db?x=1", "TRAILING": "back\\", "EMPTY": ""}
    hex_ct = kms.encrypt_env_vars_for_app(
        "phala", APP_IDS[3], env, trusted_signer=server.k256_pubkey
    )
    plain = decrypt_env_vars(hex_ct, server.app_private_key("phala", APP_IDS[3]))
    assert [(v.key, v.value) for v in plain] == list(env.items())


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
    good = kms.get_app_env_encrypt_pubkeys("phala", APP_IDS, trusted_signer=server.k256_pubkey)
    assert len(good) == len(APP_IDS)
    bad = kms.get_app_env_encrypt_pubkeys(
        "phala",
        APP_IDS[:2],
        trusted_signer=server.k256_pubkey_for("base"),
        return_exceptions=True,
    )
    assert all(isinstance(b, SignatureVerificationError) for b in bad)


def test_retried_503_through_the_real_transport(kms: Any, server: FakeKMSServer) -> None:
    server.inject("kms_info", StatusFault(503), times=2)
    info = kms.get_kms_info("phala")
    assert info.slug == "phala"
    assert server.route_counts["kms_info"] == 3


def test_auth_errors(server: FakeKMSServer) -> None:
    with KMSClient("phak_wrong", server.base_url) as client, pytest.raises(PermissionDeniedError):
        client.get_kms_info("phala")
    assert server.requests[-1].headers.get("X-API-Key") != "phak_wrong"  # redacted in the log


def test_missing_key_sends_nothing(server: FakeKMSServer) -> None:
    from phala_kms import ConfigurationError

    with KMSClient(base_url=server.base_url) as client, pytest.raises(ConfigurationError):
        client.get_kms_info("phala")
    assert server.total_requests == 0
    assert AuthenticationError  # the 401 path is exercised by the fake's own tests


async def test_fan_out_ten_thousand_ids() -> None:
    async with FakeKMSServer(phala_node_count=1, include_onchain=False) as server:
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


async def test_fan_out_concurrency_bound() -> None:
    # Latency makes every request stay in flight long enough for the peak to show the bound
    # (without it the fake answers each request before the next one arrives).
    from phala_kms.testing import LatencyFault

    async with FakeKMSServer(phala_node_count=1, include_onchain=False) as server:
        server.inject("app_pubkey", LatencyFault(0.01), times=None)
        ids = [f"{i:040x}" for i in range(200)]
        async with AsyncKMSClient(server.api_key, server.base_url) as client:
            await client.get_app_env_encrypt_pubkeys("phala", ids, concurrency=16)
        assert server.peak_in_flight == 16


async def test_fan_out_never_exceeds_the_pool() -> None:
    async with FakeKMSServer(phala_node_count=1, include_onchain=False) as server:
        from phala_kms.testing import LatencyFault

        server.inject("app_pubkey", LatencyFault(0.02), times=None)
        async with AsyncKMSClient(server.api_key, server.base_url, max_connections=4) as client:
            await client.get_app_env_encrypt_pubkeys(
                "phala", APP_IDS * 1 + [f"{i:040x}" for i in range(100, 140)], concurrency=64
            )
        assert server.peak_in_flight <= 4


async def test_fan_out_cancellation_leaves_nothing_running() -> None:
    async with FakeKMSServer(phala_node_count=1, include_onchain=False) as server:
        from phala_kms.testing import LatencyFault

        server.inject("app_pubkey", LatencyFault(5.0), times=None)

        def workers() -> list[asyncio.Task[Any]]:
            return [t for t in asyncio.all_tasks() if "worker" in t.get_coro().__qualname__]

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


@pytest.mark.parametrize(
    ("status", "fixture", "cls", "expected"),
    [
        (404, "error_detail_string.json", NotFoundError, {"error_code": None}),
        (
            404,
            "error_structured.json",
            NotFoundError,
            {"error_code": "ERR-02-011", "request_id": "req_01HZX9"},
        ),
        (
            429,
            "error_structured_nested.json",
            RateLimitError,
            {"error_code": "ERR-05-002", "request_id": "req_01HZXA"},
        ),
        (422, "error_validation_422.json", UnprocessableEntityError, {"error_code": None}),
        (500, "error_message_only.json", ServerError, {"error_code": None}),
        (502, "error_gateway_502.html", ServerError, {"error_code": None}),
    ],
)
def test_every_error_body_form(
    kms: Any,
    server: FakeKMSServer,
    status: int,
    fixture: str,
    cls: type[Exception],
    expected: dict[str, Any],
) -> None:
    body = (FIXTURES / fixture).read_bytes()
    content_type = "text/html" if fixture.endswith(".html") else "application/json"
    server.inject("kms_info", StatusFault(status, body=body, content_type=content_type), times=None)
    with pytest.raises(cls) as caught:
        kms.get_kms_info("phala")
    err = caught.value
    assert err.status == status  # type: ignore[attr-defined]
    assert err.body == body.decode()  # type: ignore[attr-defined]
    assert err.request_id  # type: ignore[attr-defined]  # the body's, else the header's
    for name, value in expected.items():
        assert getattr(err, name) == value


def test_unknown_fields_and_nulls_survive_the_round_trip(kms: Any) -> None:
    items = kms.iter_kms_list()
    assert any(item.extra.get("region") for item in items)
    assert any(item.slug is None for item in items)
    assert any(item.chain_id is None for item in items)
    assert any(item.k256_pubkey is None for item in items)
    assert any(item.k256_pubkey for item in items)


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


@pytest.mark.parametrize("signer", ["", "0x1234", "not hex", "04" + "00" * 64])
def test_unusable_trusted_signer_fails_before_any_request(
    kms: Any, server: FakeKMSServer, signer: str
) -> None:
    with pytest.raises(SignatureVerificationError) as caught:
        kms.get_verified_app_env_encrypt_pubkey("phala", APP_IDS[0], trusted_signer=signer)
    assert caught.value.reason == "invalid_trusted_signer"
    with pytest.raises(SignatureVerificationError):
        kms.get_app_env_encrypt_pubkeys("phala", APP_IDS, trusted_signer=signer)
    with pytest.raises(SignatureVerificationError):
        kms.encrypt_env_vars_for_app("phala", APP_IDS[0], {"A": "b"}, trusted_signer=signer)
    assert server.total_requests == 0
