"""A private event loop on a daemon thread, and blocking calls handed into it.

:class:`LoopThread` starts, on first use, one daemon thread running an anyio event
loop (asyncio backend) held open by a :class:`anyio.from_thread.BlockingPortal`, which
also shuts it down, and owns the :class:`~phala_kms.AsyncKMSClient` living on it.
:meth:`LoopThread.run` runs a coroutine as a task on that loop
(``call_soon_threadsafe``) and waits on a plain lock that the task's done-callback
releases (:class:`Call`): the portal's own ``start_task_soon`` adds a task-group round
trip that costs as much as a whole loopback request, and
``run_coroutine_threadsafe(...).result()`` a ``concurrent.futures.Future`` and a
condition variable on both threads. The caller's thread never gets an event loop
created, set or closed on it. :class:`~phala_kms.KMSClient` is built on this.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
from anyio.from_thread import BlockingPortal

from .errors import ClientStateError

if TYPE_CHECKING:
    from ._config import ClientConfig
    from .client import AsyncKMSClient

__all__ = ["Call", "LoopThread"]

R = TypeVar("R")

_SHUTDOWN_TIMEOUT = 10.0
"""Seconds :meth:`KMSClient.close` waits for the loop thread to finish."""

_WAIT_SLICE = 0.1
"""Seconds a blocking call waits at a time, so an interrupt is seen within this long."""

# Objects inherited from the parent across fork(): kept alive, never touched, so
# their finalizers do not try to close the parent's sockets from the child.
_ABANDONED_AFTER_FORK: list[object] = []


_Started = tuple[BlockingPortal, asyncio.AbstractEventLoop]


def _run_portal(ready: concurrent.futures.Future[_Started]) -> None:
    async def main() -> None:
        async with BlockingPortal() as portal:
            ready.set_result((portal, asyncio.get_running_loop()))
            await portal.sleep_until_stopped()

    try:
        anyio.run(main, backend="asyncio")
    except BaseException as exc:  # pragma: no cover - start-up failure is reported to the caller
        if not ready.done():
            ready.set_exception(exc)
        raise


class LoopThread:
    """The portal thread and the async client living on it; holds no reference to KMSClient.

    Args:
        make_client: Makes the client: once now, and again in a child after ``fork()``.

    Attributes:
        config: The client's resolved settings (the same for every client it makes).
        closed: Whether :meth:`shutdown` has run.
    """

    def __init__(self, make_client: Callable[[], AsyncKMSClient]) -> None:
        self._make_client = make_client
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._client: AsyncKMSClient | None = make_client()
        self.config: ClientConfig = self._client.config
        self._portal: BlockingPortal | None = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.closed = False

    @property
    def thread_ident(self) -> int | None:
        thread = self._thread
        return thread.ident if thread is not None else None

    def get(self) -> tuple[asyncio.AbstractEventLoop, AsyncKMSClient]:
        loop, client = self._aloop, self._client
        if loop is not None and client is not None and self._pid == os.getpid():
            return loop, client
        with self._lock:
            if self.closed:
                raise ClientStateError("this KMSClient is closed; create a new one")
            if self._pid != os.getpid():  # forked: the loop thread does not exist here
                _ABANDONED_AFTER_FORK.append((self._portal, self._client, self._thread))
                self._portal = self._aloop = self._thread = None
                self._client = self._make_client()
                self._pid = os.getpid()
            if self._portal is None:
                ready: concurrent.futures.Future[_Started] = concurrent.futures.Future()
                thread = threading.Thread(
                    target=_run_portal, args=(ready,), name="phala-kms-loop", daemon=True
                )
                thread.start()
                self._portal, self._aloop = ready.result()
                self._thread = thread
            assert self._client is not None
            assert self._aloop is not None
            return self._aloop, self._client

    def shutdown(self) -> None:
        thread = self._thread
        if thread is not None and threading.get_ident() == thread.ident:
            # Checked before any state changes, so the refused close leaves the client whole.
            raise ClientStateError("KMSClient.close() cannot be called from its own loop thread")
        with self._lock:
            if self.closed:
                return
            self.closed = True
            portal, client, thread = self._portal, self._client, self._thread
            self._portal = self._aloop = self._client = self._thread = None
            if self._pid != os.getpid():
                _ABANDONED_AFTER_FORK.append((portal, client, thread))
                return
        if portal is None or thread is None or not thread.is_alive():
            return
        try:
            if client is not None:
                portal.call(client.aclose)
        finally:
            portal.call(portal.stop)
            thread.join(_SHUTDOWN_TIMEOUT)

    def run(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, R]) -> R:
        """Run ``coro`` on ``loop`` (from :meth:`get`) and block until it finishes.

        Ctrl-C (or any exception) while waiting cancels it on the loop thread.

        Raises:
            ClientStateError: Called from the loop thread itself, or the client was
                closed before or while it ran.
            Exception: Whatever ``coro`` raised.
        """
        if threading.get_ident() == self.thread_ident:
            coro.close()  # never started: close it so it is not reported as never awaited
            raise ClientStateError(
                "a KMSClient method was called from the client's own event-loop thread"
                " (e.g. inside an on_progress callback); use AsyncKMSClient there instead"
            )
        call = Call(coro)
        try:
            loop.call_soon_threadsafe(call.start, loop)
        except RuntimeError:  # the loop closed between get() and here: close() won the race
            coro.close()
            raise ClientStateError("this KMSClient is closed; create a new one") from None
        except BaseException:
            coro.close()
            raise
        try:
            # Wait in short slices: a wait without a timeout cannot be interrupted on
            # every platform (e.g. by _thread.interrupt_main(), or Ctrl-C on Windows).
            while not call.done.acquire(timeout=_WAIT_SLICE):
                if self.closed and not loop.is_running():
                    # close() stopped the loop before this call was started on it
                    call.abandon(loop)
                    raise ClientStateError("the KMSClient was closed while this call ran") from None
        except BaseException:
            call.abandon(loop)  # cancels the task on the loop thread
            raise
        return cast(R, call.result(self.closed))


class Call:
    """One blocking call: a coroutine run as a task on the loop thread, whose
    done-callback releases a plain lock that the calling thread waits on.

    The cheapest handoff between two threads CPython offers: no
    ``concurrent.futures.Future`` and no condition variable, which is what
    ``asyncio.run_coroutine_threadsafe(...).result()`` costs on both sides.
    """

    __slots__ = ("coro", "done", "finished", "task")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro: Coroutine[Any, Any, Any] | None = coro
        self.task: asyncio.Task[Any] | None = None
        self.finished = False
        self.done = threading.Lock()
        self.done.acquire()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop thread: start the task (unless the call was given up already)."""
        coro, self.coro = self.coro, None
        if coro is None:
            return
        try:
            self.task = loop.create_task(coro)
        except BaseException:
            coro.close()
            self._finish()
            raise
        self.task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here: asyncio must not log it as never retrieved
        self._finish()

    def _finish(self) -> None:
        self.finished = True
        self.done.release()

    def abandon(self, loop: asyncio.AbstractEventLoop) -> None:
        """From the calling thread: cancel the call; wait (bounded) while it winds down."""
        if not loop.is_running():  # stopped or closed: nothing will run the call any more
            self._drop()
            return
        try:
            loop.call_soon_threadsafe(self._cancel)
        except RuntimeError:  # closed in the meantime
            self._drop()
            return
        if not self.finished:
            self.done.acquire(timeout=_SHUTDOWN_TIMEOUT)

    def _drop(self) -> None:
        coro, self.coro = self.coro, None
        if coro is not None:  # never started: close it so it is not reported unawaited
            coro.close()

    def _cancel(self) -> None:
        """On the loop thread: close the coroutine if never started, else cancel the task."""
        coro, self.coro = self.coro, None
        if coro is not None:
            coro.close()
            self._finish()
        elif self.task is not None:
            self.task.cancel()

    def result(self, closed: bool) -> Any:
        """The task's result, or its exception raised (the task has finished).

        Raises:
            ClientStateError: The task never started, or ``close()`` (``closed``) cancelled it.
            concurrent.futures.CancelledError: It was cancelled otherwise.
        """
        task = self.task
        if task is None:  # start() failed: the loop is shutting down
            raise ClientStateError("the KMSClient was closed while this call ran")
        if task.cancelled():
            if closed:  # close() from another thread cancelled this call
                raise ClientStateError("the KMSClient was closed while this call ran")
            raise concurrent.futures.CancelledError
        return task.result()
