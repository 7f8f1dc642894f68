"""What a dstack TEE accepts at boot, checked before encrypting (phala_kms.tee).

Each limit is tested at its edge: the largest accepted payload encrypts and decrypts,
one more variable or byte is refused before anything is encrypted, with a message that
names the variable and never its value. The limits are dstack's env parser's
(Dstack-TEE/dstack ``dstack/dstack-util/src/parse_env_file.rs``, ``parse_env``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from phala_kms import InvalidArgumentError, encrypt_env_vars
from phala_kms.crypto import env_vars_plaintext
from phala_kms.tee import (
    TEE_MAX_ENV_NAME_BYTES,
    TEE_MAX_ENV_TOTAL_BYTES,
    TEE_MAX_ENV_VALUE_BYTES,
    TEE_MAX_ENV_VARS,
    allowed_envs_from_app_compose,
    env_names_in_docker_compose,
)
from phala_kms.testing import FakeKMSServer, decrypt_env_vars

RECIPIENT = X25519PrivateKey.from_private_bytes(b"\x07" * 32)
RECIPIENT_PUB = RECIPIENT.public_key().public_bytes_raw()
KIB = 1024
SECRET = "s3cr3t-VALUE-never-shown"


def refused(env: Any, **kwargs: Any) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as caught:
        encrypt_env_vars(env, RECIPIENT_PUB, **kwargs)
    assert SECRET not in str(caught.value)
    return caught.value


def round_trip(env: dict[str, str], **kwargs: Any) -> None:
    opened = decrypt_env_vars(encrypt_env_vars(env, RECIPIENT_PUB, **kwargs), RECIPIENT)
    assert [(v.key, v.value) for v in opened] == list(env.items())


def test_the_limits_are_dstacks() -> None:
    assert (TEE_MAX_ENV_VARS, TEE_MAX_ENV_NAME_BYTES) == (1024, 255)
    assert (TEE_MAX_ENV_VALUE_BYTES, TEE_MAX_ENV_TOTAL_BYTES) == (128 * KIB, 1024 * KIB)


def test_1024_variables_pass_and_1025_are_refused() -> None:
    env = {f"V{i}": SECRET for i in range(1024)}
    round_trip(env)
    err = refused({**env, "V1024": SECRET})
    assert "1025 env vars" in str(err) and "at most 1024" in str(err)
    assert (err.argument, err.key) == ("env_vars", None)


def test_a_255_byte_name_passes_and_256_bytes_is_refused() -> None:
    round_trip({"N" * 255: SECRET})
    err = refused({"N" * 256: SECRET})
    assert "256 bytes" in str(err) and err.key == "N" * 256


@pytest.mark.parametrize("char", ["x", "é", "😀"])  # 1, 2 and 4 UTF-8 bytes
def test_a_128_kib_value_passes_and_one_byte_more_is_refused(char: str) -> None:
    size = len(char.encode())
    value = char * (128 * KIB // size)
    round_trip({"BIG": value})
    over = value + "y" * (128 * KIB - len(value.encode()) + 1)
    assert len(over.encode()) == 128 * KIB + 1
    err = refused({"BIG": over, "OTHER": SECRET})
    assert f"{128 * KIB + 1} bytes" in str(err) and err.key == "BIG"


def test_names_and_values_may_total_1_mib_and_not_one_byte_more() -> None:
    names = [f"V{i}" for i in range(8)]  # 8 names of 2 bytes
    env = dict.fromkeys(names[:-1], "x" * (128 * KIB))
    env[names[-1]] = "x" * (128 * KIB - 2 * len(names))
    assert sum(len(k) + len(v) for k, v in env.items()) == 1024 * KIB
    round_trip(env)
    env[names[-1]] += "x"
    err = refused(env)
    assert f"{1024 * KIB + 1} bytes" in str(err) and "1 MiB" in str(err)


@pytest.mark.parametrize("empty", [{}, [], ()])
def test_an_empty_set_is_refused_unless_allowed(empty: Any) -> None:
    err = refused(empty)
    assert "allow_empty=True" in str(err)
    payload = encrypt_env_vars(empty, RECIPIENT_PUB, allow_empty=True)
    assert decrypt_env_vars(payload, RECIPIENT) == []
    assert env_vars_plaintext(empty, allow_empty=True) == b'{"env":[]}'


def test_names_outside_allowed_envs_are_refused() -> None:
    round_trip({"A": SECRET, "B": "2"}, allowed_envs=["A", "B", "C"])
    err = refused({"A": SECRET, "D": SECRET}, allowed_envs=("A", "B"))
    assert err.key == "D" and "allowed_envs" in str(err)
    refused({"A": SECRET}, allowed_envs=[])  # an app that allows nothing gets nothing


@pytest.mark.parametrize("bad", ["A", b"A", 3, ["A", "1X"], [None]])
def test_a_malformed_allowed_envs_is_refused(bad: Any) -> None:
    err = refused({"A": SECRET}, allowed_envs=bad)
    assert err.argument == "allowed_envs"


def test_allowed_envs_from_an_app_compose(tmp_path: Path) -> None:
    compose = {"manifest_version": 2, "name": "app", "allowed_envs": ["DB_URL", "API_KEY"]}
    path = tmp_path / "app-compose.json"
    path.write_text(json.dumps(compose))
    assert allowed_envs_from_app_compose(path) == ("DB_URL", "API_KEY")
    assert allowed_envs_from_app_compose(json.dumps(compose)) == ("DB_URL", "API_KEY")
    assert allowed_envs_from_app_compose(compose) == ("DB_URL", "API_KEY")
    assert allowed_envs_from_app_compose({"name": "app"}) == ()  # dstack's default: none
    allowed = allowed_envs_from_app_compose(path)
    round_trip({"DB_URL": SECRET}, allowed_envs=allowed)
    assert refused({"OTHER": SECRET}, allowed_envs=allowed).key == "OTHER"


@pytest.mark.parametrize(
    "bad", ["not json", "[1, 2]", '{"allowed_envs": "A"}', '{"allowed_envs": ["1A"]}']
)
def test_a_broken_app_compose_is_refused(bad: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        allowed_envs_from_app_compose(bad)
    assert caught.value.argument == "app_compose"
    with pytest.raises(InvalidArgumentError):
        allowed_envs_from_app_compose(tmp_path / "missing.json")


def test_env_names_referenced_by_a_docker_compose(tmp_path: Path) -> None:
    text = (
        "services:\n  app:\n    image: x\n    environment:\n"
        "      - DB_URL=${DB_URL}\n      - MODE=${MODE:-prod}\n      - REQ=${REQUIRED:?set it}\n"
        "      - PLAIN=$PLAIN_VAR\n      - LITERAL=$$NOT_A_VAR\n      - AGAIN=${DB_URL}\n"
    )
    expected = ("DB_URL", "MODE", "PLAIN_VAR", "REQUIRED")
    assert env_names_in_docker_compose(text) == expected
    path = tmp_path / "docker-compose.yaml"
    path.write_text(text)
    assert env_names_in_docker_compose(path) == expected


def test_the_client_checks_before_any_request(kms: Any, server: FakeKMSServer) -> None:
    app = "ab" * 20
    with pytest.raises(InvalidArgumentError):
        kms.encrypt_env_vars_for_app("phala", app, {}, trusted_signer=server.k256_pubkey)
    with pytest.raises(InvalidArgumentError):
        kms.encrypt_env_vars_for_app(
            "phala", app, {"X": SECRET}, trusted_signer=server.k256_pubkey, allowed_envs=["A"]
        )
    with pytest.raises(InvalidArgumentError):
        kms.encrypt_env_vars_for_app(
            "phala", app, {"X": "v" * (128 * KIB + 1)}, trusted_signer=server.k256_pubkey
        )
    assert server.total_requests == 0
    sealed = kms.encrypt_env_vars_for_app(
        "phala", app, {}, trusted_signer=server.k256_pubkey, allow_empty=True
    )
    assert decrypt_env_vars(sealed, server.app_private_key("phala", app)) == []
    sealed = kms.encrypt_env_vars_for_app(
        "phala", app, {"A": "1"}, trusted_signer=server.k256_pubkey, allowed_envs=["A"]
    )
    assert [v.key for v in decrypt_env_vars(sealed, server.app_private_key("phala", app))] == ["A"]
