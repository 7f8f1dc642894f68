"""Secrets stay out of frame locals: tracebacks that capture locals print none of them.

Sentry, ``rich`` and ``pytest --showlocals`` print the ``repr`` of every local of every
frame. So the API key is wrapped in a redacting ``str`` as soon as it is read (argument
or ``PHALA_CLOUD_API_KEY``), a half-built client has a working ``repr``, and the
encryptor never raises while an env-var value sits in a plain local. Each check formats
``traceback.TracebackException(..., capture_locals=True)`` and searches the text.

Secrets are passed inline (module constants, or built by a call in the argument list),
never bound to a local of the test function, whose frame is part of every traceback.
"""

from __future__ import annotations

import asyncio
import ssl
import traceback
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from phala_kms import (
    AsyncKMSClient,
    ConfigurationError,
    EnvVar,
    InvalidArgumentError,
    KMSClient,
    NotFoundError,
    PhalaKMSError,
    RetryPolicy,
    SignatureVerificationError,
    encrypt_env_vars,
)
from phala_kms._secrets import Hidden, RedactedBytes, RedactedStr, redact_key
from phala_kms.crypto import encrypt_env_plaintext, env_vars_plaintext
from phala_kms.testing import FakeKMSServer

KEY_MARK = "SECRET_in_locals"
KEY = f"phak_{KEY_MARK}_5e1f0a"
ENV_MARK = "env-SECRET-in-locals"
ENV_SECRET = f"{ENV_MARK}-77c1"
BASE = "http://127.0.0.1:9/api/v1"
PUBLIC_KEY = "11" * 32
APP_ID = "0123456789abcdef0123456789abcdef01234567"
OTHER_SIGNER = "0x" + "22" * 20

CLIENTS = [AsyncKMSClient, KMSClient]


def captured(err: BaseException) -> str:
    """The traceback of ``err`` (and its chain) with every frame's locals, as printed."""
    exc = traceback.TracebackException(type(err), err, err.__traceback__, capture_locals=True)
    return "".join(exc.format())


def key_for(case: str) -> str:
    return KEY + "\u00e9" if case == "non_ascii_key" else KEY


def secret_env() -> dict[str, str]:
    return {"DATABASE_URL": f"postgres://app:{ENV_SECRET}@db/prod", "TOKEN": ENV_SECRET}


# Each case: the constructor keywords that make it a ConfigurationError.
CONFIG_ERRORS: dict[str, dict[str, Any]] = {
    "bad_base_url": {"base_url": "ftp://kms.example/api/v1"},
    "remote_plain_http": {"base_url": "http://kms.example/api/v1"},
    "non_ascii_key": {"base_url": BASE},
    "bad_timeout": {"base_url": BASE, "timeout": -1},
    "bad_connect_timeout": {"base_url": BASE, "connect_timeout": 0},
    "retries_twice": {"base_url": BASE, "max_retries": 7, "retry_policy": RetryPolicy()},
    "bad_max_connections": {"base_url": BASE, "max_connections": 0},
    "bad_max_response_bytes": {"base_url": BASE, "max_response_bytes": 0},
    "bad_api_version": {"base_url": BASE, "api_version": "2026-06-23\x07"},
    "bad_ssl_context": {"base_url": BASE, "ssl_context": "corp-ca.pem"},
    "bad_trace_configs": {"base_url": BASE, "trace_configs": [object()]},
}


# --------------------------------------------------------------------------- the API key


def build(client_class: Callable[..., Any], source: str, case: str) -> Any:
    """Construct a client for ``case``, the key passed inline (never held by a local)."""
    if source == "argument":
        return client_class(key_for(case), **CONFIG_ERRORS[case])
    return client_class(**CONFIG_ERRORS[case])


@pytest.mark.parametrize("client_class", CLIENTS, ids=["async", "sync"])
@pytest.mark.parametrize("source", ["argument", "environment"])
@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_configuration_errors_show_no_key_in_captured_locals(
    client_class: Callable[..., Any], source: str, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if source == "environment":
        monkeypatch.setenv("PHALA_CLOUD_API_KEY", key_for(case))
    with pytest.raises(ConfigurationError) as caught:
        build(client_class, source, case)
    text = captured(caught.value)
    assert KEY_MARK not in text
    assert "api_key = " in text  # the frames holding the key were captured...
    assert "(not initialised)>" in text  # ...and so was the half-built client
    if source == "argument":
        assert "api_key = '<redacted>'" in text


@pytest.mark.parametrize("source", ["argument", "environment"])
async def test_session_conflicts_show_no_key_in_captured_locals(
    source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if source == "environment":
        monkeypatch.setenv("PHALA_CLOUD_API_KEY", KEY)
    async with aiohttp.ClientSession() as session:
        conflicts: list[dict[str, Any]] = [
            {"ssl_context": ssl.create_default_context()},
            {"trace_configs": [aiohttp.TraceConfig()]},
        ]
        for extra in conflicts:
            with pytest.raises(ConfigurationError) as caught:
                AsyncKMSClient(
                    KEY if source == "argument" else None, BASE, session=session, **extra
                )
            text = captured(caught.value)
            assert KEY_MARK not in text
            assert "<AsyncKMSClient (not initialised)>" in text


@pytest.mark.parametrize("client_class", CLIENTS, ids=["async", "sync"])
def test_a_half_built_client_has_a_repr(client_class: type[Any]) -> None:
    bare = client_class.__new__(client_class)
    assert repr(bare) == f"<{client_class.__name__} (not initialised)>"
    assert bare.closed is False


def test_the_key_is_wrapped_as_soon_as_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from_argument = AsyncKMSClient(f"  {KEY}\n", BASE)
    assert type(from_argument.config.api_key) is RedactedStr
    assert from_argument.config.api_key == KEY  # stripped, and otherwise unchanged
    assert repr(from_argument.config.api_key) == "'<redacted>'"
    monkeypatch.setenv("PHALA_CLOUD_API_KEY", KEY)
    with KMSClient(base_url=BASE) as from_environment:
        assert type(from_environment.config.api_key) is RedactedStr
        assert KEY_MARK not in repr(from_environment.config)
    assert redact_key(None) is None
    assert KEY_MARK not in repr(redact_key(KEY.encode()))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- env-var values


ENCRYPTOR_ERRORS: dict[str, Callable[[], object]] = {
    "invalid_name": lambda: encrypt_env_vars({**secret_env(), "1BAD": "x"}, PUBLIC_KEY),
    "non_str_value": lambda: encrypt_env_vars({**secret_env(), "PORT": 5432}, PUBLIC_KEY),  # type: ignore[dict-item]
    "duplicate_name": lambda: encrypt_env_vars(
        [("TOKEN", ENV_SECRET), EnvVar("TOKEN", ENV_SECRET)], PUBLIC_KEY
    ),
    "lone_surrogate": lambda: encrypt_env_vars({**secret_env(), "BAD": "\ud800"}, PUBLIC_KEY),
    "not_a_pair": lambda: encrypt_env_vars([("TOKEN", ENV_SECRET), ("A", "b", "c")], PUBLIC_KEY),  # type: ignore[list-item]
    "generator": lambda: encrypt_env_vars(
        (pair for pair in [("TOKEN", ENV_SECRET), ("", "x")]), PUBLIC_KEY
    ),
    "dotenv_text": lambda: encrypt_env_vars(f"TOKEN={ENV_SECRET}", PUBLIC_KEY),  # type: ignore[arg-type]
    "bad_public_key": lambda: encrypt_env_vars(secret_env(), "zz"),
    "low_order_public_key": lambda: encrypt_env_vars(secret_env(), bytes(32)),
    "plaintext_invalid_name": lambda: env_vars_plaintext({**secret_env(), "1BAD": "x"}),
    "plaintext_lone_surrogate": lambda: env_vars_plaintext({**secret_env(), "B": "\udfff"}),
    "sealing_to_a_low_order_key": lambda: encrypt_env_plaintext(
        env_vars_plaintext(secret_env()), bytes(32)
    ),
    "sealing_raw_bytes": lambda: encrypt_env_plaintext(ENV_SECRET.encode(), bytes(32)),
}


@pytest.mark.parametrize("case", sorted(ENCRYPTOR_ERRORS))
def test_encryptor_errors_show_no_env_value_in_captured_locals(case: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        ENCRYPTOR_ERRORS[case]()
    text = captured(caught.value)
    assert ENV_MARK not in text
    assert "env-SECRET" not in text


def test_the_plaintext_is_bytes_with_a_redacted_repr() -> None:
    plaintext = env_vars_plaintext({"TOKEN": ENV_SECRET})
    assert isinstance(plaintext, bytes)
    assert plaintext == b'{"env":[{"key":"TOKEN","value":"' + ENV_SECRET.encode() + b'"}]}'
    assert repr(plaintext) == "b'<redacted>'"
    assert type(plaintext) is RedactedBytes
    assert repr(Hidden(secret_env())) == "<<redacted>>"


# --------------------------------------------------------------------------- through the clients


CLIENT_FAILURES: dict[str, tuple[type[PhalaKMSError], dict[str, Any]]] = {
    "invalid_env": (InvalidArgumentError, {"kms": "phala", "bad_env": True}),
    "unknown_kms": (NotFoundError, {"kms": "no-such-kms"}),
    "wrong_signer": (SignatureVerificationError, {"kms": "phala", "signer": OTHER_SIGNER}),
}
"""Calls of ``encrypt_env_vars_for_app`` that fail before, during and after the request."""


@pytest.mark.parametrize("failure", sorted(CLIENT_FAILURES))
def test_blocking_encrypt_for_app_errors_show_no_env_value(
    server: FakeKMSServer, failure: str
) -> None:
    expected, how = CLIENT_FAILURES[failure]
    with (
        KMSClient(server.api_key, server.base_url, max_retries=0) as client,
        pytest.raises(expected) as caught,
    ):
        client.encrypt_env_vars_for_app(
            how["kms"],
            APP_ID,
            {**secret_env(), "1BAD": "x"} if how.get("bad_env") else secret_env(),
            trusted_signer=how.get("signer", server.k256_pubkey),
        )
    text = captured(caught.value)
    assert ENV_MARK not in text
    assert KEY_MARK not in text


@pytest.mark.parametrize("failure", sorted(CLIENT_FAILURES))
async def test_async_encrypt_for_app_errors_show_no_env_value(
    server: FakeKMSServer, failure: str
) -> None:
    expected, how = CLIENT_FAILURES[failure]
    async with AsyncKMSClient(server.api_key, server.base_url, max_retries=0) as client:
        with pytest.raises(expected) as caught:
            await client.encrypt_env_vars_for_app(
                how["kms"],
                APP_ID,
                {**secret_env(), "1BAD": "x"} if how.get("bad_env") else secret_env(),
                trusted_signer=how.get("signer", server.k256_pubkey),
            )
    text = captured(caught.value)
    assert ENV_MARK not in text
    await asyncio.sleep(0)


def test_encrypting_still_works_through_both_clients(server: FakeKMSServer) -> None:
    from phala_kms.testing import decrypt_env_vars

    private = server.app_private_key("phala", APP_ID)
    with KMSClient(server.api_key, server.base_url) as client:
        sealed = client.encrypt_env_vars_for_app(
            "phala", APP_ID, secret_env(), trusted_signer=server.k256_pubkey
        )
    assert {v.key: v.value for v in decrypt_env_vars(sealed, private)} == secret_env()

    async def run() -> str:
        async with AsyncKMSClient(server.api_key, server.base_url) as client:
            return await client.encrypt_env_vars_for_app(
                "phala", APP_ID, secret_env(), trusted_signer=server.k256_pubkey
            )

    opened = decrypt_env_vars(asyncio.run(run()), private)
    assert {v.key: v.value for v in opened} == secret_env()
