"""The transport, unit level: headers, version pins, validation, retries, error mapping.

aioresponses stands in for the network here; end-to-end behaviour over real sockets
is in test_e2e.py (against the fake server).
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses
from yarl import URL

import phala_kms._transport as transport_module
from phala_kms import (
    AsyncKMSClient,
    ConfigurationError,
    InvalidArgumentError,
    RetryPolicy,
    errors,
)
from tests.conftest import API_KEY, load_fixture

BASE = "https://kms.test/api/v1"
APP_ID = "8f3e5c2a9b1d4e7f6a0c3b2d5e8f1a4c7b0d9e63"
PUBKEY = {"public_key": "ab" * 32, "signature": "cd" * 65}


@pytest.fixture
def mocked() -> Any:
    with aioresponses() as m:
        yield m


@pytest.fixture
async def client() -> AsyncIterator[AsyncKMSClient]:
    async with AsyncKMSClient(
        API_KEY, BASE, retry_policy=RetryPolicy(max_retries=3, initial_backoff=0, jitter=0)
    ) as c:
        yield c


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record retry waits instead of sleeping."""
    recorded: list[float] = []

    async def fake_sleep(delay: float) -> None:
        recorded.append(delay)

    monkeypatch.setattr(transport_module, "_sleep", fake_sleep)
    return recorded


def sent(mocked: Any) -> list[tuple[str, URL, dict[str, Any]]]:
    return [
        (method, url, call.kwargs)
        for (method, url), calls in mocked.requests.items()
        for call in calls
    ]


async def test_headers_and_version_pins(mocked: Any, client: AsyncKMSClient) -> None:
    mocked.get(re.compile(r".*/kms\?.*"), payload=load_fixture("kms_list_page1.json"), repeat=True)
    mocked.get(f"{BASE}/kms/phala", payload=load_fixture("kms_info_minimal.json"))
    mocked.get(f"{BASE}/kms/phala/pubkey/{APP_ID}", payload=PUBKEY)
    mocked.get(f"{BASE}/kms/on-chain/base", payload=load_fixture("kms_onchain_base.json"))
    await client.get_kms_list()
    await client.get_kms_info("phala")
    await client.get_app_env_encrypt_pubkey("phala", "0x" + APP_ID.upper())
    await client.get_kms_on_chain_detail("base")
    await client.get_kms_list(api_version="2025-10-28")
    versions = {}
    for _method, url, kwargs in sent(mocked):
        headers = kwargs["headers"]
        assert headers["X-API-Key"] == API_KEY
        assert headers["User-Agent"].startswith("phala-kms/")
        assert kwargs["allow_redirects"] is False
        versions.setdefault(url.path, []).append(headers["X-Phala-Version"])
    assert versions["/api/v1/kms"] == ["2026-05-22", "2025-10-28"]  # pinned, then overridden
    assert versions["/api/v1/kms/phala"] == ["2026-05-22"]
    assert versions[f"/api/v1/kms/phala/pubkey/{APP_ID}"] == ["2026-06-23"]  # never pinned old
    assert versions["/api/v1/kms/on-chain/base"] == ["2026-06-23"]


async def test_query_params(mocked: Any, client: AsyncKMSClient) -> None:
    mocked.get(re.compile(r".*/kms\?.*"), payload=load_fixture("kms_list_empty.json"), repeat=True)
    mocked.get(re.compile(r".*/next_app_id\?.*"), payload=load_fixture("next_app_ids.json"))
    await client.get_kms_list(page=2, page_size=50, is_onchain=True)
    await client.get_kms_list()
    await client.next_app_ids(counts=2)
    queries = [dict(url.query) for _m, url, _k in sent(mocked)]
    assert {"page": "2", "page_size": "50", "is_onchain": "true"} in queries
    assert {"page": "1", "page_size": "20"} in queries  # is_onchain omitted when None
    assert {"counts": "2"} in queries


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda c: c.get_kms_list(page=0), "page"),
        (lambda c: c.get_kms_list(page_size=0), "page_size"),
        (lambda c: c.get_kms_list(page_size=101), "page_size"),
        (lambda c: c.get_kms_list(page=True), "page"),
        (lambda c: c.get_kms_list(is_onchain="yes"), "is_onchain"),
        (lambda c: c.get_kms_info(""), "kms_id"),
        (lambda c: c.get_kms_info("   "), "kms_id"),
        (lambda c: c.get_kms_info(".."), "kms_id"),
        (lambda c: c.get_kms_info("x" * 257), "kms_id"),
        (lambda c: c.get_kms_info("../admin"), "kms_id"),
        (lambda c: c.get_kms_info("a/b"), "kms_id"),
        (lambda c: c.get_kms_info("a?b=c"), "kms_id"),
        (lambda c: c.get_kms_info("a#b"), "kms_id"),
        (lambda c: c.get_kms_info("%2f"), "kms_id"),
        (lambda c: c.get_kms_info("a\\b"), "kms_id"),
        (lambda c: c.get_kms_info(None), "kms_id"),
        (lambda c: c.get_app_env_encrypt_pubkey("phala", APP_ID[:-1]), "app_id"),
        (lambda c: c.get_app_env_encrypt_pubkey("phala", APP_ID + "00"), "app_id"),
        (lambda c: c.get_app_env_encrypt_pubkey("phala", "0x" + "g" * 40), "app_id"),
        (lambda c: c.get_app_env_encrypt_pubkey("", APP_ID), "kms"),
        (lambda c: c.get_kms_on_chain_detail(""), "chain"),
        (lambda c: c.next_app_ids(counts=0), "counts"),
        (lambda c: c.next_app_ids(counts=21), "counts"),
        (lambda c: c.get_kms_contract(""), "slug"),
        (lambda c: c.get_kms_info("on-chain"), "kms_id"),
        (lambda c: c.list_kms_contract_nodes("on-chain"), "slug"),
        (lambda c: c.get_app_env_encrypt_pubkey("on-chain", APP_ID), "kms"),
        (lambda c: c.list_kms_contract_nodes("."), "slug"),
        (lambda c: c.get_kms_info("phala", api_version=""), "api_version"),
    ],
)
async def test_bad_arguments_fail_before_sending(
    mocked: Any, client: AsyncKMSClient, call: Any, argument: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await call(client)
    assert info.value.argument == argument
    assert mocked.requests == {}


@pytest.mark.parametrize(
    ("kms_id", "path"),
    [
        ("a b", "/api/v1/kms/a%20b"),
        ("a=b;c", "/api/v1/kms/a=b;c"),  # legal in a path segment, sent as is
        ("ünï", "/api/v1/kms/%C3%BCn%C3%AF"),
    ],
)
async def test_path_segments_are_quoted(kms_id: str, path: str) -> None:
    seen: list[str] = []

    def callback(url: URL, **_: Any) -> CallbackResult:
        seen.append(url.raw_path)
        return CallbackResult(payload=load_fixture("kms_info_minimal.json"))

    with aioresponses() as m:
        m.get(re.compile(r".*"), callback=callback)
        async with AsyncKMSClient(API_KEY, BASE) as c:
            await c.get_kms_info(kms_id)
    assert seen == [path]


async def test_missing_api_key_is_a_configuration_error_before_sending(mocked: Any) -> None:
    async with AsyncKMSClient(base_url=BASE) as c:  # no key anywhere
        with pytest.raises(ConfigurationError, match="PHALA_CLOUD_API_KEY"):
            await c.get_kms_info("phala")
    assert mocked.requests == {}


async def test_env_vars_supply_key_and_base(monkeypatch: pytest.MonkeyPatch, mocked: Any) -> None:
    monkeypatch.setenv("PHALA_CLOUD_API_KEY", API_KEY)
    monkeypatch.setenv("PHALA_CLOUD_API_PREFIX", "https://env.test/api/v1/")
    mocked.get("https://env.test/api/v1/kms/phala", payload=load_fixture("kms_info_minimal.json"))
    async with AsyncKMSClient() as c:
        assert c.config.base_url == "https://env.test/api/v1"
        await c.get_kms_info("phala")
    ((_m, _u, kwargs),) = sent(mocked)
    assert kwargs["headers"]["X-API-Key"] == API_KEY


def test_default_base_url() -> None:
    assert AsyncKMSClient(API_KEY).config.base_url == "https://cloud-api.phala.com/api/v1"


@pytest.mark.parametrize(
    "base_url",
    [
        "http://cloud-api.phala.com/api/v1",
        "http://10.0.0.1/api/v1",
        "ftp://kms.test/api/v1",
        "kms.test/api/v1",
        "https://user:pw@kms.test/api/v1",
        "https://kms.test/api/v1?x=1",
    ],
)
def test_unsafe_base_urls_are_refused(base_url: str) -> None:
    with pytest.raises(ConfigurationError):
        AsyncKMSClient(API_KEY, base_url)


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:8787/api/v1", "http://localhost/api/v1", "http://[::1]:1/api/v1"]
)
def test_plain_http_is_allowed_to_loopback(base_url: str) -> None:
    assert AsyncKMSClient(API_KEY, base_url).config.base_url == base_url


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": "60"},
        {"connect_timeout": float("inf")},
        {"max_connections": 0},
        {"api_version": ""},
        {"max_retries": 5, "retry_policy": RetryPolicy(max_retries=2)},
    ],
)
def test_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        AsyncKMSClient(API_KEY, BASE, **kwargs)


def test_repr_hides_the_key() -> None:
    c = AsyncKMSClient(API_KEY, BASE)
    assert API_KEY not in repr(c)
    assert API_KEY not in repr(c.config)


async def test_retries_then_succeeds(
    mocked: Any, client: AsyncKMSClient, waits: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{BASE}/kms/phala/pubkey/{APP_ID}"
    mocked.get(url, status=503, body="down")
    mocked.get(url, status=429, payload={"detail": "slow down"}, headers={"Retry-After": "2"})
    mocked.get(url, status=409, payload={"detail": "busy"})  # no error_code: transient
    mocked.get(url, payload=PUBKEY)
    with caplog.at_level(logging.INFO, logger="phala_kms"):
        key = await client.get_app_env_encrypt_pubkey("phala", APP_ID)
    assert key.public_key == "ab" * 32
    assert waits == [0.0, 2.0, 0.0]
    retry_lines = [r.getMessage() for r in caplog.records if r.name == "phala_kms"]
    assert len(retry_lines) == 3
    assert all("retrying GET" in line for line in retry_lines)
    assert all(API_KEY not in line for line in retry_lines)


async def test_retries_exhausted_raise_last_error(
    mocked: Any, client: AsyncKMSClient, waits: list[float]
) -> None:
    url = f"{BASE}/kms/phala"
    mocked.get(url, status=502, body="<html><title>502 Bad Gateway</title></html>", repeat=True)
    with pytest.raises(errors.ServerError) as info:
        await client.get_kms_info("phala")
    assert info.value.status == 502
    assert info.value.attempts == 4
    assert len(waits) == 3


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (400, {"detail": "unsupported chain"}, errors.BadRequestError),
        (401, {"detail": "bad key"}, errors.AuthenticationError),
        (403, {"detail": "no"}, errors.PermissionDeniedError),
        (404, load_fixture("error_structured.json"), errors.NotFoundError),
        (409, {"error_code": "ERR-03-001", "message": "taken"}, errors.ConflictError),
        (422, load_fixture("error_validation_422.json"), errors.UnprocessableEntityError),
        (501, {"detail": "nope"}, errors.ServerError),
    ],
)
async def test_non_retryable_statuses_are_not_retried(
    mocked: Any, client: AsyncKMSClient, waits: list[float], status: int, body: Any, cls: type
) -> None:
    mocked.get(f"{BASE}/kms/phala", status=status, payload=body, repeat=True)
    with pytest.raises(cls) as info:
        await client.get_kms_info("phala")
    assert info.value.attempts == 1
    assert waits == []
    assert len(sent(mocked)) == 1


async def test_max_retries_zero_disables(mocked: Any, waits: list[float]) -> None:
    mocked.get(f"{BASE}/kms/phala", status=503, repeat=True)
    async with AsyncKMSClient(API_KEY, BASE, max_retries=0) as c:
        with pytest.raises(errors.ServerError):
            await c.get_kms_info("phala")
    assert waits == []
    assert len(sent(mocked)) == 1


async def test_retry_after_beyond_cap_is_raised_at_once(
    mocked: Any, client: AsyncKMSClient, waits: list[float]
) -> None:
    mocked.get(f"{BASE}/kms/phala", status=429, headers={"Retry-After": "3600"}, repeat=True)
    with pytest.raises(errors.RateLimitError) as info:
        await client.get_kms_info("phala")
    assert info.value.retry_after == 3600.0
    assert waits == []


async def test_redirect_is_never_followed(mocked: Any, client: AsyncKMSClient) -> None:
    mocked.get(
        f"{BASE}/kms/phala", status=302, headers={"Location": "https://evil.example/collect"}
    )
    with pytest.raises(errors.RedirectError) as info:
        await client.get_kms_info("phala")
    assert info.value.location == "https://evil.example/collect"
    assert len(sent(mocked)) == 1


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("not json", "not JSON"),
        ('{"id": "x"', "not JSON"),
        ('{"id": 5, "url": "u", "version": "v"}', "$.id"),
    ],
)
async def test_bad_success_bodies(
    mocked: Any, client: AsyncKMSClient, body: str, problem: str
) -> None:
    mocked.get(f"{BASE}/kms/phala", status=200, body=body, headers={"X-Request-ID": "req-77"})
    with pytest.raises(errors.ResponseValidationError) as info:
        await client.get_kms_info("phala")
    err = info.value
    assert err.status == 200
    assert err.request_id == "req-77"
    assert err.body == body
    assert any(problem in p for p in err.problems)
    assert err.attempts == 1


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (aiohttp.ServerDisconnectedError(), errors.ConnectionLostError),
        (aiohttp.ClientPayloadError("reset"), errors.ConnectionLostError),
        (TimeoutError(), errors.APITimeoutError),
        (aiohttp.ClientConnectionError("odd"), errors.TransportError),
    ],
)
async def test_transport_exceptions_are_mapped_and_chained(
    mocked: Any, waits: list[float], exc: Exception, cls: type
) -> None:
    mocked.get(f"{BASE}/kms/phala", exception=exc, repeat=True)
    async with AsyncKMSClient(API_KEY, BASE, max_retries=1) as c:
        with pytest.raises(cls) as info:
            await c.get_kms_info("phala")
    assert info.value.__cause__ is exc
    assert info.value.host == "kms.test"
    assert info.value.port == 443
    assert type(info.value) is cls


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_over_a_real_socket(waits: list[float]) -> None:
    port = closed_port()
    async with AsyncKMSClient(API_KEY, f"http://127.0.0.1:{port}/api/v1", max_retries=2) as c:
        with pytest.raises(errors.ConnectRefusedError) as info:
            await c.get_kms_info("phala")
    assert info.value.port == port
    assert info.value.attempts == 3
    assert len(waits) == 2


async def test_dns_failure_is_not_retried(waits: list[float]) -> None:
    async with AsyncKMSClient(API_KEY, "https://no-such-host.invalid/api/v1") as c:
        with pytest.raises(errors.DNSError) as info:
            await c.get_kms_info("phala")
    assert info.value.host == "no-such-host.invalid"
    assert waits == []


async def test_caller_session_is_used_and_left_open(mocked: Any) -> None:
    mocked.get(f"{BASE}/kms/phala", payload=load_fixture("kms_info_minimal.json"))
    async with aiohttp.ClientSession() as session:
        async with AsyncKMSClient(API_KEY, BASE, session=session) as c:
            await c.get_kms_info("phala")
        assert not session.closed


async def test_use_after_close(mocked: Any) -> None:
    c = AsyncKMSClient(API_KEY, BASE)
    await c.aclose()
    await c.aclose()  # idempotent
    with pytest.raises(errors.ClientStateError, match="closed"):
        await c.get_kms_info("phala")
    assert c.closed
    assert mocked.requests == {}


def test_configuration_errors_name_the_setting() -> None:
    with pytest.raises(ConfigurationError) as caught:
        AsyncKMSClient(API_KEY, "http://example.com/api/v1")
    assert caught.value.setting == "base_url"
    with pytest.raises(ConfigurationError) as caught:
        AsyncKMSClient(API_KEY, BASE, timeout=0)
    assert caught.value.setting == "timeout"


async def test_missing_key_names_the_setting(mocked: Any) -> None:
    async with AsyncKMSClient(base_url=BASE) as c:
        with pytest.raises(ConfigurationError) as caught:
            await c.get_kms_list()
    assert caught.value.setting == "api_key"
