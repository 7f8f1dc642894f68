"""Decoding API JSON into frozen models: fixture shapes, nulls, unknown keys, strictness.

* Examples: every fixture body, the quirks the real API sends, frozen and hashable models.
* Properties: any JSON value, and any mutation of the fixture bodies, decodes into each
  response model or raises ``DecodeError`` (and through the real transport, only
  ``ResponseValidationError``); unknown keys land in ``extra``; nullable fields may be
  null or absent; a wrong type names its JSON path.
* Fuzz: any bytes through ``decode_response``'s 2xx path give a model or a
  ``ResponseValidationError``.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

import attrs
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from phala_kms import (
    AppEnvEncryptPubKey,
    AsyncKMSClient,
    KMSClient,
    KMSContract,
    KMSContractNodes,
    KMSInfo,
    KMSOnChainDetail,
    NextAppIDs,
    OnChainDevice,
    Paginated,
    ResponseValidationError,
    RetryPolicy,
)
from phala_kms._convert import DecodeError, structure
from phala_kms._responses import MAX_ERROR_BODY_CHARS, decode_response
from phala_kms.testing import FakeKMSServer, WrongShapeFault
from tests.helpers import MOCK_BASE, fixture_bytes, load_fixture


def test_kms_list_page_keeps_quirks_and_unknown_fields() -> None:
    page = structure(load_fixture("kms_list_page1.json"), Paginated[KMSInfo])
    assert (page.total, page.page, page.page_size, page.pages) == (5, 1, 20, 1)
    assert [i.id for i in page.items] == [
        "kms_7Hq2mZ01",
        "kms_7Hq2mZ02",
        "kms_9Kc4pB07",
        "kms_9Kc4pB09",
        "kms_3Ew8tN01",
    ]
    phala, _, base7, base9, eth = page.items
    assert phala.chain_id is None and phala.kms_contract_address is None
    assert phala.k256_pubkey is None  # absent key decodes like null
    assert base7.version == "v0.5.7"  # kept as sent, not normalised
    assert (
        base7.k256_pubkey == "0x03082b64216200a62e957307314fa8bb1e90ba65d5ccb73e0264046169cd497af2"
    )
    assert base9.extra == {"region": "us-east"}  # unknown field kept
    assert phala.extra == {}
    assert eth.kms_contract_address == "0x4B2c5E9a1F0d3C7b8A6e2D1f9C0b3A5e7D8c6F41"  # case kept
    assert page.has_next is False


def test_empty_page() -> None:
    page = structure(load_fixture("kms_list_empty.json"), Paginated[KMSInfo])
    assert page.items == ()
    assert page.pages == 0
    assert page.has_next is False


def test_minimal_kms_info() -> None:
    info = structure(load_fixture("kms_info_minimal.json"), KMSInfo)
    assert info.id == "minimal-kms"
    assert info.slug is None and info.gateway_app_id is None


def test_on_chain_detail() -> None:
    detail = structure(load_fixture("kms_onchain_base.json"), KMSOnChainDetail)
    (contract,) = detail.contracts
    assert detail.chain_id == 8453 and contract.chain_name == "base"
    assert [d.node_name for d in contract.devices] == ["prod7", None]  # absent node_name
    assert [d.on_chain_allowed for d in contract.devices] == [True, None]
    assert [i.on_chain_allowed for i in contract.os_images] == [True, None, False]
    assert contract.os_images[1].os_image_hash is None
    empty = structure(load_fixture("kms_onchain_empty.json"), KMSOnChainDetail)
    assert empty.contracts == ()


def test_next_app_ids() -> None:
    ids = structure(load_fixture("next_app_ids.json"), NextAppIDs)
    assert [(a.app_id, a.nonce) for a in ids.app_ids] == [
        ("8f3e5c2a9b1d4e7f6a0c3b2d5e8f1a4c7b0d9e63", 41),
        ("2b7c4e1f9a3d6c8e0b5f2a7d4c1e9b6f3a8d0c52", 42),
    ]


def test_contract_shapes() -> None:
    page = structure(load_fixture("kms_contracts_v2026_06_23.json"), Paginated[KMSContract])
    phala, base = page.items
    assert phala.contract_address == "phala" and phala.chain_id == 0
    assert phala.is_onchain is False
    assert base.is_onchain is True and base.node_count == 4
    nodes = structure(load_fixture("kms_contract_nodes.json"), KMSContractNodes)
    assert nodes.total == 1 and nodes.items[0].kms_type == "phala"


def test_pubkey_hex_is_normalised_and_checked() -> None:
    key = structure(
        {"public_key": "0x" + "AB" * 32, "signature": "0X" + "cd" * 65, "timestamp": 17},
        AppEnvEncryptPubKey,
    )
    assert key.public_key == "ab" * 32
    assert key.signature == "cd" * 65
    assert key.public_key_bytes == bytes.fromhex("ab" * 32)
    assert key.timestamp == 17 and key.signature_v1 is None
    for bad in (
        {"public_key": "ab" * 31, "signature": "cd" * 65},
        {"public_key": "zz" * 32, "signature": "cd" * 65},
        {"public_key": "ab" * 32, "signature": "cd" * 64},
        {"public_key": "ab" * 32, "signature": "cd" * 65, "signature_v1": "00"},
    ):
        with pytest.raises(DecodeError):
            structure(bad, AppEnvEncryptPubKey)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([], "expected an object, got array @ $"),
        ({"id": 1, "url": "u", "version": "v"}, "expected a string, got integer @ $.id"),
        ({"id": "x", "url": "u"}, "required field missing @ $.version"),
        (
            {"id": "x", "url": "u", "version": "v", "chain_id": "1"},
            "expected an integer, got string @ $.chain_id",
        ),
        (
            {"id": "x", "url": "u", "version": "v", "chain_id": True},
            "expected an integer, got boolean @ $.chain_id",
        ),
        (
            {"id": "x", "url": "u", "version": "v", "chain_id": 1.0},
            "expected an integer, got number @ $.chain_id",
        ),
    ],
)
def test_strict_types(body: object, problem: str) -> None:
    with pytest.raises(DecodeError) as info:
        structure(body, KMSInfo)
    assert problem in info.value.problems
    assert info.value.model == "KMSInfo"


def test_lists_must_be_arrays() -> None:
    body = {"items": "abc", "total": 1, "page": 1, "page_size": 20, "pages": 1}
    with pytest.raises(DecodeError, match="expected an array"):
        structure(body, Paginated[KMSInfo])
    with pytest.raises(DecodeError, match="expected a boolean"):
        structure({"device_id": "d", "on_chain_allowed": "yes"}, OnChainDevice)


def test_models_are_frozen_and_extra_is_read_only() -> None:
    page = structure(load_fixture("kms_list_page1.json"), Paginated[KMSInfo])
    item = page.items[3]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        item.id = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        item.extra["region"] = "eu"  # type: ignore[index]
    assert attrs.evolve(item, slug="s").slug == "s"


def test_models_hash_pickle_copy_and_serialise() -> None:
    page = structure(load_fixture("kms_list_page1.json"), Paginated[KMSInfo])
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


# --------------------------------------------------------------------------- through a client


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("not json", "not JSON"),
        ('{"id": "x"', "not JSON"),
        ('{"id": 5, "url": "u", "version": "v"}', "$.id"),
    ],
)
async def test_bad_success_bodies(
    mocked: Any, mock_client: AsyncKMSClient, body: str, problem: str
) -> None:
    mocked.get(f"{MOCK_BASE}/kms/phala", status=200, body=body, headers={"X-Request-ID": "req-77"})
    with pytest.raises(ResponseValidationError) as info:
        await mock_client.get_kms_info("phala")
    err = info.value
    assert err.status == 200
    assert err.request_id == "req-77"
    assert err.body == body
    assert any(problem in p for p in err.problems)
    assert err.attempts == 1


def test_unknown_fields_and_nulls_survive_the_round_trip(kms: Any) -> None:
    items = kms.iter_kms_list()
    assert any(item.extra.get("region") for item in items)
    assert any(item.slug is None for item in items)
    assert any(item.chain_id is None for item in items)
    assert any(item.k256_pubkey is None for item in items)
    assert any(item.k256_pubkey for item in items)


# --------------------------------------------------------------------------- properties

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


@pytest.fixture
def quick_client(server: FakeKMSServer) -> Iterator[KMSClient]:
    """A ``KMSClient`` on ``server`` that never retries."""
    with KMSClient(server.api_key, server.base_url, retry_policy=QUICK) as client:
        yield client


@WIRE
@given(value=json_values(finite=True), route=st.sampled_from(["kms_info", "kms_list"]))
def test_any_json_through_the_transport_is_a_model_or_response_validation_error(
    server: FakeKMSServer, quick_client: KMSClient, value: Any, route: str
) -> None:
    client = quick_client
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


# --------------------------------------------------------------------------- fuzz

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
        result = decode_response(
            status=200,
            headers={"X-Request-ID": "req_1"},
            body=body,
            method="GET",
            url=URL,
            now=NOW,
            model=model,
        )
    except ResponseValidationError as caught:
        err = caught
    else:
        assert isinstance(result, getattr(model, "__origin__", model))
        return
    assert err.status == 200 and err.request_id == "req_1" and err.problems
    assert len(err.body) <= MAX_ERROR_BODY_CHARS
    assert str(err) and pickle.loads(pickle.dumps(err)).problems == err.problems
