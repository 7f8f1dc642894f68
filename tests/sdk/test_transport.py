"""The transport: what one request does on the wire and how its failures are mapped.

aiohttp failures become typed errors (chained, with host and port), redirects are
never followed, bodies are bounded after decompression (``max_response_bytes``), a
caller's own session is used as it is and left open, and a closed client sends nothing.
aioresponses stands in for the network in some tests; the others use real sockets.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from phala_kms import (
    AsyncKMSClient,
    ConfigurationError,
    NotFoundError,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
    errors,
)
from phala_kms.testing import FakeKMSServer, HugeBodyFault, instant_retries
from tests.helpers import API_KEY, MOCK_BASE, load_fixture

ONE_MIB = 1024 * 1024


# --------------------------------------------------------------------------- error mapping


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
    mocked: Any, exc: Exception, cls: type
) -> None:
    mocked.get(f"{MOCK_BASE}/kms/phala", exception=exc, repeat=True)
    async with AsyncKMSClient(API_KEY, MOCK_BASE, max_retries=1) as c:
        with instant_retries(c), pytest.raises(cls) as info:
            await c.get_kms_info("phala")
    assert info.value.__cause__ is exc
    assert info.value.host == "kms.test"
    assert info.value.port == 443
    assert type(info.value) is cls


async def test_connection_refused_over_a_real_socket(closed_port: int) -> None:
    base = f"http://127.0.0.1:{closed_port}/api/v1"
    async with AsyncKMSClient(API_KEY, base, max_retries=2) as c:
        with instant_retries(c) as waits, pytest.raises(errors.ConnectRefusedError) as info:
            await c.get_kms_info("phala")
    assert info.value.port == closed_port
    assert info.value.attempts == 3
    assert len(waits) == 2


async def test_dns_failure_is_not_retried() -> None:
    async with AsyncKMSClient(API_KEY, "https://no-such-host.invalid/api/v1") as c:
        with instant_retries(c) as waits, pytest.raises(errors.DNSError) as info:
            await c.get_kms_info("phala")
    assert info.value.host == "no-such-host.invalid"
    assert waits == []


async def test_redirect_is_never_followed(mocked: Any, mock_client: AsyncKMSClient) -> None:
    mocked.get(
        f"{MOCK_BASE}/kms/phala", status=302, headers={"Location": "https://evil.example/collect"}
    )
    with pytest.raises(errors.RedirectError) as info:
        await mock_client.get_kms_info("phala")
    assert info.value.location == "https://evil.example/collect"
    assert len(mocked.sent()) == 1


# --------------------------------------------------------------------------- sessions, closing


async def test_caller_session_is_used_and_left_open(mocked: Any) -> None:
    mocked.get(f"{MOCK_BASE}/kms/phala", payload=load_fixture("kms_info_minimal.json"))
    async with aiohttp.ClientSession() as session:
        async with AsyncKMSClient(API_KEY, MOCK_BASE, session=session) as c:
            await c.get_kms_info("phala")
        assert not session.closed


async def test_a_callers_raise_for_status_session_does_not_change_error_mapping(
    server: FakeKMSServer,
) -> None:
    async with aiohttp.ClientSession(raise_for_status=True) as session:
        client = AsyncKMSClient(server.api_key, server.base_url, session=session)
        with pytest.raises(NotFoundError) as caught:
            await client.get_kms_info("no-such-kms")
        assert caught.value.error_code == "ERR-02-011"
        await client.aclose()


async def test_use_after_close(mocked: Any) -> None:
    c = AsyncKMSClient(API_KEY, MOCK_BASE)
    await c.aclose()
    await c.aclose()  # idempotent
    with pytest.raises(errors.ClientStateError, match="closed"):
        await c.get_kms_info("phala")
    assert c.closed
    assert mocked.requests == {}


# --------------------------------------------------------------------------- body size


@pytest.fixture
async def raw_server() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A bare aiohttp server whose next response the test sets."""
    state: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        state["requests"] = state.get("requests", 0) + 1
        return state["make"](request)  # type: ignore[no-any-return]

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/api/v1", state
    finally:
        await runner.cleanup()


async def test_a_gzip_bomb_is_bounded_after_decompression(
    raw_server: tuple[str, dict[str, Any]],
) -> None:
    base, state = raw_server
    inflated = b'{"app_ids": []' + b" " * (17 * ONE_MIB) + b"}"
    bomb = gzip.compress(inflated, compresslevel=9)
    assert len(bomb) < ONE_MIB  # small on the wire

    def make(_: web.Request) -> web.Response:
        return web.Response(
            body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    state["make"] = make
    async with AsyncKMSClient(API_KEY, base) as client:
        with pytest.raises(ResponseValidationError, match="exceeds the 16777216-byte limit"):
            await client.next_app_ids()


@pytest.mark.fake_kms_options(phala_node_count=1, include_onchain=False)
async def test_a_huge_error_body_keeps_its_status_and_is_retried(server: FakeKMSServer) -> None:
    server.inject("kms_info", HugeBodyFault(16 * ONE_MIB + 1, status=503), times=None)
    policy = RetryPolicy(max_retries=1, initial_backoff=0, jitter=0)
    async with AsyncKMSClient(server.api_key, server.base_url, retry_policy=policy) as c:
        with pytest.raises(ServerError) as caught:
            await c.get_kms_info("phala")
    assert caught.value.status == 503
    assert caught.value.attempts == 2
    assert len(caught.value.body) == 64 * 1024  # cut, not dropped
    assert server.route_counts["kms_info"] == 2


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("size", "outcome"),
    [(64 * 1024, "fits"), (64 * 1024 + 1, "exceeds")],
    ids=["at-limit", "over-limit"],
)
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.fake_kms_options(phala_node_count=1, include_onchain=False)
async def test_max_response_bytes_boundary(
    server: FakeKMSServer, size: int, outcome: str, chunked: bool
) -> None:
    server.inject("kms_info", HugeBodyFault(size, chunked=chunked), times=None)
    policy = RetryPolicy(max_retries=3, initial_backoff=0.1, max_backoff=1.0, jitter=0.0)
    async with AsyncKMSClient(
        server.api_key, server.base_url, retry_policy=policy, max_response_bytes=64 * 1024
    ) as client:
        assert client.config.max_response_bytes == 64 * 1024
        with instant_retries(client) as waits, pytest.raises(ResponseValidationError) as caught:
            await client.get_kms_info("phala")
    err = caught.value
    if outcome == "exceeds":
        assert "exceeds the 65536-byte limit" in str(err)
    else:  # read whole, then rejected by the model, not by size
        assert "exceeds" not in str(err)
        assert err.model == "KMSInfo" and err.problems
        assert len(err.body) == size
    assert server.route_counts == {"kms_info": 1}
    assert waits == []


@pytest.mark.parametrize("value", [0, -1, 1.5, "1024", True, None])
def test_max_response_bytes_must_be_a_positive_int(value: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        AsyncKMSClient(API_KEY, MOCK_BASE, max_response_bytes=value)
    assert caught.value.setting == "max_response_bytes"
