"""Fuzz targets for the pure parsers: arbitrary bytes and headers never escape as anything
but our own exception types.

* ``make_status_error``: any status, headers and body give an ``APIStatusError``
  subclass that formats, pickles and keeps its body bounded.
* ``Transport._decode`` (the transport's 2xx path): any bytes give a model or a
  ``ResponseValidationError``.
* ``parse_retry_after``: any header gives ``None`` or a finite wait >= 0.
* ``path_segment``: any string is quoted into one segment that unquotes to itself,
  or is an ``InvalidArgumentError``.

Example counts are bounded so the whole file runs in a few seconds.
"""

from __future__ import annotations

import json
import math
import pickle
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from phala_kms import (
    APIStatusError,
    InvalidArgumentError,
    RateLimitError,
    ResponseValidationError,
    ServerError,
    UnprocessableEntityError,
)
from phala_kms._errors_parse import MAX_ERROR_BODY_CHARS, make_status_error
from phala_kms._retry import parse_retry_after
from phala_kms._transport import Transport
from phala_kms._validate import path_segment
from phala_kms.models import (
    AppEnvEncryptPubKey,
    KMSContract,
    KMSContractNodes,
    KMSInfo,
    KMSOnChainDetail,
    NextAppIDs,
    Paginated,
)
from tests.conftest import fixture_bytes

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
NOW = 1_800_000_000.0
URL = "https://kms.test/api/v1/kms/phala"

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
    assert err.status == status and err.method == "GET" and err.url == URL
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
        status=status, headers=headers, body=body, method="GET", url=URL, now=NOW, attempts=2
    )
    check_status_error(err, status)
    assert err.attempts == 2


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b'{"detail":' * 50_000, b'{"detail": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"],
    ids=["deep-array", "deep-object", "deep-detail"],
)
def test_make_status_error_with_deeply_nested_json(body: bytes) -> None:
    err = make_status_error(status=500, headers={}, body=body, method="GET", url=URL, now=NOW)
    check_status_error(err, 500)


MODELS: list[Any] = [
    KMSInfo,
    Paginated[KMSInfo],
    Paginated[KMSContract],
    KMSContract,
    KMSContractNodes,
    KMSOnChainDetail,
    NextAppIDs,
    AppEnvEncryptPubKey,
]


@FUZZ
@given(
    model=st.sampled_from(MODELS),
    body=st.one_of(
        st.binary(max_size=200),
        json_any.map(lambda v: json.dumps(v).encode()),
        st.sampled_from(
            [
                fixture_bytes("kms_list_page1.json"),
                fixture_bytes("kms_onchain_base.json"),
                fixture_bytes("kms_info_minimal.json"),
            ]
        ),
    ),
)
@example(model=KMSInfo, body=b"[" * 100_000)
@example(
    model=KMSInfo,
    body=b'{"id": "x", "url": "u", "version": "v", "deep": ' + b"[" * 900 + b"]" * 900 + b"}",
)
@example(model=KMSInfo, body=b'{"id": "x", "url": "u", "version": "v", "n": NaN}')
@example(model=NextAppIDs, body=b'{"app_ids": [{"app_id": "a", "nonce": 1e999}]}')
@example(model=AppEnvEncryptPubKey, body=b'{"public_key": "0x", "signature": "\\u0000"}')
def test_decoder_gives_a_model_or_response_validation_error(model: Any, body: bytes) -> None:
    try:
        result = Transport._decode(200, {"X-Request-ID": "req_1"}, body, URL, model)
    except ResponseValidationError as caught:
        err = caught
    else:
        assert isinstance(result, getattr(model, "__origin__", model))
        return
    assert err.status == 200 and err.request_id == "req_1" and err.problems
    assert len(err.body) <= MAX_ERROR_BODY_CHARS
    assert str(err) and pickle.loads(pickle.dumps(err)).problems == err.problems


@FUZZ
@given(value=retry_after_values)
@example(value=format_datetime(datetime.now(timezone.utc) + timedelta(days=3650), usegmt=True))
def test_parse_retry_after_is_none_or_a_finite_non_negative_wait(value: str) -> None:
    wait = parse_retry_after(value, now=NOW)
    assert wait is None or (isinstance(wait, float) and math.isfinite(wait) and wait >= 0)


@FUZZ
@given(value=st.one_of(st.text(max_size=300), st.sampled_from(["..", ".", " ", "a/b", "%2f"])))
def test_path_segment_is_one_segment_or_rejected(value: str) -> None:
    try:
        quoted = path_segment(value, "kms")
    except InvalidArgumentError as caught:
        err = caught
    else:
        err = None
    if err is not None:
        assert err.argument == "kms"
        assert (
            not value.strip()
            or value in (".", "..")
            or len(value) > 256
            or bool(set(value) & set("/\\%?#"))
            or not value.isprintable()
        )
        return
    assert not set(quoted) & set("/?#\\ %") - {"%"}
    assert all(c.isascii() and (c.isalnum() or c in "-._~%") for c in quoted)
    assert unquote(quoted, errors="strict") == value
    assert quoted not in (".", "..")
