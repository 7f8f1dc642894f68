"""phala-kms: the Python SDK for the Phala Cloud KMS API.

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
        KMSContract,
        KMSContractNode,
        KMSContractNodes,
        KMSInfo,
        KMSOnChainDetail,
        NextAppID,
        NextAppIDs,
        OnChainDevice,
        OnChainKMSContract,
        OnChainOSImage,
        Paginated,
        TrustedSigner,
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
    "__version__",
    "encrypt_env_vars",
    "recover_env_encrypt_pubkey_signer",
    "verify_env_encrypt_public_key",
]

__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY, __all__)
