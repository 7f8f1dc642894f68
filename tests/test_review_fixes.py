"""Regression tests for defects found in review: each failed before its fix."""

from __future__ import annotations

import copy
import gzip
import json
import pickle
import threading
import traceback
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web

from phala_kms import (
    AsyncKMSClient,
    ClientStateError,
    InvalidArgumentError,
    KMSClient,
    KMSInfo,
    NextAppIDs,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
    SignatureVerificationError,
)
from phala_kms._convert import DecodeError, structure
from phala_kms.testing import FakeKMSServer, HugeBodyFault, decrypt_env_vars
from tests.conftest import API_KEY, load_fixture

APP_ID = "cd" * 20
ONE_MIB = 1024 * 1024


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


async def test_a_huge_error_body_keeps_its_status_and_is_retried() -> None:
    async with FakeKMSServer(phala_node_count=1, include_onchain=False) as server:
        server.inject("kms_info", HugeBodyFault(16 * ONE_MIB + 1, status=503), times=None)
        policy = RetryPolicy(max_retries=1, initial_backoff=0, jitter=0)
        async with AsyncKMSClient(server.api_key, server.base_url, retry_policy=policy) as c:
            with pytest.raises(ServerError) as caught:
                await c.get_kms_info("phala")
    assert caught.value.status == 503
    assert caught.value.attempts == 2
    assert len(caught.value.body) == 64 * 1024  # cut, not dropped
    assert server.route_counts["kms_info"] == 2


def test_models_hash_pickle_copy_and_serialise() -> None:
    page = structure(
        load_fixture("kms_list_page1.json"), __import__("phala_kms").Paginated[KMSInfo]
    )
    with_extra = page.items[3]
    assert with_extra.extra == {"region": "us-east"}
    assert len(set(page.items)) == 5  # hashable, so de-duplicable
    for obj in (page, with_extra):
        assert pickle.loads(pickle.dumps(obj)) == obj
        assert copy.deepcopy(obj) == obj
    assert json.loads(json.dumps(attrs.asdict(with_extra)))["extra"] == {"region": "us-east"}
    with pytest.raises(TypeError):
        with_extra.extra["region"] = "eu"  # type: ignore[index]
    with pytest.raises(TypeError):
        with_extra.extra.update(x=1)  # type: ignore[attr-defined]


def test_next_app_ids_are_checked_and_normalised() -> None:
    ids = structure({"app_ids": [{"app_id": "0x" + "AB" * 20, "nonce": 0}]}, NextAppIDs)
    assert ids.app_ids[0].app_id == "ab" * 20
    for bad in ({"app_id": "zz", "nonce": 1}, {"app_id": "ab" * 20, "nonce": -1}):
        with pytest.raises(DecodeError):
            structure({"app_ids": [bad]}, NextAppIDs)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeKMSServer]:
    with FakeKMSServer.in_thread(phala_node_count=2) as srv:
        yield srv


def test_fan_out_refuses_a_missing_signer_instead_of_skipping_verification(
    server: FakeKMSServer,
) -> None:
    server.reset()
    with KMSClient(server.api_key, server.base_url) as kms:
        with pytest.raises(SignatureVerificationError) as caught:
            kms.get_app_env_encrypt_pubkeys("phala", [APP_ID], trusted_signer=None)  # type: ignore[arg-type]
        assert caught.value.reason == "invalid_trusted_signer"
        assert server.total_requests == 0
        unverified = kms.get_app_env_encrypt_pubkeys("phala", [APP_ID])  # omitted: unverified
        assert unverified[0].public_key_bytes == server.app_public_key("phala", APP_ID)


def test_encrypting_a_one_shot_iterable_encrypts_every_variable(server: FakeKMSServer) -> None:
    pairs = {"A": "1", "B": "two"}
    with KMSClient(server.api_key, server.base_url) as kms:
        sealed = kms.encrypt_env_vars_for_app(
            "phala", APP_ID, iter(pairs.items()), trusted_signer=server.k256_pubkey
        )
    opened = decrypt_env_vars(sealed, server.app_private_key("phala", APP_ID))
    assert [(v.key, v.value) for v in opened] == list(pairs.items())


@pytest.mark.parametrize("kms_id", ["phala/next_app_id", "a\\b", "%2e%2e", "a?b", "a#b", "a\nb"])
def test_ids_that_a_decoding_router_could_reroute_are_refused(
    server: FakeKMSServer, kms_id: str
) -> None:
    server.reset()
    with KMSClient(server.api_key, server.base_url) as kms, pytest.raises(InvalidArgumentError):
        kms.get_kms_info(kms_id)
    assert server.total_requests == 0


def test_a_refused_close_from_the_loop_thread_leaves_the_client_whole(
    server: FakeKMSServer,
) -> None:
    kms = KMSClient(server.api_key, server.base_url)
    try:
        refused: list[BaseException] = []

        def on_progress(done: int, total: int) -> None:
            try:
                kms.close()
            except ClientStateError as exc:
                refused.append(exc)

        kms.get_app_env_encrypt_pubkeys("phala", [APP_ID], on_progress=on_progress)
        assert len(refused) == 1
        assert not kms.closed
        assert kms.get_kms_info("phala").slug == "phala"  # still fully working
    finally:
        kms.close()
    assert "phala-kms-loop" not in [t.name for t in threading.enumerate()]


async def test_the_api_key_stays_out_of_captured_locals_and_chained_request_info() -> None:
    # A malformed status line makes aiohttp raise an error that carries request_info.
    async def bad_status(reader: Any, writer: Any) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.1 9999 Nope\r\n\r\n")
        await writer.drain()
        writer.close()

    import asyncio

    srv = await asyncio.start_server(bad_status, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        async with AsyncKMSClient(API_KEY, f"http://127.0.0.1:{port}/api/v1", max_retries=0) as c:
            with pytest.raises(Exception) as caught:
                await c.get_kms_info("phala")
    finally:
        srv.close()
        await srv.wait_closed()
    err = caught.value
    text = "".join(traceback.TracebackException.from_exception(err, capture_locals=True).format())
    assert "headers" in text  # the locals really were captured
    assert API_KEY not in text
    cause = err.__cause__
    assert cause is not None
    assert API_KEY not in repr(getattr(cause, "request_info", ""))


async def test_a_callers_raise_for_status_session_does_not_change_error_mapping() -> None:
    async with (
        FakeKMSServer(phala_node_count=1, include_onchain=False) as server,
        aiohttp.ClientSession(raise_for_status=True) as session,
    ):
        client = AsyncKMSClient(server.api_key, server.base_url, session=session)
        from phala_kms import NotFoundError

        with pytest.raises(NotFoundError) as caught:
            await client.get_kms_info("no-such-kms")
        assert caught.value.error_code == "ERR-02-011"
        await client.aclose()
