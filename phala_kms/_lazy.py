"""Module-level lazy attributes (PEP 562), shared by ``phala_kms`` and ``phala_kms.testing``.

Keeps ``import phala_kms`` cheap: aiohttp, the crypto stack and the fake server load on
first use of a name that needs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, namespace: dict[str, Any], names: Mapping[str, str], public: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build a package's ``__getattr__`` and ``__dir__``.

    Args:
        package: The package's ``__name__``.
        namespace: The package's ``globals()``; a loaded name is cached there.
        names: Attribute name -> the submodule (relative, without the dot) defining it.
        public: The package's ``__all__``: what ``dir()`` lists (the lazy names and the
            eagerly imported public ones, not helpers such as ``TYPE_CHECKING``).

    Returns:
        ``(__getattr__, __dir__)`` for the package's module namespace.
    """

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(public)

    return __getattr__, __dir__
