"""The fan-out pools: many keyed fetches, bounded.

:func:`fan_out` returns a list: a fixed set of workers pulls distinct keys one by one,
results come back in input order, duplicates sharing one result. :func:`stream_fan_out`
yields each result as it finishes and reads its keys lazily, so its memory is
O(workers) however many keys there are.

Every error of a fetch is labelled with the key it was for (``app_id``) and the
call's ``kms``. A callback that raises is reported as a
:class:`~phala_kms.errors.CallbackError`, never as a key's failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Iterable
from typing import Any, TypeVar

from .errors import CallbackError, InvalidArgumentError, PhalaKMSError

__all__ = ["ProgressCallback", "fan_out", "label_error", "stream_fan_out"]

R = TypeVar("R")

ProgressCallback = Callable[[int, int], None]
"""Called as ``on_progress(done, total)`` after each distinct key of a fan-out finishes."""


def _shown(raw: object) -> str:
    text = raw if isinstance(raw, str) else repr(raw)
    return text if len(text) <= 80 else text[:77] + "..."


def label_error(err: PhalaKMSError, app_id: str, kms: str | None) -> PhalaKMSError:
    """Set ``err.app_id`` and ``err.kms`` (the key it failed for, the call's ``kms``)."""
    err.app_id = app_id
    err.kms = kms
    return err


def _progress(on_progress: ProgressCallback, done: int, total: int) -> None:
    try:
        on_progress(done, total)
    except Exception as exc:
        raise CallbackError(
            f"on_progress({done}, {total}) raised {type(exc).__name__}: {exc}; the batch"
            " was stopped (the error is the callback's, not a request's)",
            callback="on_progress",
        ) from exc


async def fan_out(
    raw_keys: Iterable[object],
    fetch: Callable[[str], Awaitable[R]],
    *,
    normalise: Callable[[object], str],
    workers: int,
    return_exceptions: bool,
    on_progress: ProgressCallback | None,
    argument: str,
    kms: str | None = None,
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
        kms: The call's ``kms``, set on every error as ``kms``.

    Returns:
        One entry per raw key, in input order. Each error carries ``app_id`` (the
        normalised key; a malformed one as given) and ``kms``.

    Raises:
        InvalidArgumentError: With ``return_exceptions=False``, a malformed key;
            nothing is fetched.
        PhalaKMSError: With ``return_exceptions=False``, the first failed fetch. Its
            message ends with the key and what became of the rest of the batch, e.g.
            ``[app_id 0a..., kms 'phala': 1 other id failed, 31 in flight were
            cancelled, 100 not started]``.
        CallbackError: ``on_progress`` raised (chained); the batch was stopped.
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
                raise label_error(
                    InvalidArgumentError(
                        f"{argument}[{position}]: {err.message}", argument=argument
                    ),
                    _shown(raw),
                    kms,
                ) from None
            invalid[position] = label_error(err, _shown(raw), kms)
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
    in_flight = 0
    failed: list[PhalaKMSError] = []  # without return_exceptions: the fetches that failed
    pending = iter(range(total))

    async def worker() -> None:
        nonlocal done, in_flight
        for index in pending:
            key = unique[index]
            in_flight += 1
            try:
                results[index] = await fetch(key)
            except PhalaKMSError as err:
                label_error(err, key, kms)
                if not return_exceptions:
                    failed.append(err)
                    raise
                results[index] = err
            finally:
                in_flight -= 1
            done += 1
            if on_progress is not None:
                _progress(on_progress, done, total)

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(workers, total))]
    try:
        if tasks:
            finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failures = [
                failure
                for task in finished
                if not task.cancelled() and (failure := task.exception()) is not None
            ]
            if failures:
                first = failures[0]
                if failed and any(failure is failed[0] for failure in failures):
                    first = failed[0]  # the first fetch that failed, and the batch's fate
                    _add_batch_outcome(
                        first, others=len(failed) - 1, cancelled=in_flight,
                        not_started=total - done - in_flight - len(failed),
                    )  # fmt: skip
                raise first
    finally:
        await _cancel_all(tasks)

    return [invalid[position] if slot < 0 else results[slot] for position, slot in enumerate(slots)]


def _add_batch_outcome(
    err: PhalaKMSError, *, others: int, cancelled: int, not_started: int
) -> None:
    """End ``err``'s message with its key and what became of the rest of the batch."""
    parts = [f"{others} other id{'' if others == 1 else 's'} failed"] if others else []
    parts.append(f"{cancelled} in flight {'was' if cancelled == 1 else 'were'} cancelled")
    parts.append(f"{max(0, not_started)} not started")
    suffix = f" [app_id {err.app_id}, kms {err.kms!r}: the batch stopped; {', '.join(parts)}]"
    err.args = (err.message + suffix, *err.args[1:])


async def stream_fan_out(
    raw_keys: Iterable[object],
    fetch: Callable[[str], Awaitable[R]],
    *,
    normalise: Callable[[object], str],
    workers: int,
    kms: str | None = None,
) -> AsyncGenerator[tuple[object, R | PhalaKMSError], None]:
    """Yield ``(raw_key, result_or_error)`` for each raw key as its fetch finishes.

    Keys are read from ``raw_keys`` only when a worker is free, and at most
    ``workers`` fetches are in flight, so memory is O(workers) for any number of
    keys (a generator of a million keys is fine). Nothing is de-duplicated: each
    occurrence of a key is fetched and yielded. A malformed key is yielded with its
    :class:`~phala_kms.errors.InvalidArgumentError` and never fetched; a failed
    fetch with its error. Every error carries ``app_id`` and ``kms``.

    Closing the iterator early (``aclose()``, or leaving an ``async with
    contextlib.aclosing(...)`` block) cancels the fetches in flight and reads no
    more keys.

    Raises:
        Whatever ``raw_keys`` raises while being read, or a fetch raises that is not a
        :class:`~phala_kms.errors.PhalaKMSError` (after cancelling the rest).
    """
    keys = iter(raw_keys)
    exhausted = False
    running: dict[asyncio.Future[R], object] = {}
    try:
        while True:
            while not exhausted and len(running) < workers:
                try:
                    raw = next(keys)
                except StopIteration:
                    exhausted = True
                    break
                try:
                    key = normalise(raw)
                except InvalidArgumentError as err:
                    yield raw, label_error(err, _shown(raw), kms)
                    continue
                running[asyncio.ensure_future(fetch(key))] = raw
            if not running:
                return
            finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in finished:
                raw = running.pop(task)
                failure = task.exception()
                if failure is None:
                    yield raw, task.result()
                elif isinstance(failure, PhalaKMSError):
                    key = normalise(raw)
                    yield raw, label_error(failure, key, kms)
                else:
                    raise failure
    finally:
        await _cancel_all(running)


async def _cancel_all(tasks: Collection[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has finished (so none outlives its fan-out)."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
