"""The fan-out pool: many keyed fetches, bounded, de-duplicated, in input order.

A fixed set of workers pulls distinct keys one by one, so memory stays flat
however many keys are passed; results come back in input order, duplicates
sharing one result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from .errors import InvalidArgumentError, PhalaKMSError

__all__ = ["ProgressCallback", "fan_out"]

R = TypeVar("R")

ProgressCallback = Callable[[int, int], None]
"""Called as ``on_progress(done, total)`` after each distinct key of a fan-out finishes."""


async def fan_out(
    raw_keys: Iterable[object],
    fetch: Callable[[str], Awaitable[R]],
    *,
    normalise: Callable[[object], str],
    workers: int,
    return_exceptions: bool,
    on_progress: ProgressCallback | None,
    argument: str,
) -> list[Any]:
    """Run ``fetch(key)`` once per distinct normalised key, at most ``workers`` at once.

    Args:
        raw_keys: The keys as given (read once).
        fetch: Fetches one normalised key.
        normalise: Checks one raw key and returns its canonical form; raises
            :class:`~phala_kms.errors.InvalidArgumentError` for a malformed one.
        workers: How many fetches may be in flight at once, >= 1.
        return_exceptions: ``False``: the first failure cancels the rest and is
            raised. ``True``: a failed key's slot holds its
            :class:`~phala_kms.errors.PhalaKMSError` and the rest carry on.
        on_progress: Called as ``(done, total)`` after each distinct well-formed key.
        argument: The parameter name for errors about a malformed key.

    Returns:
        One entry per raw key, in input order.

    Raises:
        InvalidArgumentError: With ``return_exceptions=False``, a malformed key;
            nothing is fetched.
        PhalaKMSError: With ``return_exceptions=False``, the first failed fetch.
    """
    slot_of: dict[str, int] = {}
    unique: list[str] = []
    slots: list[int] = []
    invalid: dict[int, PhalaKMSError] = {}
    for position, raw in enumerate(raw_keys):
        try:
            key = normalise(raw)
        except InvalidArgumentError as err:
            if not return_exceptions:
                raise InvalidArgumentError(
                    f"{argument}[{position}]: {err.message}", argument=argument
                ) from None
            invalid[position] = err
            slots.append(-1)
            continue
        slot = slot_of.get(key)
        if slot is None:
            slot = slot_of[key] = len(unique)
            unique.append(key)
        slots.append(slot)
    del slot_of

    results: list[Any] = [None] * len(unique)
    total = len(unique)
    done = 0
    pending = iter(range(total))

    async def worker() -> None:
        nonlocal done
        for index in pending:
            try:
                results[index] = await fetch(unique[index])
            except PhalaKMSError as err:
                if not return_exceptions:
                    raise
                results[index] = err
            done += 1
            if on_progress is not None:
                on_progress(done, total)

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(workers, total))]
    try:
        if tasks:
            finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in finished:
                failure = None if task.cancelled() else task.exception()
                if failure is not None:
                    raise failure
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    return [invalid[position] if slot < 0 else results[slot] for position, slot in enumerate(slots)]
