"""Serving an aiohttp app on a loopback port: the lifecycle the fakes share."""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web

__all__ = ["LoopbackServer"]

S = TypeVar("S", bound="LoopbackServer")


class LoopbackServer:
    """An aiohttp app served on ``host:port`` (``0``: a free port), used as
    ``async with``; subclasses say what to serve in :meth:`_make_runner`.

    Args:
        host: The address to bind.
        port: The port to bind; ``0`` picks a free one.
    """

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    def _make_runner(self) -> web.AppRunner:
        raise NotImplementedError

    async def start(self) -> None:
        """Bind the port and start serving.

        Raises:
            RuntimeError: It is already running.
            OSError: The address could not be bound.
        """
        if self._runner is not None:
            raise RuntimeError(f"the {self._what} is already running")
        runner = self._make_runner()
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._requested_port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving and close every connection; a no-op when not running."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self: S) -> S:
        """Start serving and return this server."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        """Close the server."""
        await self.close()

    _what = "server"
    """How error messages name it."""
