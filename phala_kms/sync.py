"""``KMSClient``: the blocking facade that runs ``AsyncKMSClient`` on its own event-loop thread.

Design: each ``KMSClient`` starts, on first use, one daemon thread running an event
loop (:mod:`phala_kms._loop_thread`). Every blocking method runs the very same
``AsyncKMSClient`` coroutine as a task on that loop and waits on a plain lock that the
task's done-callback releases, the cheapest handoff between two threads. So it works
from plain scripts, from many threads at once, and from inside a running event loop
(Jupyter), and the caller's thread never gets an event loop created, set or closed
on it.

* Ctrl-C (or any exception) while waiting cancels the request in flight.
* A forgotten :meth:`KMSClient.close` never hangs interpreter exit: the thread is a
  daemon and a ``weakref.finalize`` closes the pool at exit or garbage collection.
* After ``os.fork()`` the child starts a fresh thread and pool on its first call;
  the parent's are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, cast

from ._constants import (
    DEFAULT_CONCURRENCY,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
)
from ._loop_thread import LoopThread
from ._pagination import check_max_pages, walk_pages
from ._secrets import redact_key
from .client import AsyncKMSClient
from .errors import ClientStateError, PhalaKMSError
from .models import AppEnvEncryptPubKey, KMSContract, KMSInfo, VerifiedAppEnvEncryptPubKey

if TYPE_CHECKING:
    import aiohttp

    from ._config import ClientConfig, RetryPolicy
    from .crypto import SignerLike

__all__ = ["KMSClient"]

P = ParamSpec("P")
R = TypeVar("R")

BLOCKING_REWRITES: tuple[tuple[str, str], ...] = (
    (
        "ClientStateError: The client is closed or used from another event loop.",
        "ClientStateError: The client is closed, or the call came from its own loop thread.",
    ),
    (
        "finishes, successfully or not, on the event loop;",
        "finishes, successfully or not, on the client's loop thread (do not call the"
        " client from the callback);",
    ),
    ("Yield every", "Iterate over every"),
    ("Yields:", "Returns:\n            An iterator of"),
    ("(``contextlib.aclosing``)", "(``contextlib.closing``, or its ``close()``)"),
)
"""How an ``AsyncKMSClient`` docstring is rewritten for its blocking twin: every
phrase that only holds for async callers (``await``, the event loop) is replaced."""


def blocking_doc(doc: str | None) -> str | None:
    """The docstring of an ``AsyncKMSClient`` method, rewritten for blocking callers."""
    if doc is None:
        return None
    for async_text, blocking_text in BLOCKING_REWRITES:
        doc = doc.replace(async_text, blocking_text)
    return doc


def _blocking(
    method: Callable[Concatenate[AsyncKMSClient, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[KMSClient, P], R]:
    """Make the blocking twin of an ``AsyncKMSClient`` coroutine method (same name and
    signature; the docstring rewritten by :func:`blocking_doc`)."""

    @functools.wraps(method)
    def call(self: KMSClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        loop, client = self._loop.get()
        try:
            coro = method(client, *args, **kwargs)  # binds the arguments, runs nothing
        except TypeError as exc:  # wrong arguments: name the class the caller used
            raise TypeError(str(exc).replace("AsyncKMSClient.", "KMSClient.", 1)) from None
        # The coroutine holds the arguments now. Drop them from this frame: an error
        # raised through it would otherwise show them (env-var values included) to
        # every traceback that captures locals.
        del args, kwargs
        return self._loop.run(loop, coro)

    call.__doc__ = blocking_doc(method.__doc__)
    return call


class KMSClient:
    """A blocking client for the Phala Cloud KMS API.

    It has every method of :class:`~phala_kms.AsyncKMSClient`, with the same
    arguments, results and errors, run on a private event-loop thread. Use it as a
    context manager or call :meth:`close`. It is safe to share between threads.

    Args:
        api_key: As for ``AsyncKMSClient`` (``PHALA_CLOUD_API_KEY`` by default).
        base_url: As for ``AsyncKMSClient`` (``PHALA_CLOUD_API_PREFIX`` by default).
        api_version: As for ``AsyncKMSClient``.
        timeout: Per-attempt limit in seconds (default 60).
        max_retries: Retries for safe failures (default 5; 0 disables).
        connect_timeout: TCP connect limit in seconds (default 10).
        retry_policy: Full control of retry timing, instead of ``max_retries``.
        max_connections: The connection pool size (default 100).
        ssl_context: An ``ssl.SSLContext`` to trust a private CA (default: the system's).
        trust_env: Honour ``HTTP(S)_PROXY``/``NO_PROXY`` and ``~/.netrc`` (default off).
        max_response_bytes: The largest success body read, in bytes (default 16 MiB;
            an error body is read up to 64 KiB).
        trace_configs: ``aiohttp.TraceConfig`` objects for the client's session, e.g.
            OpenTelemetry's ``create_trace_config()``; their callbacks run on the
            client's loop thread, once per attempt.
        pool_timeout: The longest wait for a free connection, in seconds, before a
            ``PoolTimeoutError`` (default ``None``: wait as long as it takes). The
            ``timeout`` of an attempt starts only once it holds a connection.
        max_requests_per_second: A fixed cap on the client's send rate, for a known
            quota (default ``None``: only the server's throttling paces the client).

    Raises:
        ConfigurationError: A setting is unusable (raised here, at construction):
            as for ``AsyncKMSClient``, e.g. an item of ``trace_configs`` that is not
            an ``aiohttp.TraceConfig``.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        api_version: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retry_policy: RetryPolicy | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        ssl_context: ssl.SSLContext | None = None,
        trust_env: bool = False,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        trace_configs: Sequence[aiohttp.TraceConfig] | None = None,
        pool_timeout: float | None = None,
        max_requests_per_second: float | None = None,
    ) -> None:
        api_key = redact_key(api_key)  # first: no frame local may hold the key in plain
        make_client = functools.partial(
            AsyncKMSClient,
            api_key,
            base_url,
            api_version=api_version,
            timeout=timeout,
            max_retries=max_retries,
            connect_timeout=connect_timeout,
            retry_policy=retry_policy,
            max_connections=max_connections,
            ssl_context=ssl_context,
            trust_env=trust_env,
            max_response_bytes=max_response_bytes,
            trace_configs=trace_configs,
            pool_timeout=pool_timeout,
            max_requests_per_second=max_requests_per_second,
        )
        self._loop = LoopThread(make_client)
        self._config = self._loop.config
        self._finalizer = weakref.finalize(self, self._loop.shutdown)

    @property
    def config(self) -> ClientConfig:
        """The resolved, frozen settings (the API key is hidden from its repr)."""
        return self._config

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called (``False`` for a client whose
        construction failed)."""
        loop = getattr(self, "_loop", None)
        return loop is not None and loop.closed

    def __repr__(self) -> str:
        config = getattr(self, "_config", None)
        if config is None:
            # construction failed (or is under way): a traceback that captures locals
            # shows this object, so its repr must work
            return "<KMSClient (not initialised)>"
        state = "closed" if self.closed else "open"
        return (
            f"<KMSClient base_url={config.base_url!r} api_version={config.api_version!r} {state}>"
        )

    def __enter__(self) -> KMSClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool and stop the loop thread. Idempotent.

        Using the client afterwards raises :class:`~phala_kms.errors.ClientStateError`.

        Raises:
            ClientStateError: Called from the client's own loop thread.
        """
        self._loop.shutdown()
        self._finalizer.detach()

    get_kms_list = _blocking(AsyncKMSClient.get_kms_list)
    get_kms_info = _blocking(AsyncKMSClient.get_kms_info)
    get_app_env_encrypt_pubkey = _blocking(AsyncKMSClient.get_app_env_encrypt_pubkey)
    get_kms_on_chain_detail = _blocking(AsyncKMSClient.get_kms_on_chain_detail)
    next_app_ids = _blocking(AsyncKMSClient.next_app_ids)
    list_kms_contracts = _blocking(AsyncKMSClient.list_kms_contracts)
    get_kms_contract = _blocking(AsyncKMSClient.get_kms_contract)
    list_kms_contract_nodes = _blocking(AsyncKMSClient.list_kms_contract_nodes)
    get_verified_app_env_encrypt_pubkey = _blocking(
        AsyncKMSClient.get_verified_app_env_encrypt_pubkey
    )
    get_trusted_signer = _blocking(AsyncKMSClient.get_trusted_signer)
    encrypt_env_vars_for_app = _blocking(AsyncKMSClient.encrypt_env_vars_for_app)
    get_app_env_encrypt_pubkeys = _blocking(AsyncKMSClient.get_app_env_encrypt_pubkeys)
    get_verified_app_env_encrypt_pubkeys = _blocking(
        AsyncKMSClient.get_verified_app_env_encrypt_pubkeys
    )
    get_verified_app_env_encrypt_pubkey_from_node = _blocking(
        AsyncKMSClient.get_verified_app_env_encrypt_pubkey_from_node
    )
    get_kms_node_meta = _blocking(AsyncKMSClient.get_kms_node_meta)
    check_app_registered = _blocking(AsyncKMSClient.check_app_registered)
    get_cvm = _blocking(AsyncKMSClient.get_cvm)
    encrypt_env_vars_for_cvm = _blocking(AsyncKMSClient.encrypt_env_vars_for_cvm)

    def iter_kms_list(
        self,
        page_size: int = 100,
        is_onchain: bool | None = None,
        *,
        api_version: str | None = None,
        max_pages: int | None = None,
    ) -> Iterator[KMSInfo]:
        check_max_pages(max_pages)
        return walk_pages(
            lambda page: self.get_kms_list(page, page_size, is_onchain, api_version=api_version),
            max_pages,
        )

    def iter_kms_contracts(
        self,
        page_size: int = 100,
        is_onchain: bool | None = None,
        *,
        api_version: str | None = None,
        max_pages: int | None = None,
    ) -> Iterator[KMSContract]:
        check_max_pages(max_pages)
        return walk_pages(
            lambda page: self.list_kms_contracts(
                page, page_size, is_onchain, api_version=api_version
            ),
            max_pages,
        )

    def iter_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        api_version: str | None = None,
    ) -> Iterator[tuple[str, AppEnvEncryptPubKey | PhalaKMSError]]:
        return self._iterate(
            lambda client: client.iter_app_env_encrypt_pubkeys(
                kms, app_ids, concurrency=concurrency, api_version=api_version
            )
        )

    def iter_verified_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        trusted_signer: SignerLike,
        max_age: float = DEFAULT_MAX_AGE,
        require_timestamped: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        api_version: str | None = None,
    ) -> Iterator[tuple[str, VerifiedAppEnvEncryptPubKey | PhalaKMSError]]:
        return self._iterate(
            lambda client: client.iter_verified_app_env_encrypt_pubkeys(
                kms,
                app_ids,
                trusted_signer=trusted_signer,
                max_age=max_age,
                require_timestamped=require_timestamped,
                concurrency=concurrency,
                api_version=api_version,
            )
        )

    def _iterate(self, open_stream: Callable[[AsyncKMSClient], AsyncIterator[R]]) -> Iterator[R]:
        """Drive an async iterator of the client on the loop thread, one item per ``next``.

        Closing the returned iterator (or dropping it) closes the async one on the
        loop thread, which cancels its work in flight.
        """
        loop, client = self._loop.get()
        stream = open_stream(client)

        async def step() -> tuple[bool, R | None]:
            try:
                return True, await stream.__anext__()
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self._loop.run(loop, step())
                if not more:
                    return
                yield cast(R, item)
        finally:
            self._close_stream(loop, stream)

    def _close_stream(self, loop: asyncio.AbstractEventLoop, stream: AsyncIterator[Any]) -> None:
        aclose = getattr(stream, "aclose", None)
        if aclose is None or self._loop.closed or loop.is_closed():
            return  # the loop's shutdown closes what is left of it

        async def close() -> None:
            await aclose()

        if threading.get_ident() == self._loop.thread_ident:  # dropped on the loop thread
            loop.create_task(close())
            return
        with contextlib.suppress(ClientStateError):
            self._loop.run(loop, close())

    iter_kms_list.__doc__ = blocking_doc(AsyncKMSClient.iter_kms_list.__doc__)
    iter_kms_contracts.__doc__ = blocking_doc(AsyncKMSClient.iter_kms_contracts.__doc__)
    iter_app_env_encrypt_pubkeys.__doc__ = blocking_doc(
        AsyncKMSClient.iter_app_env_encrypt_pubkeys.__doc__
    )
    iter_verified_app_env_encrypt_pubkeys.__doc__ = blocking_doc(
        AsyncKMSClient.iter_verified_app_env_encrypt_pubkeys.__doc__
    )
