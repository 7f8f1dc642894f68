"""Bad input, as properties.

* Any JSON value, and any mutation of the fixture bodies, decodes into each response
  model or raises ``DecodeError`` (and through the real transport, only
  ``ResponseValidationError``); unknown keys land in ``extra``; nullable fields may be
  null or absent.
* Any string for any ``str`` argument of any client method is either sent safely
  (the fake's log shows exactly the request path the argument should make: same route,
  same segments, nothing leaked into the query) or rejected before any request.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import attrs
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from phala_kms import (
    APIStatusError,
    InvalidArgumentError,
    KMSClient,
    PhalaKMSError,
    ResponseValidationError,
    RetryPolicy,
    SignatureVerificationError,
)
from phala_kms._convert import DecodeError, structure
from phala_kms.models import (
    AppEnvEncryptPubKey,
    KMSContract,
    KMSContractNodes,
    KMSInfo,
    KMSOnChainDetail,
    NextAppIDs,
    Paginated,
)
from phala_kms.testing import FakeKMSServer, WrongShapeFault, decrypt_env_vars
from tests.conftest import load_fixture

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
PUBKEY = {"public_key": "ab" * 32, "signature": "cd" * 65}
PUBKEY_V1 = {**PUBKEY, "timestamp": 1_700_000_000, "signature_v1": "0x" + "EF" * 65}
BODIES: list[tuple[str, Any, Any]] = [
    ("kms_list_page1", load_fixture("kms_list_page1.json"), Paginated[KMSInfo]),
    ("kms_list_empty", load_fixture("kms_list_empty.json"), Paginated[KMSInfo]),
    ("kms_info_minimal", load_fixture("kms_info_minimal.json"), KMSInfo),
    ("kms_contracts", load_fixture("kms_contracts_v2026_06_23.json"), Paginated[KMSContract]),
    ("kms_contract_nodes", load_fixture("kms_contract_nodes.json"), KMSContractNodes),
    ("kms_onchain_base", load_fixture("kms_onchain_base.json"), KMSOnChainDetail),
    ("kms_onchain_empty", load_fixture("kms_onchain_empty.json"), KMSOnChainDetail),
    ("next_app_ids", load_fixture("next_app_ids.json"), NextAppIDs),
    ("pubkey", PUBKEY, AppEnvEncryptPubKey),
    ("pubkey_v1", PUBKEY_V1, AppEnvEncryptPubKey),
]
BODY_IDS = [name for name, _, _ in BODIES]

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
WIRE = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))


def json_values(*, finite: bool = False) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=not finite, allow_infinity=not finite),
        st.text(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.text(max_size=10), inner, max_size=4),
        ),
        max_leaves=20,
    )


def model_class(model: Any) -> type:
    return get_origin(model) or model


def decodes_or_decode_error(value: Any, model: Any) -> Any:
    try:
        result = structure(value, model)
    except DecodeError as caught:
        problems = caught.problems
    else:
        assert isinstance(result, model_class(model))
        return result
    assert problems and all(isinstance(p, str) for p in problems)
    return None


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(("name", "body", "model"), BODIES, ids=BODY_IDS)
def test_fixture_bodies_decode(name: str, body: Any, model: Any) -> None:
    assert isinstance(structure(body, model), model_class(model))


@pytest.mark.parametrize("model", MODELS, ids=lambda m: repr(m).replace("phala_kms.models.", ""))
@PROPS
@given(value=json_values())
def test_any_json_decodes_or_raises_decode_error(model: Any, value: Any) -> None:
    decodes_or_decode_error(value, model)


def paths(value: Any, here: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON value (the root is ``()``)."""
    yield here
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*here, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from paths(child, (*here, index))


def mutate(value: Any, data: st.DataObject) -> Any:
    """Apply one random structural mutation somewhere in ``value``."""
    value = copy.deepcopy(value)
    path = data.draw(st.sampled_from(list(paths(value))), label="path")
    kind = data.draw(
        st.sampled_from(["replace", "delete", "null", "add_key", "wrap", "stringify", "empty"]),
        label="mutation",
    )
    if not path:
        return data.draw(json_values()) if kind == "replace" else [value]
    *parent_path, last = path
    parent = value
    for step in parent_path:
        parent = parent[step]
    old = parent[last]
    if kind == "replace":
        parent[last] = data.draw(json_values(), label="new value")
    elif kind == "delete":
        del parent[last]
    elif kind == "null":
        parent[last] = None
    elif kind == "add_key" and isinstance(old, dict):
        old[data.draw(st.text(max_size=8), label="key")] = data.draw(json_values())
    elif kind == "wrap":
        parent[last] = [old]
    elif kind == "stringify":
        parent[last] = json.dumps(old)
    elif kind == "empty":
        parent[last] = type(old)() if isinstance(old, (dict, list, str)) else 0
    return value


@pytest.mark.parametrize(("name", "body", "model"), BODIES, ids=BODY_IDS)
@PROPS
@given(data=st.data())
def test_mutated_fixture_bodies_decode_or_raise_decode_error(
    name: str, body: Any, model: Any, data: st.DataObject
) -> None:
    mutated = body
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        mutated = mutate(mutated, data)
    decodes_or_decode_error(mutated, model)


def known_fields(model: Any) -> set[str]:
    return {f.name for f in attrs.fields(model_class(model))}


@pytest.mark.parametrize(("name", "body", "model"), BODIES, ids=BODY_IDS)
@PROPS
@given(key=st.text(min_size=1, max_size=12), extra=json_values(finite=True))
def test_unknown_keys_never_fail_and_are_kept(
    name: str, body: Any, model: Any, key: str, extra: Any
) -> None:
    assume(key not in known_fields(model))
    result = structure({**body, key: extra}, model)
    assert result.extra[key] == extra
    assert result == attrs.evolve(structure(body, model), extra={**result.extra})


@pytest.mark.parametrize(("name", "body", "model"), BODIES, ids=BODY_IDS)
def test_nullable_fields_may_be_null_or_absent(name: str, body: Any, model: Any) -> None:
    nullable = [
        f.name for f in attrs.fields(model_class(model)) if f.default is None and f.name in body
    ]
    for field in nullable:
        as_null = structure({**body, field: None}, model)
        absent = structure({k: v for k, v in body.items() if k != field}, model)
        assert getattr(as_null, field) is None and getattr(absent, field) is None


def typed_leaves(value: Any, model: Any, where: str = "$") -> Iterator[tuple[str, list[Any]]]:
    """(JSON path, key path) of every str/int leaf that ``model`` declares a type for."""
    cls = model_class(model)
    hints = get_type_hints(cls)
    for name, hint in hints.items():
        if name == "extra" or not isinstance(value, dict) or name not in value:
            continue
        child, here = value[name], f"{where}.{name}"
        args = [a for a in get_args(hint) if a is not type(None)]
        inner = args[0] if get_origin(hint) is tuple else None
        if isinstance(inner, TypeVar):  # Paginated[T].items
            inner = get_args(model)[0]
        if inner is not None and isinstance(child, list):
            for index, item in enumerate(child):
                for path, keys in typed_leaves(item, inner, f"{here}[{index}]"):
                    yield path, [name, index, *keys]
        elif attrs.has(hint):
            for path, keys in typed_leaves(child, hint, here):
                yield path, [name, *keys]
        elif isinstance(child, (str, int)) and not isinstance(child, bool):
            yield here, [name]


@pytest.mark.parametrize(("name", "body", "model"), BODIES, ids=BODY_IDS)
@PROPS
@given(data=st.data())
def test_a_wrong_type_names_its_json_path(
    name: str, body: Any, model: Any, data: st.DataObject
) -> None:
    leaves = list(typed_leaves(body, model))
    assert leaves  # every fixture has typed scalars
    path, keys = data.draw(st.sampled_from(leaves), label="leaf")
    wrong = data.draw(
        st.one_of(
            st.booleans(),
            st.floats(),
            st.lists(st.integers(), max_size=2),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        ),
        label="wrong value",
    )
    mutated = copy.deepcopy(body)
    parent = mutated
    for key in keys[:-1]:
        parent = parent[key]
    if isinstance(parent[keys[-1]], str):
        wrong = data.draw(st.one_of(st.just(wrong), st.integers()), label="wrong for a str")
    parent[keys[-1]] = wrong
    with pytest.raises(DecodeError) as caught:
        structure(mutated, model)
    at = re.compile(re.escape(path) + r"(?![\w\[.])")  # exactly that path, not a child
    assert any(at.search(p) for p in caught.value.problems), (path, caught.value.problems)


# --------------------------------------------------------------------------- the real wire

QUICK = RetryPolicy(max_retries=0)


@pytest.fixture(scope="module")
def wire() -> Iterator[tuple[FakeKMSServer, KMSClient]]:
    with (
        FakeKMSServer.in_thread(phala_node_count=2) as server,
        KMSClient(server.api_key, server.base_url, retry_policy=QUICK) as client,
    ):
        yield server, client


@WIRE
@given(value=json_values(finite=True), route=st.sampled_from(["kms_info", "kms_list"]))
def test_any_json_through_the_transport_is_a_model_or_response_validation_error(
    wire: tuple[FakeKMSServer, KMSClient], value: Any, route: str
) -> None:
    server, client = wire
    server.reset()
    server.inject(route, WrongShapeFault(body=value), times=1)
    call: Callable[[], Any] = (
        (lambda: client.get_kms_info("phala")) if route == "kms_info" else client.get_kms_list
    )
    try:
        result = call()
    except ResponseValidationError as caught:
        err = caught
    else:
        assert isinstance(result, KMSInfo if route == "kms_info" else Paginated)
        err = None
    if err is not None:
        assert err.status == 200 and err.problems and err.attempts == 1
        assert json.loads(err.body) == value or _has_nan(value)
    assert server.total_requests == 1


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    return False


# --------------------------------------------------------------------------- arguments

NASTY = [
    "../",
    "..",
    ".",
    "...",
    "%2f",
    "%2F",
    "%252f",
    "..%2f..%2f",
    "a/b",
    "/",
    "//",
    "\\",
    "?",
    "#",
    "a?b=c",
    "a#frag",
    "&x=1",
    ";x=1",
    " ",
    " a ",
    "\t",
    "a\r\nX-Evil: 1",
    "\x00",
    "é",
    "😀",
    "\u202e",
    "\ufeff",
    "phala/../../admin",
    "on-chain",
    "phala",
    "x" * 256,
    "x" * 257,
    "€" * 256,
    "%",
    "%zz",
    "@",
    ":",
    "[::1]",
]
args = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=30),
    st.text(alphabet=st.sampled_from("/?#%.\\ \t\r\n&=;:@+a€😀"), max_size=12),
    st.text(alphabet="ab/.%?#", min_size=250, max_size=260),
)
APP_ID = "0123456789abcdef0123456789abcdef01234567"
app_ids = st.one_of(
    args,
    st.binary(min_size=20, max_size=20).map(lambda b: b.hex()),
    st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex().upper()),
    st.binary(min_size=19, max_size=21).map(lambda b: "0X" + b.hex()),
)


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
@given(value=args)
def test_kms_id_and_slug_arguments(wire: tuple[FakeKMSServer, KMSClient], value: str) -> None:
    server, client = wire
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
@given(value=app_ids)
def test_app_id_argument(wire: tuple[FakeKMSServer, KMSClient], value: str) -> None:
    server, client = wire
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
@given(value=args)
def test_api_version_argument(wire: tuple[FakeKMSServer, KMSClient], value: str) -> None:
    server, client = wire
    outcome = sent_or_rejected(
        server, lambda: client.get_kms_info("phala", api_version=value), "kms_info", "/kms/phala"
    )
    if outcome == "sent":
        assert server.requests[0].phala_version == value.strip()
    else:
        assert not value.strip() or any(not " " <= c <= "~" for c in value.strip())


@PROPS
@given(value=args)
def test_trusted_signer_argument(wire: tuple[FakeKMSServer, KMSClient], value: str) -> None:
    server, client = wire

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
    wire: tuple[FakeKMSServer, KMSClient], name: str, value: str
) -> None:
    server, client = wire
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


@PROPS
@given(ids=st.lists(app_ids, max_size=6))
def test_fan_out_sends_each_valid_id_once(
    wire: tuple[FakeKMSServer, KMSClient], ids: list[str]
) -> None:
    server, client = wire
    server.reset()
    results = client.get_app_env_encrypt_pubkeys("phala", ids, return_exceptions=True)
    valid = set()
    for raw, result in zip(ids, results, strict=True):
        text = raw[2:] if raw[:2] in ("0x", "0X") else raw
        if len(text) == 40 and all(c in "0123456789abcdefABCDEF" for c in text):
            valid.add(text.lower())
            assert result.public_key_bytes == server.app_public_key("phala", text)
        else:
            assert isinstance(result, InvalidArgumentError)
    assert sorted(r.path for r in server.requests) == sorted(
        f"/api/v1/kms/phala/pubkey/{v}" for v in valid
    )


@pytest.mark.parametrize("value", [None, 7, 1.5, b"phala", ["phala"], {"k": 1}, object()])
def test_non_str_arguments_are_rejected_before_sending(
    wire: tuple[FakeKMSServer, KMSClient], value: Any
) -> None:
    server, client = wire
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
    if value is not None:  # None means "the client's version" / "no signer" there
        calls.append(lambda: client.get_kms_info("phala", api_version=value))
        calls.append(
            lambda: client.get_verified_app_env_encrypt_pubkey(
                "phala", APP_ID, trusted_signer=value
            )
        )
    for call in calls:
        with pytest.raises((InvalidArgumentError, SignatureVerificationError)):
            call()
    assert server.total_requests == 0


def test_a_lone_surrogate_is_rejected_before_sending(
    wire: tuple[FakeKMSServer, KMSClient],
) -> None:
    server, client = wire
    server.reset()
    with pytest.raises(InvalidArgumentError):
        client.get_kms_info("phala\ud800")
    assert server.total_requests == 0


@pytest.mark.parametrize(
    "setting",
    [{"api_key": "phak_x\r\nX-Evil: 1"}, {"api_version": "2026-06-23\r\nX-Evil: 1"}],
    ids=["api_key", "api_version"],
)
def test_header_settings_with_control_characters_are_refused(
    wire: tuple[FakeKMSServer, KMSClient], setting: dict[str, str]
) -> None:
    server, _ = wire
    server.reset()
    kwargs = {"api_key": server.api_key, "base_url": server.base_url, **setting}
    with pytest.raises(PhalaKMSError), KMSClient(**kwargs) as client:
        client.get_kms_info("phala")
    assert server.total_requests == 0
