"""The fake Phala Cloud KMS API: fault injection, request log, counters, threads, CLI entry."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import pytest

from phala_kms.testing import (
    REDACTED,
    DropConnectionFault,
    FakeKMSServer,
    GatewayHTMLFault,
    HugeBodyFault,
    LatencyFault,
    NonJSONFault,
    RedirectFault,
    ResetMidBodyFault,
    StatusFault,
    ThreadedFakeKMSServer,
    TruncatedJSONFault,
    WrongShapeFault,
    run_fake_server,
)

APP_ID = "8f3e5c2a9b1d4e7f6a0c3b2d5e8f1a4c7b0d9e63"


def headers(server: FakeKMSServer) -> dict[str, str]:
    return {"X-API-Key": server.api_key}


async def fetch(
    http_session: aiohttp.ClientSession, server: FakeKMSServer, path: str = "/kms"
) -> tuple[int, Any, bytes]:
    async with http_session.get(
        server.base_url + path, headers=headers(server), allow_redirects=False
    ) as response:
        return response.status, response.headers.copy(), await response.read()


# -- statuses ------------------------------------------------------------------------------


async def test_status_with_retry_after_seconds(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    server.inject("kms_list", StatusFault(429, retry_after=2))
    status, response_headers, body = await fetch(http_session, server)
    assert status == 429
    assert response_headers["Retry-After"] == "2"
    assert json.loads(body) == {"detail": "Too Many Requests"}
    assert "X-Request-ID" in response_headers
    assert (await fetch(http_session, server))[0] == 200


async def test_status_with_retry_after_date(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    server.inject("kms_list", StatusFault(503, retry_after=when))
    status, response_headers, _ = await fetch(http_session, server)
    assert status == 503
    assert response_headers["Retry-After"] == "Wed, 02 Jan 2030 01:04:05 GMT"
    assert parsedate_to_datetime(response_headers["Retry-After"]) == when
    server.inject("kms_list", StatusFault(503, retry_after=1.5))
    server.inject("kms_list", StatusFault(503, retry_after="soon"))
    assert (await fetch(http_session, server))[1]["Retry-After"] == "1.5"
    assert (await fetch(http_session, server))[1]["Retry-After"] == "soon"
    with pytest.raises(ValueError, match="aware"):
        StatusFault(503, retry_after=datetime(2030, 1, 1))


@pytest.mark.parametrize("nested", [False, True])
async def test_status_with_error_code(
    server: FakeKMSServer, http_session: aiohttp.ClientSession, nested: bool
) -> None:
    fault = StatusFault(429, error_code="ERR-05-002", message="Too many requests", nested=nested)
    server.inject("kms_list", fault)
    status, response_headers, raw = await fetch(http_session, server)
    body = json.loads(raw)
    error = body["detail"] if nested else body
    assert status == 429
    assert error["error_code"] == "ERR-05-002"
    assert error["message"] == "Too many requests"
    assert error["request_id"] == response_headers["X-Request-ID"]
    assert (error["details"], error["suggestions"], error["links"]) == ([], [], [])


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (StatusFault(409), {"detail": "Conflict"}),
        (StatusFault(408), {"detail": "Request Timeout"}),
        (StatusFault(500, message="boom"), {"detail": "boom"}),
        (StatusFault(502, body={"message": "boom"}), {"message": "boom"}),
    ],
)
async def test_status_bodies(
    server: FakeKMSServer,
    http_session: aiohttp.ClientSession,
    fault: StatusFault,
    expected: dict[str, str],
) -> None:
    server.inject("*", fault)
    status, _, body = await fetch(http_session, server, "/kms/phala")
    assert status == fault.status
    assert json.loads(body) == expected


async def test_status_with_raw_body_and_headers(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    server.inject("kms_list", StatusFault(500, body="plain failure", headers={"X-A": "1"}))
    status, response_headers, body = await fetch(http_session, server)
    assert (status, body, response_headers["X-A"]) == (500, b"plain failure", "1")
    assert response_headers["Content-Type"].startswith("text/plain")


async def test_times_expires_and_counts_hits(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    injection = server.inject("kms_list", StatusFault(503), times=2)
    assert injection.remaining == 2
    statuses = [(await fetch(http_session, server))[0] for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert injection.hits == 2
    assert injection.remaining == 0
    assert injection.exhausted
    assert server.injections == []
    assert server.route_counts["kms_list"] == 3


async def test_times_none_lasts_until_cleared(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    injection = server.inject("kms_list", StatusFault(500), times=None)
    assert injection.remaining is None
    assert [(await fetch(http_session, server))[0] for _ in range(4)] == [500] * 4
    server.clear_faults()
    assert (await fetch(http_session, server))[0] == 200


async def test_faults_target_routes_globs_and_everything(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    server.inject("app_pubkey", StatusFault(500), times=None)
    assert (await fetch(http_session, server))[0] == 200
    assert (await fetch(http_session, server, f"/kms/phala/pubkey/{APP_ID}"))[0] == 500
    server.clear_faults()
    server.inject("/kms/*/nodes", StatusFault(502), times=None)
    assert (await fetch(http_session, server, "/kms/base/nodes"))[0] == 502
    assert (await fetch(http_session, server, "/kms/base"))[0] == 200
    server.clear_faults()
    server.inject("*", StatusFault(504), times=2)
    assert (await fetch(http_session, server, "/kms/on-chain/base"))[0] == 504
    assert (await fetch(http_session, server, "/kms/phala/next_app_id"))[0] == 504
    assert (await fetch(http_session, server, "/kms/phala/next_app_id"))[0] == 200


async def test_faults_apply_before_auth(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    server.inject("kms_list", GatewayHTMLFault(503))
    async with http_session.get(server.base_url + "/kms") as response:
        assert response.status == 503
    async with http_session.get(server.base_url + "/kms") as response:
        assert response.status == 401


def test_inject_rejects_bad_arguments() -> None:
    server = FakeKMSServer(phala_node_count=0)
    with pytest.raises(ValueError, match="unknown route"):
        server.inject("kms", StatusFault(500))
    with pytest.raises(ValueError, match="times"):
        server.inject("kms_list", StatusFault(500), times=0)
    with pytest.raises(TypeError):
        server.inject("kms_list", 500)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status"):
        StatusFault(100)
    with pytest.raises(ValueError, match="status"):
        RedirectFault(200)
    with pytest.raises(ValueError, match="status"):
        GatewayHTMLFault(200)
    with pytest.raises(ValueError, match=">= 0"):
        LatencyFault(-1)
    with pytest.raises(ValueError, match="fraction"):
        TruncatedJSONFault(1.0)
    with pytest.raises(ValueError, match="fraction"):
        ResetMidBodyFault(-0.1)
    with pytest.raises(ValueError, match="size"):
        HugeBodyFault(3)


# -- broken bodies ---------------------------------------------------------------------------


async def test_latency_then_the_real_response(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    server.inject("kms_list", LatencyFault(0.2))
    started = time.monotonic()
    status, _, body = await fetch(http_session, server)
    assert time.monotonic() - started >= 0.2
    assert status == 200
    assert json.loads(body)["total"] == 3
    started = time.monotonic()
    await fetch(http_session, server)
    assert time.monotonic() - started < 0.2


async def test_latency_combines_with_another_fault(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    latency = server.inject("kms_list", LatencyFault(0.1))
    status_fault = server.inject("kms_list", StatusFault(503))
    later = server.inject("kms_list", StatusFault(500))
    started = time.monotonic()
    assert (await fetch(http_session, server))[0] == 503
    assert time.monotonic() - started >= 0.1
    assert (latency.hits, status_fault.hits, later.hits) == (1, 1, 0)
    assert (await fetch(http_session, server))[0] == 500


async def test_gateway_html(server: FakeKMSServer, http_session: aiohttp.ClientSession) -> None:
    server.inject("kms_list", GatewayHTMLFault(502))
    status, response_headers, body = await fetch(http_session, server)
    assert status == 502
    assert response_headers["Content-Type"].startswith("text/html")
    assert b"<html>" in body
    assert b"502 Bad Gateway" in body
    server.inject("kms_list", GatewayHTMLFault(503, retry_after=7, body="<p>down</p>"))
    status, response_headers, body = await fetch(http_session, server)
    assert (status, response_headers["Retry-After"], body) == (503, "7", b"<p>down</p>")


async def test_truncated_json(server: FakeKMSServer, http_session: aiohttp.ClientSession) -> None:
    full = (await fetch(http_session, server))[2]
    server.inject("kms_list", TruncatedJSONFault())
    status, response_headers, body = await fetch(http_session, server)
    assert status == 200
    assert response_headers["Content-Type"].startswith("application/json")
    assert body == full[: len(full) // 2]
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)


async def test_non_json(server: FakeKMSServer, http_session: aiohttp.ClientSession) -> None:
    server.inject("kms_info", NonJSONFault())
    status, response_headers, body = await fetch(http_session, server, "/kms/phala")
    assert (status, body) == (200, b"OK")
    assert response_headers["Content-Type"].startswith("text/plain")
    server.inject("kms_info", NonJSONFault("<ok/>", content_type="application/json"))
    status, response_headers, body = await fetch(http_session, server, "/kms/phala")
    assert response_headers["Content-Type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)


async def test_wrong_shape(server: FakeKMSServer, http_session: aiohttp.ClientSession) -> None:
    server.inject("app_pubkey", WrongShapeFault())
    server.inject("app_pubkey", WrongShapeFault({"public_key": 5}))
    path = f"/kms/phala/pubkey/{APP_ID}"
    first = json.loads((await fetch(http_session, server, path))[2])
    assert "public_key" not in first
    assert json.loads((await fetch(http_session, server, path))[2]) == {"public_key": 5}


@pytest.mark.parametrize("rst", [False, True])
async def test_dropped_connection(
    server: FakeKMSServer, http_session: aiohttp.ClientSession, rst: bool
) -> None:
    # aiohttp's client retries an idempotent request once after a disconnect: drop twice.
    server.inject("kms_list", DropConnectionFault(rst=rst), times=2)
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await fetch(http_session, server)
    assert server.route_counts["kms_list"] == 2
    assert (await fetch(http_session, server))[0] == 200


async def test_a_single_drop_is_absorbed_by_aiohttp(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    server.inject("kms_list", DropConnectionFault())
    assert (await fetch(http_session, server))[0] == 200
    assert server.route_counts["kms_list"] == 2


@pytest.mark.parametrize("rst", [False, True])
async def test_reset_mid_body(
    server: FakeKMSServer, http_session: aiohttp.ClientSession, rst: bool
) -> None:
    server.inject("kms_list", ResetMidBodyFault(rst=rst))
    async with http_session.get(server.base_url + "/kms", headers=headers(server)) as r:
        assert r.status == 200
        assert r.content_length is not None
        assert r.content_length > 100
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    assert (await fetch(http_session, server))[0] == 200


async def test_redirect_to_another_host(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    server.inject("kms_list", RedirectFault())
    status, response_headers, _ = await fetch(http_session, server)
    assert status == 307
    assert response_headers["Location"] == "http://redirect-target.invalid/api/v1/kms"
    server.inject("kms_list", RedirectFault(301, location="https://evil.example/x"))
    status, response_headers, _ = await fetch(http_session, server)
    assert (status, response_headers["Location"]) == (301, "https://evil.example/x")


@pytest.mark.parametrize("chunked", [False, True])
async def test_huge_body(
    server: FakeKMSServer, http_session: aiohttp.ClientSession, chunked: bool
) -> None:
    size = 1024 * 1024 + 7
    server.inject("kms_list", HugeBodyFault(size=size, chunked=chunked))
    status, response_headers, body = await fetch(http_session, server)
    assert status == 200
    assert len(body) == size
    assert ("Content-Length" in response_headers) is not chunked
    assert len(json.loads(body)["padding"]) == size - 14


async def test_client_walking_away_from_a_huge_body(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    server.inject("kms_list", HugeBodyFault(size=32 * 1024 * 1024))
    async with http_session.get(server.base_url + "/kms", headers=headers(server)) as r:
        await r.content.read(1024)
        r.close()
    assert (await fetch(http_session, server))[0] == 200


# -- log and counters ------------------------------------------------------------------------


async def test_request_log_redacts_secrets(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    before = time.time()
    async with http_session.get(
        server.base_url + "/kms",
        params={"page": "2", "is_onchain": "false"},
        headers={
            "X-API-Key": server.api_key,
            "X-Phala-Version": "2026-05-22",
            "Authorization": "Bearer secret",
            "User-Agent": "phala-kms/test",
        },
    ) as response:
        assert response.status == 200
    (entry,) = server.requests
    assert entry.method == "GET"
    assert entry.path == "/api/v1/kms"
    assert entry.route == "kms_list"
    assert dict(entry.query) == {"page": "2", "is_onchain": "false"}
    assert entry.phala_version == "2026-05-22"
    assert entry.headers["X-API-Key"] == REDACTED
    assert entry.headers["Authorization"] == REDACTED
    assert entry.headers["User-Agent"] == "phala-kms/test"
    assert before <= entry.timestamp <= time.time()
    assert server.api_key not in repr(server.requests)
    assert "secret" not in repr(entry)


async def test_counters_and_reset(
    server: FakeKMSServer, http_session: aiohttp.ClientSession
) -> None:
    await fetch(http_session, server)
    await fetch(http_session, server, "/kms/phala")
    await fetch(http_session, server, "/kms/phala")
    await fetch(http_session, server, "/kms/")
    assert server.route_counts == {"kms_list": 1, "kms_info": 2, "not_found": 1}
    assert server.total_requests == 4
    assert server.peak_in_flight == 1
    assert server.in_flight == 0
    server.inject("kms_list", StatusFault(500), times=None)
    server.reset()
    assert server.route_counts == {}
    assert server.requests == []
    assert server.injections == []
    assert server.total_requests == 0
    assert server.peak_in_flight == 0
    assert (await fetch(http_session, server))[0] == 200


async def test_request_log_is_bounded(http_session: aiohttp.ClientSession) -> None:
    async with FakeKMSServer(request_log_size=2, phala_node_count=1) as server:
        for _ in range(3):
            await fetch(http_session, server)
        assert len(server.requests) == 2
        assert server.route_counts["kms_list"] == 3


async def test_peak_concurrency(server: FakeKMSServer) -> None:
    server.inject("app_pubkey", LatencyFault(0.15), times=None)
    url = server.base_url + f"/kms/phala/pubkey/{APP_ID}"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http_session:

        async def one(gate: asyncio.Semaphore | None) -> int:
            if gate is None:
                async with http_session.get(url, headers=headers(server)) as response:
                    return response.status
            async with gate, http_session.get(url, headers=headers(server)) as response:
                return response.status

        statuses = await asyncio.gather(*(one(None) for _ in range(20)))
        assert statuses == [200] * 20
        assert server.peak_in_flight == 20
        assert server.in_flight == 0

        server.reset()
        server.inject("app_pubkey", LatencyFault(0.05), times=None)
        gate = asyncio.Semaphore(5)
        await asyncio.gather(*(one(gate) for _ in range(20)))
        assert server.peak_in_flight == 5
        assert server.route_counts["app_pubkey"] == 20


# -- threads and the CLI entry -------------------------------------------------------------


def sync_get(server: FakeKMSServer, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(server.base_url + path, headers=headers(server))  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


def port_is_closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_threaded_server_from_sync_code() -> None:
    threads_before = threading.active_count()
    with FakeKMSServer.in_thread(phala_node_count=4) as server:
        status, body = sync_get(server, "/kms/phala/nodes")
        assert (status, body["total"]) == (200, 4)
        server.inject("kms_info", StatusFault(503, retry_after=1))
        assert sync_get(server, "/kms/phala")[0] == 503
        assert sync_get(server, "/kms/nope")[0] == 404
        assert server.route_counts == {"contract_nodes": 1, "kms_info": 2}
        port = server.port
    assert port_is_closed(port)
    assert threading.active_count() == threads_before


def test_threaded_server_start_stop_explicitly() -> None:
    threaded = ThreadedFakeKMSServer()
    server = threaded.start()
    try:
        with pytest.raises(RuntimeError, match="already"):
            threaded.start()
        assert sync_get(server, "/kms/phala/next_app_id")[0] == 200
    finally:
        threaded.stop()
    threaded.stop()  # idempotent
    assert port_is_closed(server.port)


def test_threaded_server_reports_bind_errors() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        threaded = ThreadedFakeKMSServer(FakeKMSServer(port=taken.getsockname()[1]))
        with pytest.raises(OSError):
            threaded.start()


def test_thread_fixture(fake_kms_server_thread: FakeKMSServer) -> None:
    status, body = sync_get(fake_kms_server_thread, "/kms")
    assert status == 200
    assert body["items"][0]["k256_pubkey"] == fake_kms_server_thread.k256_pubkey


def test_run_fake_server_prints_and_stops() -> None:
    out = io.StringIO()
    stop = threading.Event()
    thread = threading.Thread(
        target=run_fake_server,
        kwargs={"port": 0, "out": out, "stop_event": stop, "api_key": "phak_cli"},
    )
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while "Ctrl-C" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        lines = dict(
            line.removeprefix("export ").split("=", 1)
            for line in out.getvalue().splitlines()
            if line.startswith("export ")
        )
        base_url = lines["PHALA_CLOUD_API_PREFIX"]
        assert base_url.startswith("http://127.0.0.1:")
        assert base_url.endswith("/api/v1")
        assert lines["PHALA_CLOUD_API_KEY"] == "phak_cli"
        request = urllib.request.Request(base_url + "/kms", headers={"X-API-Key": "phak_cli"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            assert response.status == 200
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
