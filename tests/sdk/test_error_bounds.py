"""Bounded errors: whatever a server sends, one exception holds about a kilobyte of text
plus at most 64 KiB of body, and an error body is never downloaded past 64 KiB.

On the old main a 404 whose ``detail`` was 10 MB gave ``len(str(err)) == 10_000_139``,
and one retried call against an endless chunked 500 downloaded 16 MiB per attempt.
Every end-to-end test runs on both clients (``kms`` is parametrized async/sync).
"""

from __future__ import annotations

import gc
import sys
import threading
import tracemalloc
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from phala_kms import NotFoundError, ResponseValidationError, ServerError
from phala_kms._constants import (
    MAX_ERROR_BODY_BYTES,
    MAX_ERROR_BODY_CHARS,
    MAX_ERROR_FIELD_CHARS,
    MAX_ERROR_MESSAGE_CHARS,
)
from phala_kms._responses import make_redirect_error, make_status_error
from phala_kms.testing import FakeKMSServer, HugeBodyFault, StatusFault
from tests.helpers import ClientDriver, MakeClient

ELLIPSIS = "\u2026"
APP_IDS = [f"{i:040x}" for i in range(1, 201)]


def cut(text: str, limit: int = MAX_ERROR_FIELD_CHARS) -> str:
    """What a field of ``text`` must become: cut to ``limit`` characters, ending in …"""
    return text[: limit - 1] + ELLIPSIS


@pytest.fixture
def bytes_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every body byte the client pulls out of aiohttp (any thread)."""
    counts: list[int] = []
    lock = threading.Lock()
    original = aiohttp.StreamReader.read

    async def counting(self: aiohttp.StreamReader, n: int = -1) -> bytes:
        data = await original(self, n)
        with lock:
            counts.append(len(data))
        return data

    monkeypatch.setattr(aiohttp.StreamReader, "read", counting)
    return counts


def test_the_caps_are_about_a_kilobyte() -> None:
    assert MAX_ERROR_FIELD_CHARS == 1024
    assert MAX_ERROR_MESSAGE_CHARS == 1024
    assert MAX_ERROR_BODY_BYTES == MAX_ERROR_BODY_CHARS == 64 * 1024


# --------------------------------------------------------------------------- end to end


def test_every_text_field_is_capped(server: FakeKMSServer, kms: ClientDriver) -> None:
    body = {
        "error_code": "E" * 3000,
        "message": "m" * 40_000,
        "request_id": "r" * 3000,
        "details": [],
        "suggestions": ["s" * 3000],
        "links": [],
    }
    server.inject("kms_info", StatusFault(404, body=body))
    with pytest.raises(NotFoundError) as caught:
        kms.get_kms_info("phala")
    err = caught.value
    assert err.server_message == cut("m" * 40_000)
    assert err.error_code == cut("E" * 3000)
    assert err.request_id == cut("r" * 3000)
    assert err.suggestions == (cut("s" * 3000),)
    assert len(str(err)) == MAX_ERROR_MESSAGE_CHARS
    assert str(err).endswith(ELLIPSIS)
    assert str(err).startswith("404 Not Found: mmm")
    assert err.message == str(err)


def test_a_long_message_leaves_room_for_the_url(server: FakeKMSServer, kms: ClientDriver) -> None:
    server.inject("kms_info", StatusFault(404, body={"detail": "x" * 50_000}))
    with pytest.raises(NotFoundError) as caught:
        kms.get_kms_info("phala")
    err = caught.value
    text = str(err)
    assert err.server_message == cut("x" * 50_000)
    assert len(text) <= MAX_ERROR_MESSAGE_CHARS
    assert text.startswith("404 Not Found: xxx")
    assert ELLIPSIS in text
    # the request id (from the header) and the URL survive the cut
    assert f"request_id={err.request_id}" in text
    assert text.endswith(f"[GET {server.base_url}/kms/phala]")


def test_a_ten_megabyte_detail_gives_a_small_error(
    server: FakeKMSServer, kms: ClientDriver
) -> None:
    server.inject("kms_info", StatusFault(404, body={"detail": "x" * 10_000_000}))
    with pytest.raises(NotFoundError) as caught:
        kms.get_kms_info("phala")
    err = caught.value
    assert len(str(err)) <= MAX_ERROR_MESSAGE_CHARS  # was 10,000,139 on the old main
    assert len(err.body) == MAX_ERROR_BODY_CHARS  # only the first 64 KiB were read
    assert err.server_message is not None
    assert len(err.server_message) <= MAX_ERROR_FIELD_CHARS


def test_an_endless_error_body_is_read_up_to_64_kib_per_attempt(
    server: FakeKMSServer, make_client: MakeClient, bytes_read: list[int]
) -> None:
    # 256 MiB, chunked: without the error cap each attempt would read max_response_bytes
    server.inject("kms_info", HugeBodyFault(256 * 1024 * 1024, status=500, chunked=True), times=3)
    kms = make_client(max_retries=2)
    with pytest.raises(ServerError) as caught:
        kms.get_kms_info("phala")
    err = caught.value
    assert err.attempts == 3
    assert server.route_counts["kms_info"] == 3
    assert len(err.body) == MAX_ERROR_BODY_CHARS
    # each attempt stops at the first read past 64 KiB: at most 2 x 64 KiB (+1) each
    assert sum(bytes_read) <= 3 * (2 * MAX_ERROR_BODY_BYTES + 1)
    assert len(str(err)) <= MAX_ERROR_MESSAGE_CHARS


def test_an_error_body_with_a_length_is_cut_too(
    server: FakeKMSServer, kms: ClientDriver, bytes_read: list[int]
) -> None:
    server.inject("kms_info", HugeBodyFault(8 * 1024 * 1024, status=404))
    with pytest.raises(NotFoundError) as caught:
        kms.get_kms_info("phala")
    assert len(caught.value.body) == MAX_ERROR_BODY_CHARS
    assert sum(bytes_read) <= 2 * MAX_ERROR_BODY_BYTES + 1


def test_a_success_body_keeps_max_response_bytes(
    server: FakeKMSServer, make_client: MakeClient, bytes_read: list[int]
) -> None:
    size = 1024 * 1024  # well over the 64 KiB error cap, under max_response_bytes
    server.inject("kms_info", HugeBodyFault(size, status=200))
    kms = make_client(max_response_bytes=2 * size)
    with pytest.raises(ResponseValidationError) as caught:  # read whole, then the wrong shape
        kms.get_kms_info("phala")
    assert "exceeds" not in str(caught.value)
    assert sum(bytes_read) == size
    assert len(str(caught.value)) <= MAX_ERROR_MESSAGE_CHARS


def buffers_held(err: BaseException) -> int:
    """Bytes of text and binary buffers an error keeps alive: its attributes, and the
    strings, bytes and response bodies held by locals of the frames its traceback keeps."""
    seen: set[int] = set()

    def size(value: object) -> int:
        if id(value) in seen:
            return 0
        seen.add(id(value))
        if isinstance(value, (str, bytes, bytearray)):
            return sys.getsizeof(value)
        if isinstance(value, tuple):
            return sum(size(item) for item in value)
        body = getattr(value, "body", None)  # e.g. a RawResponse in a frame
        return size(body) if isinstance(body, bytes) else 0

    total = 0
    chained: BaseException | None = err
    while chained is not None:
        total += size(chained.args) + sum(size(v) for v in vars(chained).values())
        tb = chained.__traceback__
        while tb is not None:
            total += sum(size(local) for local in tb.tb_frame.f_locals.values())
            tb = tb.tb_next
        chained = chained.__cause__ or chained.__context__
    return total


def test_many_errors_stay_small(server: FakeKMSServer, kms: ClientDriver) -> None:
    """200 failures of a fan-out, each with a 1 MB detail, kept with return_exceptions."""
    server.inject("app_pubkey", StatusFault(404, body={"detail": "x" * 1_000_000}), times=None)
    results: list[Any] = kms.get_app_env_encrypt_pubkeys("phala", APP_IDS, return_exceptions=True)
    assert len(results) == len(APP_IDS)
    assert all(isinstance(r, NotFoundError) for r in results)
    for err in results:
        assert len(str(err)) <= MAX_ERROR_MESSAGE_CHARS
        assert len(err.body) <= MAX_ERROR_BODY_CHARS
        assert err.__traceback__ is not None
        # its 64 KiB body once (not again as raw bytes in a frame) and a few KiB more
        assert buffers_held(err) < 72 * 1024, buffers_held(err)


# --------------------------------------------------------------------------- the pure parse


def test_two_thousand_ten_megabyte_errors_hold_kilobytes_each() -> None:
    body = b'{"detail": "' + b"x" * 10_000_000 + b'"}'
    headers = CIMultiDict({"X-Request-ID": "req-1"})
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        errors = [
            make_status_error(
                status=404, headers=headers, body=body, method="GET", url="u", now=0.0
            )
            for _ in range(2000)
        ]
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert all(len(str(e)) <= MAX_ERROR_MESSAGE_CHARS for e in errors)
    assert held / len(errors) < 80 * 1024, held  # 64 KiB of body, and little else


def test_parsed_fields_are_capped_without_the_transport() -> None:
    body = (
        b'{"detail": {"error_code": "' + b"E" * 5000 + b'", "message": "' + b"m" * 5000
        + b'", "request_id": "' + b"r" * 5000 + b'"}}'
    )  # fmt: skip
    err = make_status_error(
        status=409, headers=CIMultiDict(), body=body, method="GET", url="u", now=0.0
    )
    assert err.server_message == cut("m" * 5000)
    assert err.error_code == cut("E" * 5000)
    assert err.request_id == cut("r" * 5000)
    assert len(str(err)) <= MAX_ERROR_MESSAGE_CHARS


def test_a_header_request_id_and_a_redirect_location_are_capped() -> None:
    headers = CIMultiDict({"X-Request-ID": "r" * 5000, "Location": "https://x/" + "l" * 5000})
    err = make_status_error(status=503, headers=headers, body=b"", method="GET", url="u", now=0.0)
    assert err.request_id == cut("r" * 5000)
    assert len(str(err)) <= MAX_ERROR_MESSAGE_CHARS
    redirect = make_redirect_error(status=307, headers=headers, body=b"", method="GET", url="u")
    assert redirect.location == cut("https://x/" + "l" * 5000)
    assert redirect.request_id == cut("r" * 5000)
    assert len(str(redirect)) <= MAX_ERROR_MESSAGE_CHARS


def test_short_values_are_untouched() -> None:
    body = b'{"error_code": "ERR-02-011", "message": "KMS not found", "request_id": "abc"}'
    err = make_status_error(
        status=404, headers=CIMultiDict(), body=body, method="GET", url="u", now=0.0
    )
    assert (err.server_message, err.error_code, err.request_id) == (
        "KMS not found",
        "ERR-02-011",
        "abc",
    )
    assert (
        str(err) == "404 Not Found: KMS not found (error_code=ERR-02-011, request_id=abc) [GET u]"
    )
