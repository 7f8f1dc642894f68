"""Running a fake server on its own event loop in a background thread, for sync code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from types import TracebackType
from typing import Generic, Protocol, TypeVar

__all__ = ["ServerThread"]


class _Server(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


ServerT = TypeVar("ServerT", bound=_Server)


class ServerThread(Generic[ServerT]):
    """Runs a server (anything with async ``start()`` and ``close()``) on its own event
    loop in a background thread.

    Leaving the ``with`` block closes the server and its connections, stops the loop and
    joins the thread. The thread is a daemon, so a forgotten :meth:`stop` cannot hang
    interpreter exit.

    Attributes:
        server: the server it runs.
    """

    def __init__(self, server: ServerT, *, thread_name: str) -> None:
        """Wrap ``server``; nothing runs until :meth:`start`."""
        self.server = server
        self._thread_name = thread_name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None

    def start(self, timeout: float = 30.0) -> ServerT:
        """Start the thread and the server; return the running server.

        Args:
            timeout: seconds to wait for the server to listen.

        Raises:
            RuntimeError: already started.
            OSError: the address could not be bound.
        """
        if self._thread is not None:
            raise RuntimeError("the threaded fake server is already running")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        thread = threading.Thread(
            target=asyncio.run,
            args=(self._main(started),),
            name=self._thread_name,
            daemon=True,
        )
        thread.start()
        try:
            started.result(timeout)
        except BaseException:
            thread.join(timeout)
            raise
        self._thread = thread
        return self.server

    async def _main(self, started: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            started.set_exception(exc)
            return
        started.set_result(None)
        try:
            await self._stop_event.wait()
        finally:
            await self.server.close()

    def stop(self) -> None:
        """Close the server, stop its loop and join the thread; a no-op when stopped."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(event.set)
        thread.join()

    def __enter__(self) -> ServerT:
        """Start and return the running server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server and join the thread."""
        self.stop()
