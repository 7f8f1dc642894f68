"""The paging walk shared by the async and blocking iterators."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from .models import Paginated

__all__ = ["awalk_pages", "next_page", "walk_pages"]

T = TypeVar("T")


def next_page(requested: int, result: Paginated[Any]) -> int | None:
    """The page to fetch after page ``requested`` returned ``result``, or ``None`` at the end.

    The last page is the server's ``pages``; an empty page also ends the walk, and
    the count follows the pages requested rather than the ``page`` echoed back, so a
    server that miscounts can never make an iterator loop forever.
    """
    if not result.items or requested >= result.pages:
        return None
    return requested + 1


async def awalk_pages(fetch: Callable[[int], Awaitable[Paginated[T]]]) -> AsyncIterator[T]:
    """Yield every item of every page, calling ``fetch(page)`` for pages 1, 2, ... in turn."""
    page: int | None = 1
    while page is not None:
        result = await fetch(page)
        for item in result.items:
            yield item
        page = next_page(page, result)


def walk_pages(fetch: Callable[[int], Paginated[T]]) -> Iterator[T]:
    """The blocking twin of :func:`awalk_pages`."""
    page: int | None = 1
    while page is not None:
        result = fetch(page)
        yield from result.items
        page = next_page(page, result)
