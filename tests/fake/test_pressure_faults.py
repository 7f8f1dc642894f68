"""The fake's server-wide pressure: a token-bucket rate limit and an outage switch.

Raw HTTP (a plain aiohttp session), so what the fake sends is checked byte for byte,
then the SDK's view of it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import pytest

from phala_kms import AsyncKMSClient, RateLimitError, RetryPolicy, ServerError
from phala_kms.testing import FakeKMSServer, Outage, RateLimit


async def get(
    session: aiohttp.ClientSession, server: FakeKMSServer, path: str = "/kms/phala"
) -> tuple[int, dict[str, str], Any]:
    async with session.get(server.base_url + path, headers={"X-API-Key": server.api_key}) as resp:
        body = await resp.json(content_type=None)
        return resp.status, dict(resp.headers), body


# --------------------------------------------------------------------------- rate limit


async def test_the_rate_limit_is_a_token_bucket(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    server.rate_limit = RateLimit(rate=2, burst=3, retry_after=1)
    statuses = [(await get(http_session, server))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]  # the burst, then empty
    status, headers, body = await get(http_session, server)
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert body["error_code"] == "ERR-05-002"
    assert body["request_id"] == headers["X-Request-ID"]
    assert set(body) == {"error_code", "message", "request_id", "details", "suggestions", "links"}
    assert "2 requests per second" in body["message"]
    assert server.rate_limited_count == 2
    await asyncio.sleep(0.55)  # one token back at 2/s
    assert (await get(http_session, server))[0] == 200
    assert (await get(http_session, server))[0] == 429


async def test_the_rate_limit_covers_every_route_and_checks_before_auth(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    server.rate_limit = RateLimit(rate=0.001, burst=2)
    assert (await get(http_session, server, "/kms"))[0] == 200
    assert (await get(http_session, server, "/kms/phala/pubkey/" + "ab" * 20))[0] == 200
    assert (await get(http_session, server, "/kms/phala/nodes"))[0] == 429
    async with http_session.get(server.base_url + "/kms") as resp:  # no API key
        assert resp.status == 429


async def test_retry_after_as_an_http_date_or_none(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    server.rate_limit = RateLimit(rate=0.001, burst=1, retry_after=5, http_date=True)
    await get(http_session, server)
    _, headers, _ = await get(http_session, server)
    when = parsedate_to_datetime(headers["Retry-After"])
    delta = (when - datetime.now(timezone.utc)).total_seconds()
    assert 3.5 <= delta <= 6.5
    server.rate_limit = RateLimit(rate=0.001, burst=1, retry_after=None)
    await get(http_session, server)
    status, headers, _ = await get(http_session, server)
    assert status == 429 and "Retry-After" not in headers


async def test_setting_a_limit_refills_and_none_lifts_it(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    server.rate_limit = RateLimit(rate=0.001, burst=1)
    assert [(await get(http_session, server))[0] for _ in range(2)] == [200, 429]
    server.rate_limit = RateLimit(rate=0.001, burst=1)  # a new limit starts full
    assert (await get(http_session, server))[0] == 200
    server.rate_limit = None
    assert server.rate_limit is None
    assert [(await get(http_session, server))[0] for _ in range(3)] == [200, 200, 200]
    server.rate_limit = RateLimit(rate=0.001, burst=1)
    server.reset()  # lifts it and zeroes the count
    limit: Any = server.rate_limit
    assert limit is None and server.rate_limited_count == 0


def test_the_sdk_reads_the_rate_limit(server: FakeKMSServer) -> None:

    server.rate_limit = RateLimit(rate=0.001, burst=1, retry_after=2)

    async def go() -> RateLimitError:
        policy = RetryPolicy(max_retries=0)
        async with AsyncKMSClient(server.api_key, server.base_url, retry_policy=policy) as c:
            await c.get_kms_info("phala")
            with pytest.raises(RateLimitError) as caught:
                await c.get_kms_info("phala")
            return caught.value

    err = asyncio.run(go())
    assert err.status == 429 and err.error_code == "ERR-05-002" and err.retry_after == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0},
        {"rate": -1},
        {"rate": float("inf")},
        {"rate": 1, "burst": 0},
        {"rate": 1, "burst": 1.5},
        {"rate": 1, "retry_after": -1},
        {"rate": 1, "status": 200},
    ],
)
def test_a_bad_rate_limit_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="RateLimit"):
        RateLimit(**kwargs)


def test_only_a_rate_limit_can_be_set(server: FakeKMSServer) -> None:
    with pytest.raises(TypeError):
        server.rate_limit = 300  # type: ignore[assignment]


# --------------------------------------------------------------------------- outage


async def test_the_outage_switch(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    server.outage = True
    assert server.outage == Outage()
    for path in ("/kms", "/kms/phala", "/kms/phala/pubkey/" + "ab" * 20, "/nope"):
        status, headers, body = await get(http_session, server, path)
        assert status == 503 and body == {"detail": "Service Unavailable"}
        assert "Retry-After" not in headers
    assert server.outage_count == 4
    server.outage = False
    assert server.outage is None
    assert (await get(http_session, server))[0] == 200


async def test_an_outage_with_retry_after_and_a_structured_body(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    server.outage = Outage(status=502, retry_after=3, error_code="ERR-09-001", message="down")
    status, headers, body = await get(http_session, server)
    assert (status, headers["Retry-After"]) == (502, "3")
    assert body["error_code"] == "ERR-09-001" and body["message"] == "down"
    assert body["request_id"] == headers["X-Request-ID"]


async def test_a_brown_out_refuses_a_fraction(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    server.outage = Outage(fraction=0.3, seed=7)
    statuses = [(await get(http_session, server))[0] for _ in range(200)]
    refused = statuses.count(503)
    assert 30 <= refused <= 90 and statuses.count(200) == 200 - refused
    assert server.outage_count == refused


async def test_the_outage_comes_before_the_rate_limit(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    server.rate_limit = RateLimit(rate=0.001, burst=1)
    server.outage = True
    assert (await get(http_session, server))[0] == 503
    server.outage = None
    assert (await get(http_session, server))[0] == 200  # the bucket was not touched


def test_the_sdk_sees_an_outage_as_server_errors(server: FakeKMSServer) -> None:

    server.outage = True

    async def go() -> ServerError:
        policy = RetryPolicy(max_retries=0)
        async with AsyncKMSClient(server.api_key, server.base_url, retry_policy=policy) as c:
            with pytest.raises(ServerError) as caught:
                await c.get_kms_info("phala")
            return caught.value

    assert asyncio.run(go()).status == 503


@pytest.mark.parametrize(
    "kwargs",
    [
        {"status": 404},
        {"fraction": 0},
        {"fraction": 1.5},
        {"retry_after": datetime(2030, 1, 1)},
    ],
)
def test_a_bad_outage_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Outage(**kwargs)


def test_they_are_public() -> None:
    import phala_kms.testing as testing

    assert "RateLimit" in testing.__all__ and "Outage" in testing.__all__
    assert testing.RateLimit is RateLimit and testing.Outage is Outage
