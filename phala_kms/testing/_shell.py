"""Running the fake from a shell: ``phala-kms fake-server`` (:func:`run_fake_server`)."""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import Any, TextIO

from .._constants import ENV_API_KEY, ENV_BASE_URL
from ._routes import API_PREFIX
from ._server import FakeKMSServer

__all__ = ["run_fake_server"]


def run_fake_server(
    host: str = "127.0.0.1",
    port: int = 8787,
    *,
    out: TextIO | None = None,
    stop_event: threading.Event | None = None,
    **server_kwargs: Any,
) -> None:
    """Run a fake server in the foreground until Ctrl-C (``phala-kms fake-server``).

    Prints the base URL and API key (as ``PHALA_CLOUD_API_PREFIX`` /
    ``PHALA_CLOUD_API_KEY`` lines a shell can use) once it listens.

    Args:
        host: the address to bind (loopback by default; anything else exposes it).
        port: the port to bind; 0 picks a free one (printed).
        out: where to print; ``sys.stdout`` by default.
        stop_event: also stop when this event is set (for embedding and tests).
        **server_kwargs: passed to :class:`FakeKMSServer` (``api_key``,
            ``phala_node_count``, ...).

    Raises:
        OSError: the address could not be bound.
    """

    async def main() -> None:
        stream = out if out is not None else sys.stdout
        async with FakeKMSServer(host=host, port=port, **server_kwargs) as server:
            # A wildcard bind is reached locally through loopback (the SDK refuses plain
            # http:// to anything else).
            local = server.base_url
            if host in ("0.0.0.0", "::", ""):  # noqa: S104 - comparing, not binding
                local = f"http://127.0.0.1:{server.port}{API_PREFIX}"
            print(f"Fake Phala Cloud KMS API listening on {server.base_url}", file=stream)
            print("# for a shell: eval these two lines (or copy them)", file=stream)
            print(f"export {ENV_BASE_URL}={local}", file=stream)
            print(f"export {ENV_API_KEY}={server.api_key}", file=stream)
            print("Press Ctrl-C to stop.", file=stream, flush=True)
            if stop_event is None:
                await asyncio.Event().wait()  # until Ctrl-C cancels it
            else:
                # A threading.Event cannot be awaited: poll it.
                while not stop_event.is_set():  # noqa: ASYNC110
                    await asyncio.sleep(0.1)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("Stopped.", file=out if out is not None else sys.stdout, flush=True)
