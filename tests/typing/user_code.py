"""Typical user code, type-checked against the public API by ``mypy --strict tests/typing``.

Not a test module (pytest does not collect it) and never run: every annotated assignment
states the type a user relies on, so a change to the public signatures that breaks such
code fails the type check.
"""

# Annotated assignments are the point here, not their later use:
# ruff: noqa: F841

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from phala_kms import (
    DEFAULT_API_VERSION,
    APIStatusError,
    AppEnvEncryptPubKey,
    AsyncKMSClient,
    ConnectRefusedError,
    EnvVar,
    InvalidArgumentError,
    KMSClient,
    KMSContract,
    KMSContractNodes,
    KMSInfo,
    KMSOnChainDetail,
    NextAppIDs,
    NotFoundError,
    Paginated,
    PhalaKMSError,
    RateLimitError,
    RetryPolicy,
    SignatureVerificationError,
    TransportError,
    TrustedSigner,
    UnprocessableEntityError,
    ValidationErrorItem,
    VerifiedAppEnvEncryptPubKey,
    encrypt_env_vars,
    verify_env_encrypt_public_key,
)
from phala_kms.crypto import verify_app_env_encrypt_pubkey
from phala_kms.testing import FakeKMSServer, StatusFault, decrypt_env_vars, instant_retries

APP_ID = "0123456789abcdef0123456789abcdef01234567"
PINNED_SIGNER = "0x0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"


async def async_user(api_key: str, base_url: str) -> None:
    policy: RetryPolicy = RetryPolicy(max_retries=5, initial_backoff=0.2, deadline=30.0)
    async with AsyncKMSClient(
        api_key, base_url, retry_policy=policy, timeout=10.0, max_response_bytes=1 << 20
    ) as kms:
        version: str = kms.config.api_version
        closed: bool = kms.closed

        # paging
        page: Paginated[KMSInfo] = await kms.get_kms_list(page=1, page_size=50, is_onchain=True)
        more: bool = page.has_next
        first: KMSInfo | None = page.items[0] if page.items else None
        nodes: AsyncIterator[KMSInfo] = kms.iter_kms_list(page_size=100)
        slugs: list[str | None] = [node.slug async for node in nodes]
        contracts: list[KMSContract] = [c async for c in kms.iter_kms_contracts()]
        contract_page: Paginated[KMSContract] = await kms.list_kms_contracts(page=2)

        # single reads
        info: KMSInfo = await kms.get_kms_info("phala", api_version="2026-05-22")
        contract: KMSContract = await kms.get_kms_contract("base")
        serving: KMSContractNodes = await kms.list_kms_contract_nodes("base")
        detail: KMSOnChainDetail = await kms.get_kms_on_chain_detail("base")
        predicted: NextAppIDs = await kms.next_app_ids(counts=3)
        nonce: int = predicted.app_ids[0].nonce

        # verified keys
        signer: TrustedSigner = await kms.get_trusted_signer("phala")
        sources: tuple[str, ...] = signer.sources
        key: VerifiedAppEnvEncryptPubKey = await kms.get_verified_app_env_encrypt_pubkey(
            "phala", APP_ID, trusted_signer=signer, max_age=60.0
        )
        pinned: VerifiedAppEnvEncryptPubKey = await kms.get_verified_app_env_encrypt_pubkey(
            "phala", APP_ID, trusted_signer=PINNED_SIGNER, require_timestamped=True
        )
        stamp: int | None = pinned.timestamp
        raw: bytes = key.public_key_bytes
        unverified: AppEnvEncryptPubKey = await kms.get_app_env_encrypt_pubkey("phala", APP_ID)
        proof: VerifiedAppEnvEncryptPubKey = verify_app_env_encrypt_pubkey(
            unverified, APP_ID, trusted_signer=signer
        )
        anchored: TrustedSigner = await kms.get_trusted_signer(
            "base", sources=("api", "chain", "node"), rpc_url="https://rpc.example"
        )

        # encryption
        sealed: str = await kms.encrypt_env_vars_for_app(
            "phala", APP_ID, {"DATABASE_URL": "postgres://..."}, trusted_signer=signer
        )
        offline: str = encrypt_env_vars([EnvVar("A", "1"), ("B", "2")], raw)

        # fan-out
        progress: list[tuple[int, int]] = []
        keys: list[AppEnvEncryptPubKey] = await kms.get_app_env_encrypt_pubkeys(
            "phala", [APP_ID], concurrency=8, on_progress=lambda d, t: progress.append((d, t))
        )
        checked: list[VerifiedAppEnvEncryptPubKey] = await kms.get_verified_app_env_encrypt_pubkeys(
            "phala", [APP_ID], trusted_signer=signer
        )
        mixed: list[
            VerifiedAppEnvEncryptPubKey | PhalaKMSError
        ] = await kms.get_verified_app_env_encrypt_pubkeys(
            "phala", [APP_ID, "bad"], trusted_signer=signer, return_exceptions=True
        )
        for result in mixed:
            if isinstance(result, PhalaKMSError):
                failure: str = result.message
            else:
                public: str = result.public_key

        # error handling
        try:
            await kms.get_kms_info("no-such-kms")
        except NotFoundError as err:
            status: int = err.status
            code: str | None = err.error_code
            request_id: str | None = err.request_id
        except RateLimitError as err:
            wait: float | None = err.retry_after
        except UnprocessableEntityError as err:
            items: tuple[ValidationErrorItem, ...] = err.validation_errors
            where: tuple[str | int, ...] = items[0].loc
        except APIStatusError as err:
            attempts: int = err.attempts
        except ConnectRefusedError as err:
            port: int | None = err.port
        except TransportError as err:
            host: str | None = err.host
        except SignatureVerificationError as err:
            reason: str = err.reason
        except InvalidArgumentError as err:
            argument: str | None = err.argument


def blocking_user(api_key: str | None = None) -> None:
    with KMSClient(api_key, api_version=DEFAULT_API_VERSION) as kms:
        page: Paginated[KMSInfo] = kms.get_kms_list()
        every: Iterator[KMSInfo] = kms.iter_kms_list()
        ids: list[str] = [node.id for node in every]
        contracts: Iterator[KMSContract] = kms.iter_kms_contracts(page_size=10)
        signer: TrustedSigner = kms.get_trusted_signer("base")
        key: VerifiedAppEnvEncryptPubKey = kms.get_verified_app_env_encrypt_pubkey(
            "base", APP_ID, trusted_signer=signer
        )
        keys: list[VerifiedAppEnvEncryptPubKey] = kms.get_verified_app_env_encrypt_pubkeys(
            "base", [APP_ID], trusted_signer=signer.k256_pubkey
        )
        mixed: list[AppEnvEncryptPubKey | PhalaKMSError] = kms.get_app_env_encrypt_pubkeys(
            "base", [APP_ID], return_exceptions=True
        )
        sealed: str = kms.encrypt_env_vars_for_app(
            "base", APP_ID, [("A", "1")], trusted_signer=signer
        )
        verify_env_encrypt_public_key(
            key.public_key, key.signature, APP_ID, trusted_signer=signer.k256_pubkey
        )
        try:
            kms.get_kms_info("phala")
        except PhalaKMSError as err:
            text: str = str(err)


def testing_user() -> None:
    with FakeKMSServer.in_thread(phala_node_count=3) as server:
        server.inject("kms_info", StatusFault(503, retry_after=1), times=1)
        with KMSClient(server.api_key, server.base_url) as kms, instant_retries(kms) as waits:
            info: KMSInfo = kms.get_kms_info("phala")
        recorded: list[float] = waits
        sealed: str = encrypt_env_vars({"A": "1"}, server.app_public_key("phala", APP_ID))
        opened: list[EnvVar] = decrypt_env_vars(sealed, server.app_private_key("phala", APP_ID))


def main() -> None:
    asyncio.run(async_user("phak_...", "https://cloud-api.phala.com/api/v1"))
    blocking_user()
    testing_user()
