"""The paging walk shared by the async and blocking iterators, guarded against loops."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from .errors import InvalidArgumentError, ResponseValidationError
from .models import Paginated

__all__ = ["awalk_pages", "check_max_pages", "next_page", "walk_pages"]

T = TypeVar("T")


def next_page(requested: int, result: Paginated[Any], *, first_total: int) -> int | None:
    """The page to fetch after page ``requested`` returned ``result``, or ``None`` at the end.

    The end is :attr:`Paginated.has_next` (the one rule). A server that cannot be
    walked to an end raises instead of looping.

    Args:
        requested: The page number that was asked for.
        result: What the server answered.
        first_total: ``total`` as page 1 reported it; the walk never asks for more
            than ``ceil(first_total / page_size)`` pages.

    Raises:
        ResponseValidationError: The server echoed another ``page`` than the one
            asked for (it ignores ``?page``), or says more pages follow than its
            first ``total`` allows.
    """
    if result.page != requested:
        raise _loop_error(f"asked for page {requested} but the server answered page {result.page}")
    if not result.has_next:
        return None
    limit = math.ceil(first_total / result.page_size) if result.page_size > 0 else 0
    if requested >= limit:
        raise _loop_error(
            f"page {requested} says more pages follow, but total={first_total} with"
            f" page_size={result.page_size} allows only {limit}"
        )
    return requested + 1


def check_max_pages(max_pages: int | None) -> None:
    """Reject a ``max_pages`` that is not ``None`` or an int >= 1 (before any request).

    Raises:
        InvalidArgumentError: ``max_pages`` is not ``None`` or an int >= 1.
    """
    if max_pages is not None and (type(max_pages) is not int or max_pages < 1):
        raise InvalidArgumentError(
            f"max_pages must be an int >= 1 or None, got {max_pages!r}", argument="max_pages"
        )


def _past_max_pages(page: int, max_pages: int | None) -> None:
    if max_pages is not None and page > max_pages:
        raise _loop_error(
            f"more pages follow page {max_pages}, the max_pages given; the walk stopped there"
        )


def _loop_error(problem: str) -> ResponseValidationError:
    return ResponseValidationError(
        f"200: the paging cannot end: {problem}",
        status=200,
        method="GET",
        model="Paginated",
        problems=(problem,),
    )


async def awalk_pages(
    fetch: Callable[[int], Awaitable[Paginated[T]]], max_pages: int | None = None
) -> AsyncIterator[T]:
    """Yield every item of every page, calling ``fetch(page)`` for pages 1, 2, ... in turn.

    Args:
        fetch: Fetches one page.
        max_pages: The most pages fetched, or ``None`` (the server's ``total`` bounds
            the walk anyway).

    Raises:
        ResponseValidationError: As :func:`next_page`, or page ``max_pages`` says more
            pages follow (raised after its items are yielded, before another request).
    """
    page: int | None = 1
    first_total: int | None = None
    while page is not None:
        _past_max_pages(page, max_pages)
        result = await fetch(page)
        if first_total is None:
            first_total = result.total
        page_after = next_page(page, result, first_total=first_total)
        for item in result.items:
            yield item
        page = page_after


def walk_pages(fetch: Callable[[int], Paginated[T]], max_pages: int | None = None) -> Iterator[T]:
    """The blocking twin of :func:`awalk_pages`."""
    page: int | None = 1
    first_total: int | None = None
    while page is not None:
        _past_max_pages(page, max_pages)
        result = fetch(page)
        if first_total is None:
            first_total = result.total
        page_after = next_page(page, result, first_total=first_total)
        yield from result.items
        page = page_after
