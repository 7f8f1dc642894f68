"""The connection pool: its connector, its size, its slots, and closing it from anywhere.

* :func:`make_connector` builds the owned session's ``aiohttp.TCPConnector``, whose
  connections read at most :data:`READ_SIZE` bytes per ``recv`` (see
  :func:`tune_reads`).
* :func:`pool_limit` is how many requests may hold a connection at once.
* :class:`PoolSlots`: aiohttp's ``total`` timeout starts before a request has a pooled
  connection, so a request queued behind a full pool can time out without ever being
  sent. The transport therefore holds one :class:`PoolSlots` sized to the pool: a
  request takes a slot first (waiting at most ``pool_timeout``), and only then starts
  its own timed request, which never waits for a connection because the pool has one
  for every slot.
* :func:`close_connector_now` closes the connector's sockets without awaiting, even
  once its event loop is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import Any

import aiohttp

__all__ = [
    "READ_SIZE",
    "PoolSlots",
    "close_connector_now",
    "make_connector",
    "pool_limit",
    "tune_reads",
]

READ_SIZE = 64 * 1024
"""Bytes read per ``recv`` on the SDK's own connections (asyncio's default: 256 KiB).

A 256 KiB read buffer is above glibc's default mmap threshold (128 KiB), so, in a
fresh process, every read of a small response maps, remaps and unmaps memory (two
page faults, and with a second thread a TLB shootdown on every unmap); 64 KiB comes
from the heap. Responses of this API are a few KiB, a 100-item page ~60 KiB."""


def tune_reads(transport: object) -> bool:
    """Make asyncio read at most :data:`READ_SIZE` bytes at a time on ``transport``.

    asyncio has no public setting for it: the size is the ``max_size`` attribute of
    its selector transport (plain TCP), of the TLS protocol behind an SSL transport
    (``_ssl_protocol``, whose decrypted reads use it) and, on Python 3.10, of the TLS
    pipe (``_sslpipe``). Each is set only where it exists as an int, so another event
    loop (uvloop) or a future asyncio is left as it is.

    Returns:
        Whether any read size was set.
    """
    ssl_protocol = getattr(transport, "_ssl_protocol", None)
    targets = [transport]
    if ssl_protocol is not None:
        targets += [
            ssl_protocol,
            getattr(ssl_protocol, "_transport", None),
            getattr(ssl_protocol, "_sslpipe", None),
        ]
    tuned = False
    for target in targets:
        size = getattr(target, "max_size", None)
        if isinstance(size, int) and not isinstance(size, bool) and size > READ_SIZE:
            with contextlib.suppress(AttributeError, TypeError):
                target.max_size = READ_SIZE  # type: ignore[attr-defined]
                tuned = True
    return tuned


def _hookable() -> bool:
    """Whether this aiohttp creates connections through ``_wrap_create_connection``."""
    return asyncio.iscoroutinefunction(
        getattr(aiohttp.TCPConnector, "_wrap_create_connection", None)
    )


class _TunedConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` whose new connections read :data:`READ_SIZE` bytes at a time."""

    async def _wrap_create_connection(self, *args: Any, **kwargs: Any) -> Any:
        created = await super()._wrap_create_connection(*args, **kwargs)
        with contextlib.suppress(Exception):  # a tuning, never a failure
            tune_reads(created[0])
        return created


TUNE_READS = _hookable()
"""Whether :func:`make_connector` can hook connection creation (aiohttp's private
``TCPConnector._wrap_create_connection``); without it connections keep asyncio's size."""


def make_connector(limit: int, ssl_context: ssl.SSLContext | None) -> aiohttp.TCPConnector:
    """The owned session's connector: ``limit`` connections, DNS cached for 5 minutes,
    TLS verified with ``ssl_context`` (the system's trust store when ``None``), and
    reads of :data:`READ_SIZE` when :data:`TUNE_READS`."""
    cls = _TunedConnector if TUNE_READS else aiohttp.TCPConnector
    return cls(limit=limit, ttl_dns_cache=300, ssl=ssl_context if ssl_context is not None else True)


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(asyncio.TimeoutError())


class PoolSlots:
    """At most ``size`` holders at once; the others wait in arrival order.

    Like ``asyncio.Semaphore`` with a timeout on :meth:`acquire` that can neither lose
    a slot nor hand one to a waiter that already gave up (the race ``wait_for`` has on
    Python 3.10 and 3.11).

    Args:
        size: How many may hold a slot at once, >= 1.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def in_use(self) -> int:
        """Slots held right now."""
        return self.size - self._free

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot right now."""
        return sum(1 for future in self._waiters if not future.done())

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits for one, without waiting.

        Returns:
            Whether a slot is now held (the caller must :meth:`release` it).
        """
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def acquire(self, timeout: float | None) -> None:
        """Take a slot, waiting at most ``timeout`` seconds (``None``: as long as it takes).

        Raises:
            asyncio.TimeoutError: No slot came free within ``timeout``; none is held.
        """
        waiters = self._waiters
        while waiters and waiters[0].done():  # gave up waiting: drop them
            waiters.popleft()
        if self._free > 0 and not waiters:
            self._free -= 1
            return
        if timeout is not None and timeout <= 0:
            raise asyncio.TimeoutError
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiters.append(future)
        timer = None if timeout is None else loop.call_later(timeout, _expire, future)
        try:
            await future
        except BaseException:
            # Handed a slot, then cancelled before running on: give it to the next one.
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def release(self) -> None:
        """Give a slot back: to the first caller still waiting, else to the pool."""
        waiters = self._waiters
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self._free += 1


def pool_limit(max_connections: int, session: aiohttp.ClientSession | None) -> int:
    """``max_connections``, lowered to a caller's session's connector limits (0: none)."""
    limit = max_connections
    connector = None if session is None else session.connector
    for name in ("limit", "limit_per_host"):
        value = getattr(connector, name, 0)
        if isinstance(value, int) and value > 0:
            limit = min(limit, value)
    return limit


def _close_transport_without_loop(transport: Any) -> None:
    """Close a transport whose event loop is already closed (``transport.close()`` would
    need that loop). asyncio keeps no public way to do it, so the private parts are
    looked up and anything missing falls back to ``abort()``."""
    inner = transport
    ssl_protocol = getattr(transport, "_ssl_protocol", None)
    if ssl_protocol is not None:  # TLS: the socket belongs to the transport underneath
        with contextlib.suppress(AttributeError):
            transport._closed = True  # what its __del__ checks before warning
        inner = getattr(ssl_protocol, "_transport", None) or transport
    sock = getattr(inner, "_sock", None)
    connection_lost = getattr(inner, "_call_connection_lost", None)
    if sock is None or not callable(connection_lost):
        with contextlib.suppress(Exception):
            inner.abort()
        return
    with contextlib.suppress(AttributeError):
        inner._closing = True
    # It closes the socket (in a finally) and tells the protocol, which may fail for
    # want of the closed loop: the socket is what matters.
    with contextlib.suppress(Exception):
        connection_lost(None)
    if getattr(inner, "_sock", None) is not None:
        sock.close()
        inner._sock = None


def close_connector_now(session: aiohttp.ClientSession, loop: asyncio.AbstractEventLoop) -> bool:
    """Close an owned session's connector from outside ``loop``, without awaiting.

    With ``loop`` closed, every pooled and in-use socket is closed directly (aiohttp's
    own close skips them then, leaving the sockets open). With ``loop`` running in
    another thread, the close is handed to that loop. Otherwise the connector closes
    at once. Relies on the connector's private synchronous ``_close()``; without it
    nothing is done (aiohttp's own ``__del__`` then deals with the session).

    Returns:
        Whether the connector is closed (or its close is scheduled on ``loop``).
    """
    connector = session.connector
    if connector is None or connector.closed:
        return True
    close = getattr(connector, "_close", None)
    if not callable(close):
        return False
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    if not loop.is_closed() and loop.is_running() and loop is not current:
        try:
            loop.call_soon_threadsafe(close_connector_now, session, loop)
        except RuntimeError:  # closed in the meantime: fall through to the closed path
            pass
        else:
            return True
    if loop.is_closed():
        protocols: list[Any] = [
            protocol
            for entries in getattr(connector, "_conns", {}).values()
            for protocol, *_ in entries
        ]
        protocols.extend(getattr(connector, "_acquired", ()))
        transports = [getattr(p, "transport", None) for p in protocols]
        transports.extend(getattr(connector, "_cleanup_closed_transports", ()))
        for transport in transports:
            if transport is not None:
                _close_transport_without_loop(transport)
    with contextlib.suppress(Exception):
        close()  # marks the connector (so the session) closed; closes what it still can
    return True
