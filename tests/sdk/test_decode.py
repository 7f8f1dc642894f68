"""The two decode paths agree: the generated fast path and the cattrs slow path.

``structure`` tries a decoder generated per model first and, when it gives up, decodes
again through the converter, which names every problem. These tests hold the two to
the same rules: on every body the fast path either builds exactly what the converter
builds (same values, same types, same ``extra``) or refuses it, and it refuses
everything the converter refuses; the error a user sees is the converter's, unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, get_args, get_origin

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phala_kms._convert import (
    DecodeError,
    _fast_decoder,
    _generate,
    _Mismatch,
    structure,
    structure_checked,
)
from phala_kms.models import (
    AppEnvEncryptPubKey,
    CVMInfo,
    CVMKMSInfo,
    KMSContract,
    KMSContractNode,
    KMSContractNodes,
    KMSInfo,
    KMSNodeMeta,
    KMSOnChainDetail,
    NextAppID,
    NextAppIDs,
    OnChainDevice,
    OnChainKMSContract,
    OnChainOSImage,
    Paginated,
    ReadOnlyDict,
)
from tests.sdk.test_models import BODIES, BODY_IDS, json_values, mutate

DECODED: list[Any] = [
    KMSInfo,
    Paginated[KMSInfo],
    Paginated[KMSContract],
    KMSContract,
    KMSContractNode,
    KMSContractNodes,
    KMSOnChainDetail,
    OnChainKMSContract,
    OnChainDevice,
    OnChainOSImage,
    NextAppID,
    NextAppIDs,
    AppEnvEncryptPubKey,
    KMSNodeMeta,
    CVMKMSInfo,
    CVMInfo,
]
"""Every type the SDK decodes a response into."""

CVM = {
    "app_id": "ab" * 20,
    "kms_info": {"id": "kms_1", "slug": "phala", "url": "https://kms"},
    "name": "web",
}
NODE_META = {
    "k256_pubkey": "02" + "ab" * 32,
    "is_dev": False,
    "chain_id": 8453,
    "bootstrap_info": {},
}
ALL_BODIES: list[tuple[str, Any, Any]] = [
    *BODIES,
    ("cvm", CVM, CVMInfo),
    ("cvm_no_kms", {"app_id": None, "kms_info": None}, CVMInfo),
    ("node_meta", NODE_META, KMSNodeMeta),
]
ALL_IDS = [*BODY_IDS, "cvm", "cvm_no_kms", "node_meta"]

PROPS = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))


def same(fast: Any, slow: Any) -> bool:
    """Equal, and of the same types all the way down (``1 == True``, ``() == []`` do not count)."""
    if type(fast) is not type(slow):
        return False
    if attrs.has(type(fast)):
        return all(
            same(getattr(fast, f.name), getattr(slow, f.name)) for f in attrs.fields(type(fast))
        )
    if isinstance(fast, (tuple, list)):
        return len(fast) == len(slow) and all(same(a, b) for a, b in zip(fast, slow, strict=True))
    if isinstance(fast, Mapping):
        return list(fast) == list(slow) and all(same(fast[k], slow[k]) for k in fast)
    return bool(fast == slow) or (fast != fast and slow != slow)  # NaN in extra


def fast_result(value: Any, model: Any) -> tuple[bool, Any]:
    """``(True, result)`` from the fast path, or ``(False, None)`` when it refuses."""
    decoder = _fast_decoder(model)
    assert decoder is not None
    try:
        return True, decoder(copy.deepcopy(value))
    except Exception:  # any refusal sends the value to the slow path
        return False, None


def slow_result(value: Any, model: Any) -> tuple[bool, Any]:
    try:
        return True, structure_checked(copy.deepcopy(value), model)
    except DecodeError as err:
        return False, err


def assert_paths_agree(value: Any, model: Any) -> None:
    fast_ok, fast = fast_result(value, model)
    slow_ok, slow = slow_result(value, model)
    if fast_ok:  # the fast path accepts only what the converter accepts, and builds the same
        assert slow_ok, (value, slow)
        assert same(fast, slow), (fast, slow)
    if slow_ok and not fast_ok:
        pytest.fail(f"the fast path refused a valid body: {value!r}")
    # and what a caller sees is the converter's answer
    if slow_ok:
        assert same(structure(copy.deepcopy(value), model), slow)
    else:
        with pytest.raises(DecodeError) as caught:
            structure(copy.deepcopy(value), model)
        assert (caught.value.model, caught.value.problems) == (slow.model, slow.problems)


@pytest.mark.parametrize("model", DECODED, ids=repr)
def test_every_decoded_type_has_a_fast_path(model: Any) -> None:
    assert _fast_decoder(model) is not None


@pytest.mark.parametrize(("name", "body", "model"), ALL_BODIES, ids=ALL_IDS)
def test_fast_path_builds_what_the_converter_builds(name: str, body: Any, model: Any) -> None:
    fast_ok, fast = fast_result(body, model)
    assert fast_ok
    assert same(fast, structure_checked(copy.deepcopy(body), model))


def test_fast_path_result_is_a_normal_model() -> None:
    """Built without ``__init__``, it still hashes, compares, evolves and is frozen."""
    body = {"id": "k", "url": "u", "version": "v", "region": "eu"}
    fast = structure(body, KMSInfo)
    made = KMSInfo(id="k", url="u", version="v", extra={"region": "eu"})
    assert fast == made and hash(fast) == hash(made)
    assert type(fast.extra) is ReadOnlyDict
    assert structure({"id": "k", "url": "u", "version": "v"}, KMSInfo).extra == {}
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast.id = "x"  # type: ignore[misc]
    assert attrs.evolve(fast, slug="s").extra == {"region": "eu"}


BAD: list[tuple[str, Any, Any]] = [
    ("root not an object", ["x"], KMSInfo),
    ("root null", None, KMSInfo),
    ("str field int", {"id": 1, "url": "u", "version": "v"}, KMSInfo),
    ("required missing", {"id": "x", "url": "u"}, KMSInfo),
    ("required null", {"id": "x", "url": "u", "version": None}, KMSInfo),
    ("int field string", {"id": "x", "url": "u", "version": "v", "chain_id": "1"}, KMSInfo),
    ("int field bool", {"id": "x", "url": "u", "version": "v", "chain_id": True}, KMSInfo),
    ("int field float", {"id": "x", "url": "u", "version": "v", "chain_id": 1.0}, KMSInfo),
    ("bool field string", {"device_id": "d", "on_chain_allowed": "yes"}, OnChainDevice),
    ("bool field int", {"device_id": "d", "on_chain_allowed": 1}, OnChainDevice),
    (
        "array field string",
        {"items": "abc", "total": 1, "page": 1, "page_size": 20, "pages": 1},
        Paginated[KMSInfo],
    ),
    (
        "array item not an object",
        {"items": [1], "total": 1, "page": 1, "page_size": 20, "pages": 1},
        Paginated[KMSInfo],
    ),
    (
        "problems in several items",
        {
            "items": [{"id": "a", "url": "u", "version": "v"}, {"id": 2}, {"url": 3}],
            "total": "3",
            "page": 1,
            "page_size": 20,
            "pages": 1,
        },
        Paginated[KMSInfo],
    ),
    (
        "defaulted array null",
        {"chain_name": "b", "chain_id": 1, "contracts": None},
        KMSOnChainDetail,
    ),
    ("nested model wrong", {"kms_info": ["x"]}, CVMInfo),
    ("nested model field wrong", {"kms_info": {"slug": 5}}, CVMInfo),
    ("hex too short", {"public_key": "ab" * 31, "signature": "cd" * 65}, AppEnvEncryptPubKey),
    ("hex not hex", {"public_key": "zz" * 32, "signature": "cd" * 65}, AppEnvEncryptPubKey),
    (
        "nullable hex wrong",
        {"public_key": "ab" * 32, "signature": "cd" * 65, "signature_v1": "00"},
        AppEnvEncryptPubKey,
    ),
    ("negative nonce", {"app_ids": [{"app_id": "ab" * 20, "nonce": -1}]}, NextAppIDs),
    ("app id not hex", {"app_ids": [{"app_id": "zz", "nonce": 1}]}, NextAppIDs),
]


@pytest.mark.parametrize(("name", "body", "model"), BAD, ids=[b[0] for b in BAD])
def test_each_kind_of_bad_input_gives_the_converters_error(
    name: str, body: Any, model: Any
) -> None:
    fast_ok, _ = fast_result(body, model)
    assert not fast_ok
    slow_ok, slow = slow_result(body, model)
    assert not slow_ok
    with pytest.raises(DecodeError) as caught:
        structure(body, model)
    assert (caught.value.model, caught.value.problems) == (slow.model, slow.problems)
    assert all(" @ $" in p for p in caught.value.problems)  # every problem names its path
    # only the converter's error is chained, not the fast path's refusal (nor kept alive by it)
    assert caught.value.__context__ is caught.value.__cause__
    assert caught.value.__cause__ is not None and caught.value.__cause__.__context__ is None


def test_several_problems_are_all_reported() -> None:
    body = {
        "items": [{"id": "a", "url": "u", "version": "v"}, {"id": 2}],
        "total": "3",
        "page": 1,
        "page_size": 20,
        "pages": 1,
    }
    with pytest.raises(DecodeError) as caught:
        structure(body, Paginated[KMSInfo])
    problems = set(caught.value.problems)
    assert "expected a string, got integer @ $.items[1].id" in problems
    assert "required field missing @ $.items[1].url" in problems
    assert "expected an integer, got string @ $.total" in problems


@pytest.mark.parametrize(("name", "body", "model"), ALL_BODIES, ids=ALL_IDS)
@PROPS
@given(data=st.data())
def test_paths_agree_on_mutated_bodies(
    name: str, body: Any, model: Any, data: st.DataObject
) -> None:
    mutated = body
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        mutated = mutate(mutated, data)
    assert_paths_agree(mutated, model)


@pytest.mark.parametrize("model", DECODED, ids=repr)
@PROPS
@given(value=json_values())
def test_paths_agree_on_any_json(model: Any, value: Any) -> None:
    assert_paths_agree(value, model)


# --------------------------------------------------------------------------- types it leaves alone


@attrs.frozen(kw_only=True)
class _Checked:
    name: str = attrs.field(validator=attrs.validators.min_len(1))
    extra: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.define(kw_only=True, frozen=True, slots=False)
class _DictBased:
    name: str
    extra: Mapping[str, Any] = attrs.field(factory=dict)


@pytest.mark.parametrize("model", [_Checked, _DictBased, tuple[KMSInfo, ...], int])
def test_types_it_cannot_build_exactly_go_to_the_converter(model: Any) -> None:
    """A validator, a dict-based class, a non-model: no fast path, the converter decides."""
    assert _fast_decoder(model) is None
    if get_origin(model) is tuple:
        value: Any = [{"id": "k", "url": "u", "version": "v"}]
        assert structure(value, model) == (KMSInfo(id="k", url="u", version="v"),)
        assert get_args(model)
    elif model is int:
        assert structure(5, model) == 5
        with pytest.raises(DecodeError):
            structure(True, model)
    else:
        assert structure({"name": "n", "x": 1}, model).extra == {"x": 1}
    if model is _Checked:
        with pytest.raises(DecodeError):
            structure({"name": ""}, model)  # the validator ran


@pytest.mark.parametrize(("name", "body", "model"), ALL_BODIES, ids=ALL_IDS)
def test_slot_setter_build_matches_the_open_twin_build(name: str, body: Any, model: Any) -> None:
    """Where a class cannot take ``__class__`` assignment, the setters build the same."""
    with_twin = _fast_decoder(model)
    with_setters = _generate(model, twin=False)
    assert with_twin is not None
    assert same(with_twin(copy.deepcopy(body)), with_setters(copy.deepcopy(body)))
    assert same(with_setters(copy.deepcopy(body)), structure_checked(copy.deepcopy(body), model))
    with pytest.raises(_Mismatch):  # a refusal; the converter explains
        with_setters([])


def test_no_open_twin_escapes() -> None:
    """Every object a decode returns, nested ones included, is of the model's own class."""
    page = structure(
        {
            "chain_name": "base",
            "chain_id": 8453,
            "contracts": [
                {
                    "contract_address": "0x1",
                    "chain_id": 8453,
                    "chain_name": "base",
                    "devices": [{"device_id": "d"}],
                    "os_images": [{"name": "n", "version": "v"}],
                }
            ],
        },
        KMSOnChainDetail,
    )
    (contract,) = page.contracts
    assert type(page) is KMSOnChainDetail and type(contract) is OnChainKMSContract
    assert type(contract.devices[0]) is OnChainDevice
    assert type(contract.os_images[0]) is OnChainOSImage


@attrs.frozen(kw_only=True)
class _Tagged:
    tags: tuple[str, ...]
    counts: tuple[int, ...] = ()
    maybe: tuple[bool | None, ...] = ()
    extra: Mapping[str, Any] = attrs.field(default=ReadOnlyDict(), converter=ReadOnlyDict)


@pytest.mark.parametrize(
    "body",
    [
        {"tags": ["a", "b"], "counts": [1, 2], "maybe": [True, None], "z": 1},
        {"tags": []},
        {"tags": ["a", 1]},
        {"tags": "ab"},
        {"tags": ["a"], "counts": [True]},
        {"tags": ["a"], "counts": [1.0]},
        {"tags": ["a"], "maybe": ["yes"]},
        {"tags": ["a"], "counts": None},
    ],
)
def test_arrays_of_primitives_agree(body: Any) -> None:
    assert _fast_decoder(_Tagged) is not None
    assert_paths_agree(body, _Tagged)
