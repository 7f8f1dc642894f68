"""The exception tree: typed keyword-only constructors, builtin bases, the documented
tree, and errors that pickle and cross threads with their attributes."""

from __future__ import annotations

import copy
import inspect
import pickle
import threading

import attrs
import pytest
from multidict import CIMultiDict

from phala_kms import errors
from phala_kms._responses import make_status_error
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
    assert copy.copy(err).__dict__ == err.__dict__


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


EXCEPTIONS = [getattr(errors, name) for name in errors.__all__ if name != "ValidationErrorItem"]


@pytest.mark.parametrize("cls", EXCEPTIONS, ids=lambda c: c.__name__)
def test_constructors_take_the_message_then_keyword_only_attributes(cls: type) -> None:
    parameters = list(inspect.signature(cls).parameters.values())
    assert parameters[0].name == "message"
    assert parameters[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    for parameter in parameters[1:]:
        assert parameter.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD)
    err = cls("boom")
    assert err.message == "boom" and str(err) == "boom" and err.args == ("boom",)
    with pytest.raises(TypeError):
        cls("boom", "extra")
    with pytest.raises(TypeError):
        cls("boom", no_such_attribute=1)


def test_defaults_and_inherited_keywords() -> None:
    status = errors.UnprocessableEntityError("422", status=422, url=URL, error_code="E", attempts=2)
    assert (status.status, status.url, status.error_code, status.attempts) == (422, URL, "E", 2)
    assert (status.validation_errors, status.details, status.retry_after) == ((), (), None)
    assert (status.method, status.request_id, status.body) == (None, None, "")
    timeout = errors.APITimeoutError("t", timeout=1.5, host="h", port=1)
    assert (timeout.timeout, timeout.host, timeout.port, timeout.attempts) == (1.5, "h", 1, 1)
    assert errors.SignatureVerificationError("s").reason == "invalid"
    redirect = errors.RedirectError("r", location="https://x.example", status=302)
    assert (redirect.location, redirect.status) == ("https://x.example", 302)


def test_validation_error_items_are_frozen_values() -> None:
    item = errors.ValidationErrorItem(
        loc=["query", "page_size"], msg="too big", type="le", input="500", ctx={"le": 100}
    )
    assert item.loc == ("query", "page_size")  # any sequence becomes a tuple
    assert item == errors.ValidationErrorItem(
        loc=("query", "page_size"), msg="too big", type="le", input="500", ctx={"le": 100}
    )
    assert item != attrs.evolve(item, msg="other")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        item.msg = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(item)  # input and ctx may hold dicts and lists
    assert pickle.loads(pickle.dumps(item)) == item
    assert "500" not in repr(item) and "page_size" in repr(item)  # input/ctx stay out of repr
    assert errors.ValidationErrorItem(("a",), "m", "t") == errors.ValidationErrorItem(
        loc=["a"], msg="m", type="t", input=None, ctx=None
    )
