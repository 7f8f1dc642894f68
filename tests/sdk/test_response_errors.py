"""The exception tree and the error-body parser, for every body form of the API."""

from __future__ import annotations

import email.utils
import pickle
import threading

import pytest
from multidict import CIMultiDict

import phala_kms
from phala_kms import errors
from phala_kms._errors_parse import make_redirect_error, make_status_error
from tests.conftest import fixture_bytes

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


def all_errors() -> list[errors.PhalaKMSError]:
    status = parse(404, fixture_bytes("error_structured.json"), **{"Retry-After": "1"})
    validation = parse(422, fixture_bytes("error_validation_422.json"))
    return [
        status,
        validation,
        errors.APITimeoutError("t", timeout=2.5, host="h", port=443, url=URL, method="GET"),
        errors.ConnectRefusedError("r", host="127.0.0.1", port=9),
        errors.ResponseValidationError("v", status=200, problems=("$.id: missing",), model="M"),
        errors.SignatureVerificationError("s", reason="signer_mismatch"),
        errors.InvalidArgumentError("a", argument="app_id"),
    ]


@pytest.mark.parametrize("err", all_errors(), ids=lambda e: type(e).__name__)
def test_errors_pickle_with_their_attributes(err: errors.PhalaKMSError) -> None:
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is type(err)
    assert str(clone) == str(err)
    assert clone.__dict__ == err.__dict__


def test_errors_cross_threads() -> None:
    caught: list[BaseException] = []

    def worker() -> None:
        try:
            raise parse(404, fixture_bytes("error_structured.json"))
        except errors.PhalaKMSError as exc:
            caught.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert isinstance(caught[0], errors.NotFoundError)
    assert caught[0].request_id == "req_01HZX9"


def test_timeout_is_also_builtin_timeout() -> None:
    assert issubclass(errors.APITimeoutError, TimeoutError)
    assert issubclass(errors.APITimeoutError, errors.TransportError)
    assert issubclass(errors.InvalidArgumentError, ValueError)


def test_tree_in_docstring_names_every_exception() -> None:
    doc = errors.__doc__ or ""
    names = [n for n in errors.__all__ if n != "ValidationErrorItem"]
    for name in names:
        assert name in doc, name
        assert issubclass(getattr(errors, name), errors.PhalaKMSError)


def test_public_surface_is_sorted_and_complete() -> None:
    assert sorted(errors.__all__) == errors.__all__
    exported = set(phala_kms.__all__)
    for name in errors.__all__:
        assert name in exported
    for name in phala_kms.__all__:
        assert getattr(phala_kms, name) is not None
    assert sorted(set(phala_kms.__all__)) == phala_kms.__all__, "sorted, no duplicates"
