"""The one cattrs converter that turns API JSON into phala-kms models.

Rules it enforces, for every model:

* primitives are strict: a ``str`` field takes only a JSON string, an ``int`` field
  only a JSON integer (not a bool, not a float, not a numeric string), a ``bool``
  field only ``true``/``false``; a list field only a JSON array; a model only a
  JSON object;
* required keys must be present; nullable fields may be absent or ``null``;
* unknown keys never fail decoding: they are kept, as sent, in the model's
  ``extra`` mapping;
* the hex fields of :class:`~phala_kms.models.AppEnvEncryptPubKey` and
  :class:`~phala_kms.models.NextAppID` are normalised to lowercase without ``0x`` and
  length-checked, and a ``nonce`` must be >= 0.

Anything that does not fit raises :class:`DecodeError` with one line per problem;
the transport turns that into a :class:`~phala_kms.errors.ResponseValidationError`
carrying the status, request id and raw body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, TypeVar, get_args, get_origin

import attrs
import cattrs
from cattrs.cols import homogenous_tuple_structure_factory
from cattrs.gen import make_dict_structure_fn, override

from .models import AppEnvEncryptPubKey, NextAppID

__all__ = ["DecodeError", "converter", "structure"]

T = TypeVar("T")

_HEX_DIGITS = frozenset("0123456789abcdef")


class DecodeError(ValueError):
    """A JSON value does not fit a model; ``problems`` says where and why."""

    def __init__(self, model: str, problems: list[str]) -> None:
        super().__init__(f"response does not fit {model}: " + "; ".join(problems))
        self.model = model
        self.problems = tuple(problems)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
    }.get(type(value), type(value).__name__)


def _strict_str(value: Any, _: Any) -> str:
    if type(value) is str:
        return value
    raise TypeError(f"expected a string, got {_type_name(value)}")


def _strict_int(value: Any, _: Any) -> int:
    if type(value) is int:
        return value
    raise TypeError(f"expected an integer, got {_type_name(value)}")


def _non_negative_int(value: Any, _: Any) -> int:
    number = _strict_int(value, None)
    if number < 0:
        raise ValueError(f"expected an integer >= 0, got {number}")
    return number


def _strict_bool(value: Any, _: Any) -> bool:
    if type(value) is bool:
        return value
    raise TypeError(f"expected a boolean, got {_type_name(value)}")


def _hex_field(n_bytes: int) -> Callable[[Any, Any], str]:
    """A structure hook for a hex string of exactly ``n_bytes`` bytes (``0x`` optional)."""

    def hook(value: Any, _: Any) -> str:
        text = _strict_str(value, None)
        if text[:2] in ("0x", "0X"):
            text = text[2:]
        text = text.lower()
        if len(text) != 2 * n_bytes or not _HEX_DIGITS.issuperset(text):
            raise ValueError(f"expected {2 * n_bytes} hex characters ({n_bytes} bytes)")
        return text

    return hook


def _is_nullable(base: type) -> Callable[[Any], bool]:
    nullable: Any = Optional[base]  # noqa: UP045 - equal to `base | None` on every Python

    def predicate(type_: Any) -> bool:
        return bool(type_ == nullable)

    return predicate


def _nullable(hook: Callable[[Any, Any], T]) -> Callable[[Any, Any], T | None]:
    def nullable_hook(value: Any, type_: Any) -> T | None:
        return None if value is None else hook(value, type_)

    return nullable_hook


def _is_model(type_: Any) -> bool:
    cls = get_origin(type_) or type_
    return isinstance(cls, type) and attrs.has(cls) and "extra" in attrs.fields_dict(cls)


def _model_hook_factory(type_: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """Structure a model: object check, generated field decoding, unknown keys into ``extra``."""
    cls = get_origin(type_) or type_
    known = frozenset(a.name for a in attrs.fields(cls) if a.name != "extra")
    overrides: dict[str, Any] = {"extra": override(omit=True)}
    if cls is NextAppID:  # both go straight back to the API when provisioning a CVM
        overrides["app_id"] = override(struct_hook=_hex_field(20))
        overrides["nonce"] = override(struct_hook=_non_negative_int)
    if cls is AppEnvEncryptPubKey:
        overrides["public_key"] = override(struct_hook=_hex_field(32))
        overrides["signature"] = override(struct_hook=_hex_field(65))
        overrides["signature_v1"] = override(struct_hook=_nullable(_hex_field(65)))
    base = make_dict_structure_fn(type_, conv, _cattrs_forbid_extra_keys=False, **overrides)

    def structure_model(value: Any, _: Any) -> Any:
        if type(value) is not dict:
            raise TypeError(f"expected an object, got {_type_name(value)}")
        obj = base(value, type_)
        if len(value) > len(known) or not known.issuperset(value):
            unknown = {k: v for k, v in value.items() if k not in known}
            if unknown:
                obj = attrs.evolve(obj, extra=unknown)
        return obj

    return structure_model


def _tuple_hook_factory(type_: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """Structure ``tuple[X, ...]`` from a JSON array only (a string or object is an error)."""
    base = homogenous_tuple_structure_factory(type_, conv)

    def structure_tuple(value: Any, _: Any) -> Any:
        if type(value) is not list:
            raise TypeError(f"expected an array, got {_type_name(value)}")
        return base(value, type_)

    return structure_tuple


def _is_homogeneous_tuple(type_: Any) -> bool:
    args = get_args(type_)
    return get_origin(type_) is tuple and len(args) == 2 and args[1] is Ellipsis


def make_converter() -> cattrs.Converter:
    """Build the SDK's converter (see the module docstring for its rules)."""
    conv = cattrs.Converter(detailed_validation=True)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(bool, _strict_bool)
    # Direct hooks for the nullable primitives: cattrs's generic Optional handling costs
    # about a fifth of the time of decoding a /kms page.
    conv.register_structure_hook_func(_is_nullable(str), _nullable(_strict_str))
    conv.register_structure_hook_func(_is_nullable(int), _nullable(_strict_int))
    conv.register_structure_hook_func(_is_nullable(bool), _nullable(_strict_bool))
    conv.register_structure_hook_factory(_is_homogeneous_tuple, _tuple_hook_factory)
    conv.register_structure_hook_factory(_is_model, _model_hook_factory)
    return conv


converter = make_converter()


def structure(value: Any, type_: type[T]) -> T:
    """Decode a parsed JSON value into ``type_``.

    Args:
        value: The parsed JSON (``dict``, ``list``, ...).
        type_: A model class, or ``Paginated[Model]``.

    Returns:
        The decoded, frozen model.

    Raises:
        DecodeError: The value does not fit; ``problems`` lists each mismatch with
            its JSON path, e.g. ``"expected a string, got integer @ $.items[0].url"``.
    """
    try:
        return converter.structure(value, type_)
    except Exception as exc:  # cattrs raises ExceptionGroups and plain errors alike
        name = getattr(get_origin(type_) or type_, "__name__", str(type_))
        if get_args(type_):
            name += "[" + ", ".join(getattr(a, "__name__", str(a)) for a in get_args(type_)) + "]"
        raise DecodeError(name, _problems(exc)) from exc


def _format(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    return str(exc) or type(exc).__name__


def _problems(exc: BaseException) -> list[str]:
    return cattrs.transform_error(exc, path="$", format_exception=_format) or [str(exc)]
