"""phala-kms: the Python SDK for the Phala Cloud KMS API.

Encrypt env vars for an app, here against the built-in fake of the API (runs as is)::

    from phala_kms import KMSClient, encrypt_env_vars
    from phala_kms.testing import FakeKMSServer

    with FakeKMSServer.in_thread() as fake:  # for the real API: KMSClient("phak_...")
        with KMSClient(fake.api_key, fake.base_url) as kms:
            signer = kms.get_trusted_signer("phala")  # better: pin the KMS's k256_pubkey
            key = kms.get_verified_app_env_encrypt_pubkey(
                "phala", "ab" * 20, trusted_signer=signer
            )
            print(encrypt_env_vars({"API_TOKEN": "s3cret"}, key.public_key))


Async first (:class:`AsyncKMSClient`), with a blocking twin (:class:`KMSClient`),
typed frozen models, a tree of typed errors (:mod:`phala_kms.errors`), env-var
encryption and public-key signature verification (:mod:`phala_kms.crypto`), and a
fake of the API for tests (:mod:`phala_kms.testing`).

Importing ``phala_kms`` is cheap: the HTTP and crypto stacks load on first use of
the names that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes
from ._version import __version__
from .errors import (
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CallbackError,
    ClientStateError,
    ConfigurationError,
    ConflictError,
    ConnectError,
    ConnectionLostError,
    ConnectRefusedError,
    DNSError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PhalaKMSError,
    PoolTimeoutError,
    RateLimitError,
    RedirectError,
    ResponseValidationError,
    ServerError,
    SignatureVerificationError,
    TLSError,
    TransportError,
    UnprocessableEntityError,
    ValidationErrorItem,
)

if TYPE_CHECKING:
    from ._config import ClientConfig, RetryPolicy
    from ._constants import DEFAULT_API_VERSION, DEFAULT_BASE_URL
    from .client import AsyncKMSClient
    from .crypto import (
        EnvVar,
        encrypt_env_vars,
        recover_env_encrypt_pubkey_signer,
        verify_env_encrypt_public_key,
    )
    from .models import (
        AppEnvEncryptPubKey,
        CVMInfo,
        CVMKMSInfo,
        KMSContract,
        KMSContractNode,
        KMSContractNodes,
        KMSInfo,
        KMSNodeMeta,
        KMSOnChainDetail,
        NextAppID,
        NextAppIDs,
        OnChainDevice,
        OnChainKMSContract,
        OnChainOSImage,
        Paginated,
        TrustedSigner,
        VerifiedAppEnvEncryptPubKey,
    )
    from .sync import KMSClient

_LAZY = {
    "AsyncKMSClient": "client",
    "KMSClient": "sync",
    "ClientConfig": "_config",
    "RetryPolicy": "_config",
    "DEFAULT_API_VERSION": "_constants",
    "DEFAULT_BASE_URL": "_constants",
    "EnvVar": "crypto",
    "encrypt_env_vars": "crypto",
    "recover_env_encrypt_pubkey_signer": "crypto",
    "verify_env_encrypt_public_key": "crypto",
    "AppEnvEncryptPubKey": "models",
    "CVMInfo": "models",
    "CVMKMSInfo": "models",
    "KMSNodeMeta": "models",
    "VerifiedAppEnvEncryptPubKey": "models",
    "KMSContract": "models",
    "KMSContractNode": "models",
    "KMSContractNodes": "models",
    "KMSInfo": "models",
    "KMSOnChainDetail": "models",
    "NextAppID": "models",
    "NextAppIDs": "models",
    "OnChainDevice": "models",
    "OnChainKMSContract": "models",
    "OnChainOSImage": "models",
    "Paginated": "models",
    "TrustedSigner": "models",
}


__all__ = [
    "APIResponseError",
    "APIStatusError",
    "APITimeoutError",
    "AppEnvEncryptPubKey",
    "AsyncKMSClient",
    "AuthenticationError",
    "BadRequestError",
    "CVMInfo",
    "CVMKMSInfo",
    "CallbackError",
    "ClientConfig",
    "ClientStateError",
    "ConfigurationError",
    "ConflictError",
    "ConnectError",
    "ConnectRefusedError",
    "ConnectionLostError",
    "DEFAULT_API_VERSION",
    "DEFAULT_BASE_URL",
    "DNSError",
    "EnvVar",
    "InvalidArgumentError",
    "KMSClient",
    "KMSContract",
    "KMSContractNode",
    "KMSContractNodes",
    "KMSInfo",
    "KMSNodeMeta",
    "KMSOnChainDetail",
    "NextAppID",
    "NextAppIDs",
    "NotFoundError",
    "OnChainDevice",
    "OnChainKMSContract",
    "OnChainOSImage",
    "Paginated",
    "PermissionDeniedError",
    "PhalaKMSError",
    "PoolTimeoutError",
    "RateLimitError",
    "RedirectError",
    "ResponseValidationError",
    "RetryPolicy",
    "ServerError",
    "SignatureVerificationError",
    "TLSError",
    "TransportError",
    "TrustedSigner",
    "UnprocessableEntityError",
    "ValidationErrorItem",
    "VerifiedAppEnvEncryptPubKey",
    "__version__",
    "encrypt_env_vars",
    "recover_env_encrypt_pubkey_signer",
    "verify_env_encrypt_public_key",
]

__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY, __all__)
