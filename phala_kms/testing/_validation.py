"""FastAPI/pydantic-style parameter validation for the fake.

Each check appends an error item shaped like FastAPI's 422 body
(``{"loc", "msg", "type", "ctx"?, "input"}``) to a list and returns the parsed value
(or the default when the parameter is absent).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["ErrorList", "parse_bool", "parse_int", "pattern_error"]

ErrorList = list[dict[str, Any]]

_INT = re.compile(r"\s*[+-]?\d+\s*")
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _item(
    loc: str, name: str, msg: str, kind: str, value: str, ctx: dict[str, Any] | None
) -> dict[str, Any]:
    item: dict[str, Any] = {"loc": [loc, name], "msg": msg, "type": kind}
    if ctx is not None:
        item["ctx"] = ctx
    item["input"] = value
    return item


def parse_int(
    query: Mapping[str, str],
    name: str,
    default: int,
    errors: ErrorList,
    *,
    ge: int | None = None,
    le: int | None = None,
) -> int:
    """Parse an integer query parameter bounded by ``ge``/``le``, as FastAPI would."""
    raw = query.get(name)
    if raw is None:
        return default
    if not _INT.fullmatch(raw):
        errors.append(
            _item(
                "query",
                name,
                "Input should be a valid integer, unable to parse string as an integer",
                "int_parsing",
                raw,
                None,
            )
        )
        return default
    value = int(raw)
    if ge is not None and value < ge:
        errors.append(
            _item(
                "query",
                name,
                f"Input should be greater than or equal to {ge}",
                "greater_than_equal",
                raw,
                {"ge": ge},
            )
        )
    elif le is not None and value > le:
        errors.append(
            _item(
                "query",
                name,
                f"Input should be less than or equal to {le}",
                "less_than_equal",
                raw,
                {"le": le},
            )
        )
    return value


def parse_bool(query: Mapping[str, str], name: str, errors: ErrorList) -> bool | None:
    """Parse an optional boolean query parameter (``true``/``false``, ``1``/``0``, ...)."""
    raw = query.get(name)
    if raw is None:
        return None
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    errors.append(
        _item(
            "query",
            name,
            "Input should be a valid boolean, unable to interpret input",
            "bool_parsing",
            raw,
            None,
        )
    )
    return None


def pattern_error(loc: str, name: str, value: str, pattern: str) -> dict[str, Any]:
    """The error item for a string that does not match ``pattern``."""
    return _item(
        loc,
        name,
        f"String should match pattern '{pattern}'",
        "string_pattern_mismatch",
        value,
        {"pattern": pattern},
    )
