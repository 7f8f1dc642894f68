"""Errors from responses: every body form of the API (spec section 3) becomes the typed
exception for its status, with its message, error code, request id, details and
``Retry-After``; a redirect is a ``RedirectError``; ``decode_response`` routes each
status class; any status, headers and body give an ``APIStatusError`` (fuzz); and the
same holds end to end through both clients."""

from __future__ import annotations

import email.utils
import json
import math
import pickle
from datetime import timezone
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from phala_kms import (
    APIStatusError,
    KMSInfo,
    NotFoundError,
    RateLimitError,
    RedirectError,
    ResponseValidationError,
    ServerError,
    UnprocessableEntityError,
    errors,
)
from phala_kms._responses import (
    MAX_ERROR_BODY_CHARS,
    decode_response,
    make_redirect_error,
    make_status_error,
)
from phala_kms.testing import FakeKMSServer, StatusFault
from tests.helpers import fixture_bytes

URL = "https://cloud-api.phala.com/api/v1/kms/nope"
NOW = 1_800_000_000.0


def parse(status: int, body: bytes, **headers: str) -> errors.APIStatusError:
    return make_status_error(
        status=status,
        headers=CIMultiDict(headers),
        body=body,
        method="GET",
        url=URL,
        now=NOW,
    )


def test_detail_string() -> None:
    err = parse(404, fixture_bytes("error_detail_string.json"))
    assert type(err) is errors.NotFoundError
    assert err.status == 404
    assert err.message.startswith("404 Not Found: KMS not found")
    assert err.error_code is None
    assert err.request_id is None
    assert err.body == fixture_bytes("error_detail_string.json").decode()


def test_structured_top_level() -> None:
    err = parse(404, fixture_bytes("error_structured.json"), **{"X-Request-ID": "hdr_1"})
    assert type(err) is errors.NotFoundError
    assert err.error_code == "ERR-02-011"
    assert err.server_message == "KMS not found"
    assert err.request_id == "req_01HZX9"  # the body's id wins over the header's
    assert err.details == ({"field": "kms_id", "value": {"given": "nope"}, "message": None},)
    assert err.suggestions == ("List available KMS with GET /kms",)
    assert err.links == ({"url": "https://docs.phala.com/", "label": "Docs"},)
    assert "KMS not found" in str(err)
    assert "ERR-02-011" in str(err)
    assert "req_01HZX9" in str(err)


def test_structured_nested_under_detail_with_retry_after() -> None:
    err = parse(429, fixture_bytes("error_structured_nested.json"), **{"Retry-After": "3"})
    assert type(err) is errors.RateLimitError
    assert err.error_code == "ERR-05-002"
    assert err.request_id == "req_01HZXA"
    assert err.retry_after == 3.0
    assert "Too many requests" in str(err)


def test_retry_after_http_date() -> None:
    date = email.utils.formatdate(NOW + 12, usegmt=True)
    err = parse(503, b"", **{"Retry-After": date})
    assert type(err) is errors.ServerError
    assert err.retry_after == pytest.approx(12.0)


def test_validation_422() -> None:
    err = parse(422, fixture_bytes("error_validation_422.json"))
    assert type(err) is errors.UnprocessableEntityError
    assert len(err.validation_errors) == 1
    item = err.validation_errors[0]
    assert item.loc == ("query", "page_size")
    assert item.msg == "Input should be less than or equal to 100"
    assert item.type == "less_than_equal"
    assert item.ctx == {"le": 100}
    assert item.input == "500"
    assert "page_size: Input should be less than or equal to 100" in str(err)


def test_message_only() -> None:
    err = parse(500, fixture_bytes("error_message_only.json"))
    assert type(err) is errors.ServerError
    assert err.message.startswith("500 Internal Server Error: boom")


def test_html_gateway_page() -> None:
    err = parse(502, fixture_bytes("error_gateway_502.html"), **{"X-Request-ID": "gw-9"})
    assert type(err) is errors.ServerError
    assert err.message.startswith("502 Bad Gateway: 502 Bad Gateway")
    assert err.server_message == "502 Bad Gateway"
    assert "<html>" not in err.message
    assert err.request_id == "gw-9"
    assert "<center>" in err.body  # the raw body is kept for debugging


def test_plain_text_and_empty_and_odd_json() -> None:
    assert parse(503, b"upstream connect error").message.startswith(
        "503 Service Unavailable: upstream connect error"
    )
    assert parse(504, b"").message.startswith("504 Gateway Timeout [GET")
    # JSON that is not an object still yields a readable message and no crash
    assert "[1, 2]" in parse(500, b"[1, 2]").message
    assert parse(418, b'{"detail": 5}').status == 418


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.BadRequestError),
        (401, errors.AuthenticationError),
        (403, errors.PermissionDeniedError),
        (404, errors.NotFoundError),
        (409, errors.ConflictError),
        (422, errors.UnprocessableEntityError),
        (429, errors.RateLimitError),
        (500, errors.ServerError),
        (503, errors.ServerError),
        (599, errors.ServerError),
        (418, errors.APIStatusError),
    ],
)
def test_status_classes(status: int, cls: type[errors.APIStatusError]) -> None:
    err = parse(status, b'{"detail": "x"}')
    assert type(err) is cls
    assert isinstance(err, errors.APIResponseError)
    assert isinstance(err, errors.PhalaKMSError)


def test_long_body_is_truncated() -> None:
    err = parse(500, b"x" * (1024 * 1024))
    assert len(err.body) == 64 * 1024
    assert len(err.message) < 400


def test_redirect_error() -> None:
    err = make_redirect_error(
        status=307,
        headers=CIMultiDict({"Location": "https://evil.example/steal"}),
        body=b"",
        method="GET",
        url=URL,
    )
    assert err.location == "https://evil.example/steal"
    assert err.status == 307
    assert "never followed" in str(err)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b'{"id": "x", "url": "u", "version": "v"}', KMSInfo),
        (204, b"not json", ResponseValidationError),
        (299, b'{"id": 5}', ResponseValidationError),
        (300, b"", RedirectError),
        (308, b"moved", RedirectError),
        (399, b"", RedirectError),
        (400, b'{"detail": "x"}', errors.BadRequestError),
        (404, fixture_bytes("error_structured.json"), NotFoundError),
        (418, b"", APIStatusError),
        (503, b"", ServerError),
        (599, b"", ServerError),
    ],
)
def test_decode_response_routes_each_status_class(
    status: int, body: bytes, expected: type[Any]
) -> None:
    headers = CIMultiDict({"X-Request-ID": "req_9", "Location": "https://elsewhere.example/"})

    def decode() -> Any:
        return decode_response(
            status=status,
            headers=headers,
            body=body,
            method="GET",
            url=URL,
            now=NOW,
            model=KMSInfo,
            attempts=3,
        )

    if expected is KMSInfo:
        assert decode() == KMSInfo(id="x", url="u", version="v")
        return
    with pytest.raises(expected) as caught:
        decode()
    err = caught.value
    assert type(err) is expected
    assert (err.status, err.method, err.url, err.attempts) == (status, "GET", URL, 3)
    assert err.request_id in ("req_9", "req_01HZX9")
    if isinstance(err, RedirectError):
        assert err.location == "https://elsewhere.example/"
    if isinstance(err, ResponseValidationError):
        assert err.model == "KMSInfo" and err.problems


def test_decode_response_reads_retry_after_against_the_given_clock() -> None:
    with pytest.raises(RateLimitError) as caught:
        decode_response(
            status=429,
            headers=CIMultiDict({"Retry-After": email.utils.formatdate(NOW + 5, usegmt=True)}),
            body=b"",
            method="GET",
            url=URL,
            now=NOW,
            model=KMSInfo,
        )
    assert caught.value.retry_after == pytest.approx(5.0)
    assert caught.value.attempts == 1


# --------------------------------------------------------------------------- fuzz

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
FUZZ_URL = "https://kms.test/api/v1/kms/phala"

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30)
)
json_any = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=15,
)
ERROR_KEYS = [
    "detail",
    "error_code",
    "message",
    "request_id",
    "details",
    "suggestions",
    "links",
    "loc",
    "msg",
    "type",
    "input",
    "ctx",
]
error_shaped = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(ERROR_KEYS), inner, max_size=6),
    ),
    max_leaves=20,
)
retry_after_values = st.one_of(
    st.text(max_size=40),
    st.floats().map(str),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.datetimes(timezones=st.just(timezone.utc)).map(lambda d: format_datetime(d, usegmt=True)),
    st.sampled_from(
        [
            "",
            " ",
            "0",
            "-1",
            "1e400",
            "nan",
            "inf",
            "Infinity",
            "0x10",
            "1_000",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Wed, 21 Oct 2015 07:28:00",
            "Wed, 21 Oct 2015 07:28:00 +0100",
            "Wed, 31 Feb 2015 07:28:00 GMT",
            "Wed, 21 Oct 99999 07:28:00 GMT",
            "Mon, 01 Jan 0001 00:00:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Fri, 31 Dec 9999 23:59:59 -2359",
        ]
    ),
)
headers_strategy = st.fixed_dictionaries(
    {},
    optional={
        "Retry-After": retry_after_values,
        "X-Request-ID": st.text(max_size=20),
        "Content-Type": st.sampled_from(["application/json", "text/html", "text/plain", ""]),
    },
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_any.map(lambda v: json.dumps(v).encode()),
    error_shaped.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=200).map(lambda t: f"<html><title>{t}</title><h1>{t}</h1></html>".encode()),
    st.sampled_from(
        [
            fixture_bytes(n)
            for n in [
                "error_detail_string.json",
                "error_gateway_502.html",
                "error_message_only.json",
                "error_structured.json",
                "error_structured_nested.json",
                "error_validation_422.json",
            ]
        ]
    ),
)


def check_status_error(err: Any, status: int) -> None:
    assert isinstance(err, APIStatusError)
    assert err.status == status and err.method == "GET" and err.url == FUZZ_URL
    assert str(err) and repr(err)
    assert len(err.body) <= MAX_ERROR_BODY_CHARS
    assert err.request_id is None or isinstance(err.request_id, str)
    assert err.retry_after is None or (math.isfinite(err.retry_after) and err.retry_after >= 0)
    assert err.error_code is None or isinstance(err.error_code, str)
    assert all(isinstance(s, str) for s in err.suggestions)
    if status == 429:
        assert type(err) is RateLimitError
    if status == 422:
        assert type(err) is UnprocessableEntityError
    if status >= 500:
        assert isinstance(err, ServerError)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is type(err) and str(copy) == str(err)
    assert (copy.status, copy.request_id, copy.retry_after) == (
        err.status,
        err.request_id,
        err.retry_after,
    )


@FUZZ
@given(status=st.integers(400, 599), headers=headers_strategy, body=bodies)
@example(status=404, headers={}, body=b"")
@example(status=500, headers={"Retry-After": "1e400"}, body=b"\xff\xfe\x00")
@example(status=422, headers={}, body=b'{"detail": [{"loc": null, "msg": {"a": 1}}, 7]}')
@example(status=409, headers={}, body=b'{"detail": {"error_code": 7, "details": "x"}}')
@example(status=503, headers={}, body=b"\xef\xbb\xbf" + b'{"detail": "bom"}')
@example(status=502, headers={}, body=b'"just a string"')
@example(status=400, headers={}, body=b"<title></title>" * 10_000)
def test_make_status_error_always_gives_an_api_status_error(
    status: int, headers: dict[str, str], body: bytes
) -> None:
    err = make_status_error(
        status=status, headers=headers, body=body, method="GET", url=FUZZ_URL, now=NOW, attempts=2
    )
    check_status_error(err, status)
    assert err.attempts == 2


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b'{"detail":' * 50_000, b'{"detail": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"],
    ids=["deep-array", "deep-object", "deep-detail"],
)
def test_make_status_error_with_deeply_nested_json(body: bytes) -> None:
    err = make_status_error(status=500, headers={}, body=body, method="GET", url=FUZZ_URL, now=NOW)
    check_status_error(err, 500)


# --------------------------------------------------------------------------- through the clients


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
    body = fixture_bytes(fixture)
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
