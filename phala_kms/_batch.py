"""Many apps' env-encryption keys at once: the batch and streaming fan-outs.

:class:`KeyBatchEndpoints` adds to the client the coroutines that fetch (and verify)
the keys of many apps over the bounded, de-duplicating pool of
:mod:`phala_kms._fanout`, and the async iterators that yield them as they finish.
Each app id is checked once, up front; the workers fetch the normalised id without
checking it again. :class:`~phala_kms.AsyncKMSClient` inherits them.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

from ._base_client import BaseKMSClient
from ._constants import DEFAULT_CONCURRENCY, DEFAULT_MAX_AGE
from ._fanout import ProgressCallback, fan_out, stream_fan_out
from ._params import app_id_hex, int_param, kms_segment
from .errors import PhalaKMSError
from .models import AppEnvEncryptPubKey, VerifiedAppEnvEncryptPubKey

if TYPE_CHECKING:
    from ._signatures import SignerLike

__all__ = ["KeyBatchEndpoints"]

_KeyT = TypeVar("_KeyT")


class KeyBatchEndpoints(BaseKMSClient):
    """Many apps' keys at once; see :class:`~phala_kms.AsyncKMSClient`."""

    # ------------------------------------------------------------------ fan-out

    @overload
    async def get_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        concurrency: int = ...,
        return_exceptions: Literal[False] = ...,
        on_progress: ProgressCallback | None = ...,
        api_version: str | None = ...,
    ) -> list[AppEnvEncryptPubKey]: ...

    @overload
    async def get_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        concurrency: int = ...,
        return_exceptions: Literal[True],
        on_progress: ProgressCallback | None = ...,
        api_version: str | None = ...,
    ) -> list[AppEnvEncryptPubKey | PhalaKMSError]: ...

    async def get_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        return_exceptions: bool = False,
        on_progress: ProgressCallback | None = None,
        api_version: str | None = None,
    ) -> list[AppEnvEncryptPubKey] | list[AppEnvEncryptPubKey | PhalaKMSError]:
        """Fetch the env-encryption public keys of many apps concurrently, **unverified**.

        One ``GET /kms/{kms}/pubkey/{app_id}`` per distinct app id (ids equal after
        normalising ``0x`` and case are fetched once), at most ``concurrency`` in
        flight and never more than the connection pool allows. A fixed set of
        workers pulls ids one by one, so memory stays flat however many ids you
        pass. Each request retries on its own per the client's retry policy. To
        encrypt to these keys, use :meth:`get_verified_app_env_encrypt_pubkeys`.

        Args:
            kms: A KMS id, slug, or type (``"phala"``, ``"ethereum"``, ``"base"``).
            app_ids: The app ids (40 hex characters each, ``0x`` optional).
            concurrency: The most requests in flight at once, >= 1.
            return_exceptions: If ``False`` (default), the first failure cancels
                every request in flight and is raised. If ``True``, each failed id's
                slot holds its typed :class:`~phala_kms.errors.PhalaKMSError`
                (including an ``InvalidArgumentError`` for a malformed id) and the
                batch carries on.
            on_progress: Called as ``on_progress(done, total)`` after each distinct
                well-formed id finishes, successfully or not, on the event loop;
                ``total`` counts those ids (malformed ids are never sent, so they are
                not counted).
            api_version: Override the client's ``X-Phala-Version`` for these calls.

        Returns:
            One entry per input id, in input order (duplicates share one result).
            Every error carries ``app_id`` (the id as fetched: 40 lowercase hex) and
            ``kms``.

        Raises:
            InvalidArgumentError: ``concurrency`` < 1, a malformed ``kms``, or (when
                ``return_exceptions`` is ``False``) a malformed app id; nothing is sent.
            PhalaKMSError: With ``return_exceptions=False``, the first failure of any
                request, as raised by :meth:`get_app_env_encrypt_pubkey`, with
                ``app_id`` and ``kms`` set; its message ends with the id and what became
                of the rest of the batch (how many other ids failed, how many requests
                in flight were cancelled, how many ids were not started).
            CallbackError: ``on_progress`` raised (its exception is chained); the batch
                was stopped.
        """
        return await self._fan_out(
            kms, app_ids, None, DEFAULT_MAX_AGE, concurrency, return_exceptions, on_progress,
            api_version,
        )  # fmt: skip

    @overload
    async def get_verified_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        trusted_signer: SignerLike,
        max_age: float = ...,
        require_timestamped: bool = ...,
        concurrency: int = ...,
        return_exceptions: Literal[False] = ...,
        on_progress: ProgressCallback | None = ...,
        api_version: str | None = ...,
    ) -> list[VerifiedAppEnvEncryptPubKey]: ...

    @overload
    async def get_verified_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        trusted_signer: SignerLike,
        max_age: float = ...,
        require_timestamped: bool = ...,
        concurrency: int = ...,
        return_exceptions: Literal[True],
        on_progress: ProgressCallback | None = ...,
        api_version: str | None = ...,
    ) -> list[VerifiedAppEnvEncryptPubKey | PhalaKMSError]: ...

    async def get_verified_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        trusted_signer: SignerLike,
        max_age: float = DEFAULT_MAX_AGE,
        require_timestamped: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        return_exceptions: bool = False,
        on_progress: ProgressCallback | None = None,
        api_version: str | None = None,
    ) -> list[VerifiedAppEnvEncryptPubKey] | list[VerifiedAppEnvEncryptPubKey | PhalaKMSError]:
        """Fetch many apps' env-encryption public keys concurrently and verify each one.

        :meth:`get_app_env_encrypt_pubkeys`, with every key verified as in
        :meth:`get_verified_app_env_encrypt_pubkey`; a key that fails is a
        :class:`~phala_kms.errors.SignatureVerificationError` (raised, or in its slot
        with ``return_exceptions=True``).

        Args:
            kms: A KMS id, slug, or type (``"phala"``, ``"ethereum"``, ``"base"``).
            app_ids: The app ids (40 hex characters each, ``0x`` optional).
            trusted_signer: As in :meth:`get_verified_app_env_encrypt_pubkey`. Required:
                ``None`` is refused, so a missing ``k256_pubkey`` cannot disable
                verification.
            max_age: The oldest timestamped signature accepted, in seconds.
            require_timestamped: Refuse keys offering only the legacy signature
                (``reason="legacy_signature"``).
            concurrency, return_exceptions, on_progress, api_version: As in
                :meth:`get_app_env_encrypt_pubkeys`.

        Returns:
            One :class:`~phala_kms.models.VerifiedAppEnvEncryptPubKey` (or error) per
            input id, in input order.

        Raises:
            SignatureVerificationError: ``trusted_signer`` is unusable, ``None``
                included (``reason="invalid_trusted_signer"``; nothing is sent), or,
                with ``return_exceptions=False``, a key did not verify.
            The errors of :meth:`get_app_env_encrypt_pubkeys`.
        """
        from ._signatures import check_trusted_signer

        check_trusted_signer(trusted_signer)  # None raises: fail closed, before any request
        return await self._fan_out(
            kms, app_ids, trusted_signer, max_age, concurrency, return_exceptions, on_progress,
            api_version, require_timestamped,
        )  # fmt: skip

    # ------------------------------------------------------------------ streaming fan-out

    async def iter_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        api_version: str | None = None,
    ) -> AsyncIterator[tuple[str, AppEnvEncryptPubKey | PhalaKMSError]]:
        """Fetch many apps' env-encryption public keys, **unverified**, yielding each as it
        finishes: for batches too large to hold, or to act on keys as they arrive.

        One ``GET /kms/{kms}/pubkey/{app_id}`` per id, at most ``concurrency`` in
        flight (never more than the connection pool allows). ``app_ids`` is read
        lazily, one id whenever a request finishes, and nothing is kept once
        yielded, so memory stays O(``concurrency``) for any number of ids (pass a
        generator for millions). Ids are **not** de-duplicated: an id given twice is
        fetched and yielded twice. Results come in completion order, not input
        order. Stopping early cancels the requests in flight and reads no more ids;
        close the iterator when you stop (``contextlib.aclosing``) to have that
        happen at once rather than when it is garbage-collected.

        Args:
            kms: A KMS id, slug, or type (``"phala"``, ``"ethereum"``, ``"base"``).
            app_ids: The app ids (40 hex characters each, ``0x`` optional), read once.
            concurrency: The most requests in flight at once, >= 1.
            api_version: Override the client's ``X-Phala-Version`` for these calls.

        Yields:
            ``(app_id, key_or_error)`` per input id, ``app_id`` exactly as given. A
            failure is yielded, not raised: its typed
            :class:`~phala_kms.errors.PhalaKMSError` (an ``InvalidArgumentError``,
            never sent, for a malformed id), with ``app_id`` and ``kms`` set.

        Raises:
            InvalidArgumentError: ``concurrency`` < 1 or a malformed ``kms``, at the
                first step, before any request.
        """
        fetch = self._pubkey_fetch(kms, None, DEFAULT_MAX_AGE, concurrency, api_version, False)
        async for item in self._stream(kms, app_ids, fetch, concurrency):
            yield item

    async def iter_verified_app_env_encrypt_pubkeys(
        self,
        kms: str,
        app_ids: Iterable[str],
        *,
        trusted_signer: SignerLike,
        max_age: float = DEFAULT_MAX_AGE,
        require_timestamped: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        api_version: str | None = None,
    ) -> AsyncIterator[tuple[str, VerifiedAppEnvEncryptPubKey | PhalaKMSError]]:
        """Fetch many apps' env-encryption public keys and verify each, yielding each as it
        finishes: :meth:`iter_app_env_encrypt_pubkeys` with the verification of
        :meth:`get_verified_app_env_encrypt_pubkeys`.

        A key that does not verify is yielded as its
        :class:`~phala_kms.errors.SignatureVerificationError` (with ``app_id`` and
        ``kms`` set). Memory, ordering, duplicates and stopping early are as in
        :meth:`iter_app_env_encrypt_pubkeys`.

        Args:
            kms: A KMS id, slug, or type (``"phala"``, ``"ethereum"``, ``"base"``).
            app_ids: The app ids (40 hex characters each, ``0x`` optional), read once.
            trusted_signer: As in :meth:`get_verified_app_env_encrypt_pubkey`; ``None``
                is refused.
            max_age: The oldest timestamped signature accepted, in seconds.
            require_timestamped: Refuse keys offering only the legacy signature.
            concurrency: The most requests in flight at once, >= 1.
            api_version: Override the client's ``X-Phala-Version`` for these calls.

        Yields:
            ``(app_id, verified_key_or_error)`` per input id, ``app_id`` as given.

        Raises:
            SignatureVerificationError: ``trusted_signer`` is unusable, at the first
                step, before any request (``reason="invalid_trusted_signer"``).
            InvalidArgumentError: ``concurrency`` < 1 or a malformed ``kms``, likewise.
        """
        from ._signatures import check_trusted_signer

        check_trusted_signer(trusted_signer)  # None raises: fail closed, before any request
        fetch = self._pubkey_fetch(
            kms, trusted_signer, max_age, concurrency, api_version, require_timestamped
        )
        async for item in self._stream(kms, app_ids, fetch, concurrency):
            yield item

    async def _stream(
        self,
        kms: str,
        app_ids: Iterable[str],
        fetch: Callable[[str], Awaitable[_KeyT]],
        concurrency: int,
    ) -> AsyncIterator[tuple[str, _KeyT | PhalaKMSError]]:
        """The one streaming walk behind both ``iter_*app_env_encrypt_pubkeys``."""
        stream = stream_fan_out(
            app_ids,
            fetch,
            normalise=app_id_hex,
            workers=min(concurrency, self._pool_limit),
            kms=kms,
        )
        try:
            async for app_id, result in stream:
                yield cast(str, app_id), result
        finally:
            await stream.aclose()

    async def _fan_out(
        self,
        kms: str,
        app_ids: Iterable[str],
        trusted_signer: SignerLike | None,
        max_age: float,
        concurrency: int,
        return_exceptions: bool,
        on_progress: ProgressCallback | None,
        api_version: str | None,
        require_timestamped: bool = False,
    ) -> list[Any]:
        fetch = self._pubkey_fetch(
            kms, trusted_signer, max_age, concurrency, api_version, require_timestamped
        )
        return await fan_out(
            app_ids,
            fetch,
            normalise=app_id_hex,
            workers=min(concurrency, self._pool_limit),
            return_exceptions=return_exceptions,
            on_progress=on_progress,
            argument="app_ids",
            kms=kms,
        )

    def _pubkey_fetch(
        self,
        kms: str,
        trusted_signer: SignerLike | None,
        max_age: float,
        concurrency: int,
        api_version: str | None,
        require_timestamped: bool,
    ) -> Callable[[str], Awaitable[Any]]:
        """Check the fan-out's arguments; the fetch (and verification) of one normalised id."""
        int_param(concurrency, "concurrency", 1)
        segment = kms_segment(kms, "kms")
        version = self._version(api_version)
        verify: Callable[[AppEnvEncryptPubKey, str], VerifiedAppEnvEncryptPubKey] | None = None
        if trusted_signer is not None:
            from ._signatures import verify_app_env_encrypt_pubkey

            verify = functools.partial(  # bound once per batch, applied to every key
                verify_app_env_encrypt_pubkey,
                trusted_signer=trusted_signer,
                max_age=max_age,
                require_timestamped=require_timestamped,
            )

        async def fetch(app: str) -> AppEnvEncryptPubKey | VerifiedAppEnvEncryptPubKey:
            # ids were checked once up front: no second validation per request
            key = await self._get(
                f"/kms/{segment}/pubkey/{app}", AppEnvEncryptPubKey, version=version
            )
            return key if verify is None else verify(key, app)

        return fetch
