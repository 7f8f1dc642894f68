"""Every fixed value of the wire and of the SDK's defaults, in one place.

Source: api-spec section 1 (base URL, headers, versions) and the official
``phala-cloud`` SDK's environment variable names.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "API_VERSIONS",
    "CONTRACT_API_VERSION",
    "DEFAULT_API_VERSION",
    "DEFAULT_BASE_URL",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_RETRY_BUDGET",
    "DEFAULT_RETRY_COST",
    "DEFAULT_TIMEOUT",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "HEADER_API_KEY",
    "HEADER_REQUEST_ID",
    "HEADER_VERSION",
    "MAX_ERROR_BODY_BYTES",
    "MAX_ERROR_BODY_CHARS",
    "MAX_ERROR_FIELD_CHARS",
    "MAX_ERROR_MESSAGE_CHARS",
    "NODE_API_VERSION",
    "TEE_MAX_ENV_NAME_BYTES",
    "TEE_MAX_ENV_TOTAL_BYTES",
    "TEE_MAX_ENV_VALUE_BYTES",
    "TEE_MAX_ENV_VARS",
]

DEFAULT_BASE_URL: Final = "https://cloud-api.phala.com/api/v1"
"""The API prefix used when neither an argument nor ``PHALA_CLOUD_API_PREFIX`` is set."""

ENV_API_KEY: Final = "PHALA_CLOUD_API_KEY"
"""The environment variable the API key is read from when none is passed."""

ENV_BASE_URL: Final = "PHALA_CLOUD_API_PREFIX"
"""The environment variable the base URL is read from when none is passed."""

HEADER_API_KEY: Final = "X-API-Key"
HEADER_VERSION: Final = "X-Phala-Version"
HEADER_REQUEST_ID: Final = "X-Request-ID"

API_VERSIONS: Final = ("2025-10-28", "2026-01-21", "2026-05-22", "2026-06-23")
"""Every ``X-Phala-Version`` the spec knows, oldest first."""

DEFAULT_API_VERSION: Final = API_VERSIONS[-1]
"""The ``X-Phala-Version`` sent by default (the newest version the spec knows)."""

NODE_API_VERSION: Final = "2026-05-22"
"""Pinned on ``GET /kms`` and ``GET /kms/{kms_id}`` to keep their node-centric shape."""

CONTRACT_API_VERSION: Final = "2026-06-23"
"""Pinned on the contract-centric calls (``list_kms_contracts`` and friends)."""

# One set of defaults for AsyncKMSClient, KMSClient, the command line and the demo.
DEFAULT_TIMEOUT: Final = 60.0
"""Seconds one attempt may take (the server's own KMS round trip can take ~30 s)."""

DEFAULT_CONNECT_TIMEOUT: Final = 10.0
"""Seconds opening one TCP (and TLS) connection may take."""

DEFAULT_MAX_RETRIES: Final = 5
"""Retries after the first attempt for safe failures (see ``RetryPolicy.max_retries``)."""

DEFAULT_RETRY_BUDGET: Final = 500.0
"""Tokens in a client's retry budget (see ``RetryPolicy.retry_budget``)."""

DEFAULT_RETRY_COST: Final = 5.0
"""Tokens one retry draws from the retry budget."""

DEFAULT_MAX_CONNECTIONS: Final = 100
"""The client's connection pool size."""

DEFAULT_MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024
"""The largest response body read, in bytes after decompression."""

# Caps on what one error holds: a hostile or broken server must not make an exception
# (or 2,000 of them in a batch) hold megabytes.
MAX_ERROR_BODY_BYTES: Final = 64 * 1024
"""The most bytes of an error body (status >= 300) read from the wire, whatever
``max_response_bytes`` says; the rest is never downloaded."""

MAX_ERROR_BODY_CHARS: Final = 64 * 1024
"""The most characters of an error body kept on an exception as ``body``."""

MAX_ERROR_FIELD_CHARS: Final = 1024
"""The most characters kept of an error's ``server_message``, ``error_code``,
``request_id``, each suggestion, and a ``Location``; longer values end in ``…``."""

MAX_ERROR_MESSAGE_CHARS: Final = 1024
"""The most characters of an error's message (``str(err)``); a longer one ends in ``…``."""

DEFAULT_CONCURRENCY: Final = 32
"""Requests in flight at once in a public-key fan-out."""

DEFAULT_MAX_AGE: Final = 300.0
"""The oldest accepted timestamped signature, in seconds (api-spec 4.2)."""

# What the TEE accepts at boot: dstack's env parser, Dstack-TEE/dstack (commit 312dc605)
# dstack/dstack-util/src/parse_env_file.rs, fn parse_env (api-spec section 7). A payload
# over these makes the CVM's boot fail.
TEE_MAX_ENV_VARS: Final = 1024
"""The most env vars one encrypted payload may hold (``MAX_ITEMS``; 1,025 fails the boot)."""

TEE_MAX_ENV_NAME_BYTES: Final = 255
"""The longest env-var name, in bytes."""

TEE_MAX_ENV_VALUE_BYTES: Final = 128 * 1024
"""The longest env-var value, in UTF-8 bytes (128 KiB)."""

TEE_MAX_ENV_TOTAL_BYTES: Final = 1024 * 1024
"""The most bytes of names plus values together, in UTF-8 (1 MiB; ``MAX_TOTAL_SIZE``)."""
