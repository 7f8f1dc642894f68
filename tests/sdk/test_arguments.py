"""Arguments: every bad argument is refused before anything is sent, and every accepted
one is sent safely.

* Examples: each method's argument checks, with the argument named; path segments are
  percent-quoted; ids that a decoding router could reroute are refused.
* Properties: any string for any ``str`` argument of any client method is either sent
  safely (the fake's log shows exactly the request path the argument should make: same
  route, same segments, nothing leaked into the query) or rejected before any request.
* Fuzz: ``path_segment`` quotes any string into one segment that unquotes to itself, or
  raises ``InvalidArgumentError``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

import pytest
from aioresponses import CallbackResult
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from phala_kms import (
    APIStatusError,
    AsyncKMSClient,
    InvalidArgumentError,
    KMSClient,
    PhalaKMSError,
    RetryPolicy,
    SignatureVerificationError,
)
from phala_kms._params import path_segment
from phala_kms.testing import FakeKMSServer, decrypt_env_vars
from tests.helpers import API_KEY, MOCK_BASE, app_id_texts, argument_texts, load_fixture

MOCK_APP_ID = "8f3e5c2a9b1d4e7f6a0c3b2d5e8f1a4c7b0d9e63"
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture
def quick_client(server: FakeKMSServer) -> Iterator[KMSClient]:
    """A ``KMSClient`` on ``server`` that never retries."""
    with KMSClient(server.api_key, server.base_url, retry_policy=RetryPolicy(max_retries=0)) as c:
        yield c


# --------------------------------------------------------------------------- examples


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
        (lambda c: c.get_app_env_encrypt_pubkey("phala", MOCK_APP_ID[:-1]), "app_id"),
        (lambda c: c.get_app_env_encrypt_pubkey("phala", MOCK_APP_ID + "00"), "app_id"),
        (lambda c: c.get_app_env_encrypt_pubkey("phala", "0x" + "g" * 40), "app_id"),
        (lambda c: c.get_app_env_encrypt_pubkey("", MOCK_APP_ID), "kms"),
        (lambda c: c.get_kms_on_chain_detail(""), "chain"),
        (lambda c: c.next_app_ids(counts=0), "counts"),
        (lambda c: c.next_app_ids(counts=21), "counts"),
        (lambda c: c.get_kms_contract(""), "slug"),
        (lambda c: c.get_kms_info("on-chain"), "kms_id"),
        (lambda c: c.list_kms_contract_nodes("on-chain"), "slug"),
        (lambda c: c.get_app_env_encrypt_pubkey("on-chain", MOCK_APP_ID), "kms"),
        (lambda c: c.list_kms_contract_nodes("."), "slug"),
        (lambda c: c.get_kms_info("phala", api_version=""), "api_version"),
    ],
)
async def test_bad_arguments_fail_before_sending(
    mocked: Any, mock_client: AsyncKMSClient, call: Any, argument: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await call(mock_client)
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
async def test_path_segments_are_quoted(mocked: Any, kms_id: str, path: str) -> None:
    seen: list[str] = []

    def callback(url: URL, **_: Any) -> CallbackResult:
        seen.append(url.raw_path)
        return CallbackResult(payload=load_fixture("kms_info_minimal.json"))

    mocked.get(re.compile(r".*"), callback=callback)
    async with AsyncKMSClient(API_KEY, MOCK_BASE) as c:
        await c.get_kms_info(kms_id)
    assert seen == [path]


@pytest.mark.parametrize("kms_id", ["phala/next_app_id", "a\\b", "%2e%2e", "a?b", "a#b", "a\nb"])
def test_ids_that_a_decoding_router_could_reroute_are_refused(
    server: FakeKMSServer, sync_client: KMSClient, kms_id: str
) -> None:
    with pytest.raises(InvalidArgumentError):
        sync_client.get_kms_info(kms_id)
    assert server.total_requests == 0


# --------------------------------------------------------------------------- properties

APP_ID = "0123456789abcdef0123456789abcdef01234567"


def sent_or_rejected(
    server: FakeKMSServer,
    call: Callable[[], Any],
    route: str,
    path: str,
    query: dict[str, str] | None = None,
    rejected_by: tuple[type[PhalaKMSError], ...] = (InvalidArgumentError,),
) -> str:
    """Run ``call``: either nothing was sent (a rejection), or exactly one request whose
    route, decoded path and query are exactly what the arguments should make."""
    server.reset()
    try:
        call()
    except rejected_by:
        assert server.total_requests == 0
        return "rejected"
    except APIStatusError:
        pass  # e.g. 404 for an unknown KMS: still a correctly shaped request
    (request,) = server.requests
    assert request.route == route
    assert request.path == "/api/v1" + path
    assert dict(request.query) == (query or {})
    return "sent"


@PROPS
@given(value=argument_texts)
def test_kms_id_and_slug_arguments(
    server: FakeKMSServer, quick_client: KMSClient, value: str
) -> None:
    client = quick_client
    outcome = sent_or_rejected(
        server, lambda: client.get_kms_info(value), "kms_info", f"/kms/{value}"
    )
    for call in (lambda: client.get_kms_contract(value),):
        assert sent_or_rejected(server, call, "kms_info", f"/kms/{value}") == outcome
    assert (
        sent_or_rejected(
            server,
            lambda: client.list_kms_contract_nodes(value),
            "contract_nodes",
            f"/kms/{value}/nodes",
        )
        == outcome
    )
    assert (
        sent_or_rejected(
            server,
            lambda: client.get_kms_on_chain_detail(value),
            "onchain_kms",
            f"/kms/on-chain/{value}",
        )
        # "on-chain" is refused only as a KMS id (the API routes /kms/on-chain/...)
        == ("sent" if value == "on-chain" else outcome)
    )
    assert (
        sent_or_rejected(
            server,
            lambda: client.get_app_env_encrypt_pubkey(value, APP_ID),
            "app_pubkey",
            f"/kms/{value}/pubkey/{APP_ID}",
        )
        == outcome
    )
    if outcome == "rejected":
        assert (
            not value.strip()
            or value in (".", "..", "on-chain")
            or len(value) > 256
            or bool(set(value) & set("/\\%?#"))  # a decoding router could reroute these
            or not value.isprintable()
        )


@PROPS
@given(value=app_id_texts)
def test_app_id_argument(server: FakeKMSServer, quick_client: KMSClient, value: str) -> None:
    client = quick_client
    text = value[2:] if value[:2] in ("0x", "0X") else value
    normalised = text.lower()
    outcome = sent_or_rejected(
        server,
        lambda: client.get_app_env_encrypt_pubkey("phala", value),
        "app_pubkey",
        f"/kms/phala/pubkey/{normalised}",
    )
    valid = len(text) == 40 and all(c in "0123456789abcdefABCDEF" for c in text)
    assert outcome == ("sent" if valid else "rejected")


@PROPS
@given(value=argument_texts)
def test_api_version_argument(server: FakeKMSServer, quick_client: KMSClient, value: str) -> None:
    client = quick_client
    outcome = sent_or_rejected(
        server, lambda: client.get_kms_info("phala", api_version=value), "kms_info", "/kms/phala"
    )
    if outcome == "sent":
        assert server.requests[0].phala_version == value.strip()
    else:
        assert not value.strip() or any(not " " <= c <= "~" for c in value.strip())


@PROPS
@given(value=argument_texts)
def test_trusted_signer_argument(
    server: FakeKMSServer, quick_client: KMSClient, value: str
) -> None:
    client = quick_client

    def call() -> Any:
        return client.get_verified_app_env_encrypt_pubkey("phala", APP_ID, trusted_signer=value)

    outcome = sent_or_rejected(
        server,
        call,
        "app_pubkey",
        f"/kms/phala/pubkey/{APP_ID}",
        rejected_by=(SignatureVerificationError,),
    )
    assert outcome == "rejected"  # none of these strings is a usable secp256k1 key


env_names = st.one_of(
    st.sampled_from(["A", "_x", "DATABASE_URL", "1A", "A-B", "A B", ""]), st.text(max_size=8)
)


@PROPS
@given(name=env_names, value=st.text(max_size=40))
def test_env_var_names_and_values(
    server: FakeKMSServer, quick_client: KMSClient, name: str, value: str
) -> None:
    client = quick_client
    result: list[str] = []

    def call() -> None:
        result.append(
            client.encrypt_env_vars_for_app(
                "phala", APP_ID, {name: value}, trusted_signer=server.k256_pubkey
            )
        )

    outcome = sent_or_rejected(server, call, "app_pubkey", f"/kms/phala/pubkey/{APP_ID}")
    valid_name = (
        bool(name)
        and name.isascii()
        and (name[0].isalpha() or name[0] == "_")
        and all(c.isalnum() or c == "_" for c in name)
    )
    assert outcome == ("sent" if valid_name else "rejected")
    if outcome == "sent":
        (plain,) = decrypt_env_vars(result[0], server.app_private_key("phala", APP_ID))
        assert (plain.key, plain.value) == (name, value)


@pytest.mark.parametrize("value", [None, 7, 1.5, b"phala", ["phala"], {"k": 1}, object()])
def test_non_str_arguments_are_rejected_before_sending(
    server: FakeKMSServer, quick_client: KMSClient, value: Any
) -> None:
    client = quick_client
    server.reset()
    calls: list[Callable[[], Any]] = [
        lambda: client.get_kms_info(value),
        lambda: client.get_kms_contract(value),
        lambda: client.list_kms_contract_nodes(value),
        lambda: client.get_kms_on_chain_detail(value),
        lambda: client.get_app_env_encrypt_pubkey(value, APP_ID),
        lambda: client.get_app_env_encrypt_pubkey("phala", value),
        lambda: client.get_app_env_encrypt_pubkeys(value, [APP_ID]),
        lambda: client.get_app_env_encrypt_pubkeys("phala", [value]),
    ]
    # A trusted signer is required: None is refused like any other non-key.
    calls.append(
        lambda: client.get_verified_app_env_encrypt_pubkey("phala", APP_ID, trusted_signer=value)
    )
    calls.append(
        lambda: client.get_verified_app_env_encrypt_pubkeys("phala", [APP_ID], trusted_signer=value)
    )
    if value is not None:  # None means "the client's version" there
        calls.append(lambda: client.get_kms_info("phala", api_version=value))
    for call in calls:
        with pytest.raises((InvalidArgumentError, SignatureVerificationError)):
            call()
    assert server.total_requests == 0


def test_a_lone_surrogate_is_rejected_before_sending(
    server: FakeKMSServer,
    quick_client: KMSClient,
) -> None:
    client = quick_client
    server.reset()
    with pytest.raises(InvalidArgumentError):
        client.get_kms_info("phala\ud800")
    assert server.total_requests == 0


# --------------------------------------------------------------------------- fuzz


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
