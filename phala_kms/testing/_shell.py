"""Running the fake from a shell: ``phala-kms fake-server`` (:func:`run_fake_server`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from .._constants import ENV_API_KEY, ENV_BASE_URL
from ._routes import API_PREFIX
from ._server import FakeKMSServer

__all__ = ["STOP_SIGNALS", "run_fake_server"]

STOP_SIGNALS: tuple[str, ...] = ("SIGINT", "SIGTERM")
"""The signals that stop :func:`run_fake_server` cleanly (those this platform has)."""


@contextlib.contextmanager
def _stop_on_signals(on_signal: Callable[[str], None]) -> Iterator[None]:
    """Call ``on_signal(name)`` on SIGINT and SIGTERM inside the block.

    The handlers are installed explicitly, so a SIGINT that the parent ignored (a
    script's background job, ``nohup``) stops the server too, and restored on the way
    out. Only the main thread can handle signals: elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous: dict[signal.Signals, Any] = {}
    for name in STOP_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        previous[signum] = signal.getsignal(signum)

        def handler(_signum: int, _frame: object, name: str = name) -> None:
            loop.call_soon_threadsafe(on_signal, name)

        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def run_fake_server(
    host: str = "127.0.0.1",
    port: int = 8787,
    *,
    out: TextIO | None = None,
    stop_event: threading.Event | None = None,
    **server_kwargs: Any,
) -> str | None:
    """Run a fake server in the foreground until stopped (``phala-kms fake-server``).

    Prints the base URL and API key (as ``PHALA_CLOUD_API_PREFIX`` /
    ``PHALA_CLOUD_API_KEY`` lines a shell can use) once it listens. SIGINT (Ctrl-C)
    and SIGTERM stop it cleanly, the server closed, when it runs in the main thread:
    both handlers are installed explicitly (so a SIGINT the parent process ignored
    still works) and restored afterwards.

    Args:
        host: the address to bind (loopback by default; anything else exposes it).
        port: the port to bind; 0 picks a free one (printed).
        out: where to print; ``sys.stdout`` by default.
        stop_event: also stop when this event is set (for embedding and tests).
        **server_kwargs: passed to :class:`FakeKMSServer` (``api_key``,
            ``phala_node_count``, ...).

    Returns:
        The name of the signal that stopped it (``"SIGINT"``, ``"SIGTERM"``), or
        ``None`` when ``stop_event`` (or a ``KeyboardInterrupt``) did.

    Raises:
        OSError: the address could not be bound.
    """
    stream = out if out is not None else sys.stdout
    received: list[str] = []

    async def main() -> None:
        stop = asyncio.Event()

        def on_signal(name: str) -> None:
            received.append(name)
            stop.set()

        # The handlers stay in place until the server is closed: a second signal
        # during shutdown does not interrupt the close.
        with _stop_on_signals(on_signal):
            async with FakeKMSServer(host=host, port=port, **server_kwargs) as server:
                # A wildcard bind is reached locally through loopback (the SDK refuses
                # plain http:// to anything else).
                local = server.base_url
                if host in ("0.0.0.0", "::", ""):  # noqa: S104 - comparing, not binding
                    local = f"http://127.0.0.1:{server.port}{API_PREFIX}"
                print(f"Fake Phala Cloud KMS API listening on {server.base_url}", file=stream)
                print("# for a shell: eval these two lines (or copy them)", file=stream)
                print(f"export {ENV_BASE_URL}={local}", file=stream)
                print(f"export {ENV_API_KEY}={server.api_key}", file=stream)
                print("Press Ctrl-C (or send SIGTERM) to stop.", file=stream, flush=True)
                if stop_event is None:
                    await stop.wait()
                else:
                    # A threading.Event cannot be awaited: poll it.
                    while not stop.is_set() and not stop_event.is_set():  # noqa: ASYNC110
                        await asyncio.sleep(0.1)

    # KeyboardInterrupt: before the handlers were installed, or not in the main thread
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    how = f" ({received[0]})" if received else ""
    print(f"Stopped{how}: the server is closed.", file=stream, flush=True)
    return received[0] if received else None
