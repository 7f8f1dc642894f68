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

Two paths, one set of rules. The *fast path* is a function generated once per model
(``_fast_decoder``, like cattrs' own generated functions): straight-line type checks
on a well-formed body, each instance filled in without ``__init__`` (a frozen attrs
``__init__`` alone cost more than phala-cloud's whole pydantic decode of a page; see
``_open_twin``). It builds no error: on any mismatch it gives up, and the *slow path*,
the cattrs converter with detailed validation, decodes the same value again and says
what is wrong and where, so errors are exactly the converter's. The fast path only
takes models it can build exactly as the converter does (slotted, no validators,
converters except ``extra``'s, no ``__attrs_post_init__``, field types it knows); any
other type goes to the converter directly. Tests hold the two paths to the same
results and the same refusals (tests/sdk/test_decode.py).
"""

from __future__ import annotations

import linecache
import types
from collections.abc import Callable
from typing import Any, Optional, TypeVar, Union, get_args, get_origin, get_type_hints

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


_FIELD_HOOKS: dict[type, dict[str, Callable[[Any, Any], Any]]] = {
    # both go straight back to the API when provisioning a CVM
    NextAppID: {"app_id": _hex_field(20), "nonce": _non_negative_int},
    AppEnvEncryptPubKey: {
        "public_key": _hex_field(32),
        "signature": _hex_field(65),
        "signature_v1": _nullable(_hex_field(65)),
    },
}
"""Per-model structure hooks for single fields (normalising or range-checking ones)."""


def _is_model(type_: Any) -> bool:
    cls = get_origin(type_) or type_
    return isinstance(cls, type) and attrs.has(cls) and "extra" in attrs.fields_dict(cls)


def _model_hook_factory(type_: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """Structure a model: object check, generated field decoding, unknown keys into ``extra``."""
    cls = get_origin(type_) or type_
    known = frozenset(a.name for a in attrs.fields(cls) if a.name != "extra")
    overrides: dict[str, Any] = {"extra": override(omit=True)}
    for name, hook in _FIELD_HOOKS.get(cls, {}).items():
        overrides[name] = override(struct_hook=hook)
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
    fast = _fast_decoder(type_)
    if fast is not None:
        try:
            return fast(value)  # type: ignore[no-any-return]
        except Exception:  # noqa: S110 - the slow path below says what is wrong
            pass
    return structure_checked(value, type_)


def structure_checked(value: Any, type_: type[T]) -> T:
    """:func:`structure` through the cattrs converter only: the slow path, which
    names every problem with its JSON path. Same arguments, result and errors."""
    try:
        return converter.structure(value, type_)
    except Exception as exc:  # cattrs raises ExceptionGroups and plain errors alike
        name = getattr(get_origin(type_) or type_, "__name__", str(type_))
        if get_args(type_):
            name += "[" + ", ".join(getattr(a, "__name__", str(a)) for a in get_args(type_)) + "]"
        raise DecodeError(name, _problems(exc)) from exc


# --------------------------------------------------------------------------- the fast path

_FAST: dict[Any, Callable[[Any], Any] | None] = {}
"""Generated decoders by type (``None``: that type always takes the slow path)."""

_PRIMITIVES: dict[type, str] = {str: "str", int: "int", bool: "bool"}


class _Unsupported(Exception):
    """A type the fast path cannot build exactly as the converter does."""


class _Mismatch(Exception):
    """The value does not fit; the slow path finds out where."""


def _fast_decoder(type_: Any) -> Callable[[Any], Any] | None:
    """The generated decoder of ``type_`` (made on first use), or ``None``."""
    try:
        return _FAST[type_]
    except KeyError:
        pass
    except TypeError:  # an unhashable type argument
        return None
    _FAST[type_] = None  # also guards against a model that contains itself
    try:
        decoder: Callable[[Any], Any] | None = _generate(type_)
    except _Unsupported:
        decoder = None
    _FAST[type_] = decoder
    return decoder


def _nullable_arg(hint: Any) -> Any:
    """``X`` for ``X | None``, else ``None``."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(get_args(hint)) == 2:
            return args[0]
    return None


def _substitute(hint: Any, params: dict[Any, Any]) -> Any:
    """``hint`` with the type variables of a generic model replaced."""
    if isinstance(hint, TypeVar):
        if hint not in params:
            raise _Unsupported(hint)
        return params[hint]
    args = get_args(hint)
    if not args:
        return hint
    new = tuple(a if a is Ellipsis else _substitute(a, params) for a in args)
    if new == args:
        return hint
    origin = get_origin(hint)
    if origin is tuple:
        return tuple[new]  # type: ignore[valid-type]
    if origin in (Union, types.UnionType):
        return Union[new]  # noqa: UP007 - built from a tuple of types
    raise _Unsupported(hint)


def _model_fields(type_: Any) -> tuple[type, list[tuple[Any, Any]]]:
    """The class and its ``(attrs field, resolved type)`` pairs, ``extra`` left out."""
    cls = get_origin(type_) or type_
    if not (isinstance(cls, type) and _is_model(cls)):
        raise _Unsupported(type_)
    if hasattr(cls, "__attrs_post_init__") or hasattr(cls, "__attrs_pre_init__"):
        raise _Unsupported(type_)
    params = dict(zip(getattr(cls, "__parameters__", ()), get_args(type_), strict=False))
    hints = get_type_hints(cls)
    fields = []
    for field in attrs.fields(cls):
        if field.validator is not None or not field.init or field.alias != field.name:
            raise _Unsupported(type_)
        if field.name == "extra":
            continue
        if field.converter is not None or isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            raise _Unsupported(type_)
        fields.append((field, _substitute(hints[field.name], params)))
    return cls, fields


def _slot_setters(cls: type) -> dict[str, Callable[[Any, Any], None]]:
    """The slot descriptors' setters of every field of ``cls`` (which bypass frozen-ness)."""
    setters = {}
    for field in attrs.fields(cls):
        descriptor = getattr(cls, field.name, None)
        if not isinstance(descriptor, types.MemberDescriptorType):
            raise _Unsupported(cls)  # not a slotted class
        setters[field.name] = descriptor.__set__
    return setters


def _open_twin(cls: type) -> type | None:
    """A subclass of ``cls`` with the same slots and plain attribute assignment.

    An instance is filled in as the twin (``obj.x = v`` is a direct slot store, several
    times cheaper than calling a slot descriptor's ``__set__``), then becomes a ``cls``
    by ``obj.__class__ = cls``, which Python allows between classes with the same
    layout. ``None`` where that assignment is refused (then the setters are used).
    """
    namespace = {
        "__slots__": (),
        "__setattr__": object.__setattr__,  # both: they share one C slot
        "__delattr__": object.__delattr__,
        "__module__": __name__,
        "__qualname__": f"_Open{cls.__name__}",
    }
    try:
        twin = type(f"_Open{cls.__name__}", (cls,), namespace)
        probe: Any = object.__new__(twin)
        probe.__class__ = cls
    except TypeError:
        return None
    return twin


def _check(hint: Any, var: str, env: dict[str, Any], pad: str) -> list[str]:
    """Lines that check (and if needed convert) ``var`` in place as a ``hint``."""
    if hint in _PRIMITIVES:
        return [f"{pad}if type({var}) is not {_PRIMITIVES[hint]}: raise mismatch"]
    inner = _nullable_arg(hint)
    if inner in _PRIMITIVES:
        return [
            f"{pad}if {var} is not None and type({var}) is not {_PRIMITIVES[inner]}: raise mismatch"
        ]
    if inner is not None and _is_model(inner):
        return [f"{pad}if {var} is not None:", *_check(inner, var, env, pad + "    ")]
    if _is_model(hint):
        decoder = _fast_decoder(hint)
        if decoder is None:
            raise _Unsupported(hint)
        key = f"decode_{len(env)}"
        env[key] = decoder
        return [f"{pad}{var} = {key}({var})"]
    if _is_homogeneous_tuple(hint):
        item = get_args(hint)[0]
        lines = [f"{pad}if type({var}) is not list: raise mismatch"]
        if _is_model(item):
            key = f"decode_{len(env)}"
            env[key] = _fast_decoder(item)
            if env[key] is None:
                raise _Unsupported(item)
            return [*lines, f"{pad}{var} = tuple([{key}(x) for x in {var}])"]
        if item not in _PRIMITIVES and _nullable_arg(item) not in _PRIMITIVES:
            raise _Unsupported(hint)  # (the loop below cannot nest)
        return [
            *lines,
            f"{pad}for x in {var}:",
            *_check(item, "x", env, pad + "    "),
            f"{pad}{var} = tuple({var})",
        ]
    raise _Unsupported(hint)


def _generate(type_: Any, *, twin: bool = True) -> Callable[[Any], Any]:
    """Generate the fast decoder of one model (see the module docstring).

    ``twin=False`` fills slots through their descriptors even where an open twin
    (see :func:`_open_twin`) could be used: the same result, slower; for tests.
    """
    cls, fields = _model_fields(type_)
    hooks = _FIELD_HOOKS.get(cls, {})
    known = frozenset(field.name for field, _ in fields)
    freeze_extra = attrs.fields(cls).extra.converter  # what __init__ would apply
    if not callable(freeze_extra):
        raise _Unsupported(type_)
    setters = _slot_setters(cls)
    open_cls = _open_twin(cls) if twin else None
    env: dict[str, Any] = {
        "cls": cls,
        "open_cls": open_cls,
        "new": object.__new__,
        "mismatch": _Mismatch,
        "empty_extra": freeze_extra({}),
        "freeze_extra": freeze_extra,
        "known": known,
    }

    def store(name: str, value: str) -> str:
        if open_cls is not None:
            return f"obj.{name} = {value}"
        env[f"set_{name}"] = setters[name]
        return f"set_{name}(obj, {value})"

    required = sum(1 for field, _ in fields if field.default is attrs.NOTHING)
    lines = [
        "def decode(o):",
        "    if type(o) is not dict: raise mismatch",
        f"    obj = new({'cls' if open_cls is None else 'open_cls'})",
        f"    n = {required}",
    ]
    for field, hint in fields:
        name = field.name
        if name in hooks:
            env[f"hook_{name}"] = hooks[name]
            check = [f"        v = hook_{name}(v, None)"]
        else:
            check = _check(hint, "v", env, "        ")
        if field.default is attrs.NOTHING:
            lines += [f"    v = o[{name!r}]", *(c[4:] for c in check), f"    {store(name, 'v')}"]
        else:
            env[f"default_{name}"] = field.default
            lines += [
                f"    if {name!r} in o:",
                f"        v = o[{name!r}]",
                "        n += 1",
                *check,
                f"        {store(name, 'v')}",
                "    else:",
                f"        {store(name, f'default_{name}')}",
            ]
    lines += [
        "    if len(o) == n:",
        f"        {store('extra', 'empty_extra')}",
        "    else:",
        f"        {store('extra', 'freeze_extra({k: x for k, x in o.items() if k not in known})')}",
    ]
    if open_cls is not None:
        lines.append("    obj.__class__ = cls")
    lines.append("    return obj")
    source = "\n".join(lines) + "\n"
    filename = f"<phala_kms fast decoder {type_!r}{'' if open_cls else ' (setters)'}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), env)  # noqa: S102 - our own generated code
    decoder: Callable[[Any], Any] = env["decode"]
    return decoder


def _format(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    return str(exc) or type(exc).__name__


def _problems(exc: BaseException) -> list[str]:
    return cattrs.transform_error(exc, path="$", format_exception=_format) or [str(exc)]
