"""The paging rule shared by the async and blocking iterators."""

from __future__ import annotations

from typing import Any

from .models import Paginated

__all__ = ["next_page"]


def next_page(requested: int, result: Paginated[Any]) -> int | None:
    """The page to fetch after page ``requested`` returned ``result``, or ``None`` at the end.

    The last page is the server's ``pages``; an empty page also ends the walk, and
    the count follows the pages requested rather than the ``page`` echoed back, so a
    server that miscounts can never make an iterator loop forever.
    """
    if not result.items or requested >= result.pages:
        return None
    return requested + 1
