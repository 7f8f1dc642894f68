"""What a dstack TEE accepts as environment variables at boot, checked before encrypting.

A CVM decrypts its env vars once, at boot, with dstack's env parser (Dstack-TEE/dstack,
commit 312dc605, ``dstack/dstack-util/src/parse_env_file.rs``, ``fn parse_env``; the
allow-list comes from the app compose's ``allowed_envs``, ``dstack/dstack-types/src/lib.rs``
``struct AppCompose``). That parser:

* fails the boot for more than 1,024 variables, a name over 255 bytes, a value over
  128 KiB, or names plus values over 1 MiB (UTF-8 bytes);
* **silently skips** every name not in ``allowed_envs`` (a secret that "vanishes");
* keeps the last value of a duplicate name.

A payload the TEE would refuse is caught here instead, with a message that names the
variable (never its value): :func:`env_limit_problem` is what
:func:`phala_kms.encrypt_env_vars` runs. The allow-list can be read from an app
compose (:func:`allowed_envs_from_app_compose`) or guessed from a docker compose
file's ``${VAR}`` references (:func:`env_names_in_docker_compose`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TypeAlias

from ._constants import (
    TEE_MAX_ENV_NAME_BYTES,
    TEE_MAX_ENV_TOTAL_BYTES,
    TEE_MAX_ENV_VALUE_BYTES,
    TEE_MAX_ENV_VARS,
)
from .errors import InvalidArgumentError

__all__ = [
    "TEE_MAX_ENV_NAME_BYTES",
    "TEE_MAX_ENV_TOTAL_BYTES",
    "TEE_MAX_ENV_VALUE_BYTES",
    "TEE_MAX_ENV_VARS",
    "allowed_envs_from_app_compose",
    "check_allowed_envs",
    "env_limit_problem",
    "env_names_in_docker_compose",
]

Problem: TypeAlias = tuple[str, str | None]
"""A rejected env set: ``(message, the variable's name or None)``."""

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# ``$$`` is an escaped dollar; ``${NAME}``, ``${NAME:-x}``, ``${NAME?err}``... and ``$NAME``.
_COMPOSE_REF: Final = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}|\$([A-Za-z_][A-Za-z0-9_]*)"
)


def _shown(name: str) -> str:
    return repr(name if len(name) <= 64 else name[:64] + "...")


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def env_limit_problem(
    entries: Sequence[Mapping[str, str]],
    *,
    allowed_envs: frozenset[str] | None = None,
    allow_empty: bool = False,
) -> Problem | None:
    """Find the first reason a dstack TEE would refuse (or silently drop) these env vars.

    Never raises: its caller holds the values and raises once their frame is gone.

    Args:
        entries: The checked env vars, ``[{"key": name, "value": value}, ...]``.
        allowed_envs: The app compose's ``allowed_envs`` (see :func:`check_allowed_envs`),
            or ``None`` to skip that check (the TEE still skips names outside it).
        allow_empty: Accept an empty set (a CVM booted with no secrets).

    Returns:
        ``None`` when the TEE accepts every variable, else ``(message, name or None)``.
        Limits (dstack ``parse_env``): count <= :data:`TEE_MAX_ENV_VARS` (1,024), each
        name <= :data:`TEE_MAX_ENV_NAME_BYTES` (255 bytes), each value <=
        :data:`TEE_MAX_ENV_VALUE_BYTES` (131,072 bytes), names + values <=
        :data:`TEE_MAX_ENV_TOTAL_BYTES` (1,048,576 bytes), all in UTF-8.
    """
    if not entries:
        if allow_empty:
            return None
        return (
            "env_vars is empty: the CVM would boot with no environment; pass"
            " allow_empty=True if that is intended",
            None,
        )
    if len(entries) > TEE_MAX_ENV_VARS:
        return (
            f"{len(entries)} env vars: a dstack TEE accepts at most {TEE_MAX_ENV_VARS}"
            " (more fails the CVM's boot)",
            None,
        )
    total = 0
    for entry in entries:
        name = entry["key"]
        if allowed_envs is not None and name not in allowed_envs:
            return (
                f"env var {_shown(name)} is not in the app's allowed_envs: the TEE would"
                " silently drop it (add it to allowed_envs in the app compose)",
                name,
            )
        name_size = _utf8_size(name)
        if name_size > TEE_MAX_ENV_NAME_BYTES:
            return (
                f"env var {_shown(name)}: the name is {name_size} bytes; a dstack TEE"
                f" accepts at most {TEE_MAX_ENV_NAME_BYTES}",
                name,
            )
        value_size = _utf8_size(entry["value"])
        if value_size > TEE_MAX_ENV_VALUE_BYTES:
            return (
                f"env var {_shown(name)}: the value is {value_size} bytes; a dstack TEE"
                f" accepts at most {TEE_MAX_ENV_VALUE_BYTES} (128 KiB)",
                name,
            )
        total += name_size + value_size
    if total > TEE_MAX_ENV_TOTAL_BYTES:
        return (
            f"env vars hold {total} bytes of names and values; a dstack TEE accepts at"
            f" most {TEE_MAX_ENV_TOTAL_BYTES} (1 MiB)",
            None,
        )
    return None


def check_allowed_envs(allowed_envs: Iterable[str] | None) -> frozenset[str] | None:
    """Check an ``allowed_envs`` argument and freeze it.

    Args:
        allowed_envs: Names (an iterable of ``str``, not one ``str``), or ``None``.

    Returns:
        The names as a ``frozenset``, or ``None`` for ``None``.

    Raises:
        InvalidArgumentError: Not an iterable of valid env-var names
            (``argument="allowed_envs"``).
    """
    if allowed_envs is None:
        return None
    if isinstance(allowed_envs, (str, bytes)) or not isinstance(allowed_envs, Iterable):
        raise InvalidArgumentError(
            "allowed_envs must be an iterable of names (e.g. a list), not"
            f" {type(allowed_envs).__name__}",
            argument="allowed_envs",
        )
    names = tuple(allowed_envs)
    for name in names:
        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            raise InvalidArgumentError(
                f"allowed_envs holds {name!r}, which is not an env-var name"
                " ([A-Za-z_][A-Za-z0-9_]*)",
                argument="allowed_envs",
            )
    return frozenset(names)


def _read(source: os.PathLike[str], argument: str) -> str:
    try:
        with open(source, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidArgumentError(
            f"cannot read {argument} {os.fspath(source)!r}: {err}", argument=argument
        ) from err


def allowed_envs_from_app_compose(
    app_compose: Mapping[str, Any] | str | bytes | os.PathLike[str],
) -> tuple[str, ...]:
    """Read the ``allowed_envs`` of a dstack app compose (``app-compose.json``).

    dstack's ``AppCompose`` defaults a missing ``allowed_envs`` to an empty list: such
    an app receives **no** env var at all (Dstack-TEE/dstack
    ``dstack/dstack-types/src/lib.rs``).

    Args:
        app_compose: The parsed JSON object, its JSON text (``str`` or ``bytes``), or
            a path to the file (``pathlib.Path`` or another ``os.PathLike``).

    Returns:
        The allowed names, in file order (empty when absent).

    Raises:
        InvalidArgumentError: The file cannot be read, is not a JSON object, or its
            ``allowed_envs`` is not a list of env-var names (``argument="app_compose"``).
    """
    data: object = app_compose
    if isinstance(app_compose, os.PathLike):
        data = _read(app_compose, "app_compose")
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError as err:
            raise InvalidArgumentError(
                f"app_compose is not JSON: {err}", argument="app_compose"
            ) from err
    if not isinstance(data, Mapping):
        raise InvalidArgumentError(
            f"app_compose must be a JSON object, not {type(data).__name__}",
            argument="app_compose",
        )
    names = data.get("allowed_envs", [])
    if names is None:
        names = []
    if not isinstance(names, list) or not all(
        isinstance(n, str) and _NAME.fullmatch(n) for n in names
    ):
        raise InvalidArgumentError(
            "app_compose allowed_envs must be a list of env-var names", argument="app_compose"
        )
    return tuple(names)


def env_names_in_docker_compose(docker_compose: str | os.PathLike[str]) -> tuple[str, ...]:
    """The env-var names a docker compose file interpolates (``${NAME}``, ``${NAME:-x}``,
    ``$NAME``; ``$$`` is an escaped dollar), a starting point for ``allowed_envs``.

    Args:
        docker_compose: The file's text, or a path to it (``os.PathLike``).

    Returns:
        The names, sorted, each once.

    Raises:
        InvalidArgumentError: The file cannot be read (``argument="docker_compose"``).
    """
    text = docker_compose
    if isinstance(docker_compose, os.PathLike):
        text = _read(docker_compose, "docker_compose")
    if not isinstance(text, str):
        raise InvalidArgumentError(
            "docker_compose must be the file's text or a path", argument="docker_compose"
        )
    names = {braced or bare for braced, bare in _COMPOSE_REF.findall(text) if braced or bare}
    return tuple(sorted(names))
