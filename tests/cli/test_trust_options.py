"""The key commands' trust options, end to end: ``--anchor`` (pinned, api, chain, node),
``--rpc-url``, ``--node-url``, ``--ca-file``, ``--require-timestamped``, and
``encrypt-env``'s ``--cvm``, allowed-names and ``--check-registered``, against the fake
API and a real EVM (eth-tester with py-evm) behind a JSON-RPC endpoint on 127.0.0.1.

Every exit path is checked for its documented code and its hint."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from phala_kms import errors
from phala_kms.anchors import SOURCES
from phala_kms.cli import ExitCode, cli
from phala_kms.cli._present import exit_code_for, hint_for
from phala_kms.cli._trust import ANCHORS, TrustChoice
from phala_kms.testing import (
    EthTesterEVM,
    FakeChainRPC,
    FakeKMSServer,
    StatusFault,
    decrypt_env_vars,
)
from phala_kms.testing._chain import dstack_kms_init_code

KMS = "kms_cli_local"  # the fake's KMS whose contract lives on the EVM
REGISTERED = "c3" * 20
UNREGISTERED = "d4" * 20
APP_ID = "0123456789abcdef0123456789abcdef01234567"
ENCRYPT = ("encrypt-env", "base", APP_ID, "--env-file", "-")
GENERIC_HINT = "it is not proven to come from the trusted KMS"


@pytest.fixture(autouse=True)
def _no_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture(scope="module")
def evm() -> EthTesterEVM:
    return EthTesterEVM()


@pytest.fixture
def chain(evm: EthTesterEVM) -> Iterator[FakeChainRPC]:
    with FakeChainRPC.in_thread(evm) as rpc:
        yield rpc


def _node_on(evm: EthTesterEVM, address: str) -> dict[str, Any]:
    return {
        "id": KMS,
        "slug": "kms-cli-local",
        "url": "https://kms.cli.invalid",
        "version": "v0.5.7",
        "chain_id": evm.chain_id,
        "kms_contract_address": address,
        "gateway_app_id": None,
    }


@pytest.fixture
def onchain(evm: EthTesterEVM) -> Iterator[FakeKMSServer]:
    """A fake whose KMS ``kms_cli_local`` has its contract on the EVM, storing its root key
    and registering ``REGISTERED``; pubkeys carry the timestamped signature."""
    address = evm.next_contract_address()
    with FakeKMSServer.in_thread(
        phala_node_count=1, extra_nodes=[_node_on(evm, address)], timestamped_signatures=True
    ) as server:
        root = bytes.fromhex(server.k256_pubkey_for(KMS)[2:])
        assert evm.deploy(dstack_kms_init_code(root, [bytes.fromhex(REGISTERED)])) == address
        yield server


def invoke(server: FakeKMSServer, *args: str, stdin: str | None = None) -> Result:
    env = {"PHALA_CLOUD_API_PREFIX": server.base_url, "PHALA_CLOUD_API_KEY": server.api_key}
    return CliRunner().invoke(cli, list(args), env=env, input=stdin, catch_exceptions=False)


def hint(result: Result) -> str:
    return next(line for line in result.stderr.splitlines() if line.startswith("hint: "))


def env_file(tmp_path: Path, text: str = "A=alpha-S3CRET\nB=beta-S3CRET\n") -> str:
    path = tmp_path / "app.env"
    path.write_text(text, encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------- agreement


def test_the_anchor_names_are_the_sdks() -> None:
    assert ANCHORS == SOURCES


def test_chain_and_api_agree_and_the_output_says_what_was_verified(
    onchain: FakeKMSServer, chain: FakeChainRPC
) -> None:
    root = onchain.k256_pubkey_for(KMS)
    args = ("pubkey", KMS, APP_ID, "--anchor", "api", "--anchor", "chain", "--rpc-url", chain.url)
    result = invoke(onchain, "--json", *args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["verified"] is True
    assert data["trusted_signer"] == root
    assert [anchor["source"] for anchor in data["anchors"]] == ["api", "chain"]
    assert "kmsInfo()" in data["anchors"][1]["detail"]
    verification = data["verification"]
    assert verification["scheme"] == "signature_v1"
    assert verification["signer"] == root
    assert isinstance(verification["timestamp"], int)
    assert data["public_key"] == onchain.app_public_key(KMS, APP_ID).hex()
    assert chain.methods == ["eth_chainId", "eth_call"]
    assert "warning" not in result.stderr  # not the API alone

    table = invoke(onchain, *args)
    assert table.exit_code == 0, table.output
    assert "yes: signature_v1, signed at" in table.stdout
    assert f"by {root} (anchors: api, chain)" in table.stdout
    assert re.search(r"^anchor +chain: eth_call kmsInfo\(\) at 0x", table.stdout, re.MULTILINE)


def test_every_anchor_together(onchain: FakeKMSServer, chain: FakeChainRPC) -> None:
    root = onchain.k256_pubkey_for(KMS)
    (contract,) = [c for c in onchain.contracts if c["chain_id"] == chain.evm.chain_id]
    result = invoke(
        onchain, "--json", "pubkey", contract["id"], APP_ID, "--trusted-signer", root,
        *("--anchor", "api", "--anchor", "chain", "--anchor", "node", "--anchor", "pinned"),
        "--rpc-url", chain.url, "--require-timestamped",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sources = [anchor["source"] for anchor in json.loads(result.stdout)["anchors"]]
    assert sources == ["pinned", "api", "chain", "node"]  # the nodes the API lists


def test_node_anchor_with_given_urls(server: FakeKMSServer) -> None:
    url = server.node_url("kms-base-prod7")
    result = invoke(
        server, "--json", "pubkeys", "base", APP_ID, "--anchor", "node", "--node-url", url
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["trusted_signer"] == server.k256_pubkey_for("base")
    assert data["anchors"] == [
        {"source": "node", "detail": f"node: POST {url}/prpc/GetMeta?json k256_pubkey"}
    ]
    assert data["results"][0]["key"]["scheme"] == "signature"


def test_a_pinned_key_that_the_chain_contradicts_exits_6(
    onchain: FakeKMSServer, chain: FakeChainRPC
) -> None:
    other = onchain.k256_pubkey_for("base")
    result = invoke(
        onchain, "pubkey", KMS, APP_ID, "--trusted-signer", other,
        "--anchor", "chain", "--rpc-url", chain.url,
    )  # fmt: skip
    assert result.exit_code == ExitCode.VERIFICATION
    assert "disagree" in result.stderr
    assert "trust anchors disagree" in hint(result)
    assert onchain.route_counts.get("app_pubkey", 0) == 0  # no key fetched
    assert result.stdout == ""


def test_nodes_that_disagree_exit_6(server: FakeKMSServer) -> None:
    result = invoke(
        server, "pubkey", "base", APP_ID, "--anchor", "node",
        "--node-url", server.node_url("base"), "--node-url", server.node_url("ethereum"),
    )  # fmt: skip
    assert result.exit_code == ExitCode.VERIFICATION
    assert "trust anchors disagree" in hint(result)


# --------------------------------------------------------------------------- fail closed


def test_an_rpc_of_another_chain_exits_2(server: FakeKMSServer, chain: FakeChainRPC) -> None:
    """The RPC serves eth-tester's chain, Base's contract is on 8453: the setting is wrong,
    and nothing is read from the other chain."""
    result = invoke(server, "pubkey", "base", APP_ID, "--anchor", "chain", "--rpc-url", chain.url)
    assert result.exit_code == ExitCode.USAGE
    assert "hint: --rpc-url must be a JSON-RPC endpoint of the chain" in result.stderr
    assert chain.methods == ["eth_chainId"]


def test_an_unreachable_rpc_exits_5(onchain: FakeKMSServer, closed_port: int) -> None:
    result = invoke(
        onchain, "--max-retries", "0", "pubkey", KMS, APP_ID,
        "--anchor", "chain", "--rpc-url", f"http://127.0.0.1:{closed_port}",
    )  # fmt: skip
    assert result.exit_code == ExitCode.NETWORK
    assert "ConnectRefusedError" in result.stderr


def test_an_off_chain_kms_cannot_be_anchored_on_chain(
    server: FakeKMSServer, chain: FakeChainRPC
) -> None:
    result = invoke(server, "pubkey", "phala", APP_ID, "--anchor", "chain", "--rpc-url", chain.url)
    assert result.exit_code == ExitCode.VERIFICATION
    assert "cannot vouch for the root key" in hint(result)
    assert chain.methods == []


def test_a_contract_holding_no_key_exits_6(evm: EthTesterEVM, chain: FakeChainRPC) -> None:
    address = evm.next_contract_address()
    with FakeKMSServer.in_thread(phala_node_count=1, extra_nodes=[_node_on(evm, address)]) as srv:
        evm.deploy(dstack_kms_init_code(b"\x05" * 33))  # not a curve point
        result = invoke(srv, "pubkey", KMS, APP_ID, "--anchor", "chain", "--rpc-url", chain.url)
    assert result.exit_code == ExitCode.VERIFICATION
    assert "answered something that is not a root key" in hint(result)


def test_the_chain_anchor_without_its_extra_exits_2(
    server: FakeKMSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "eth_abi", None)
    result = invoke(
        server, "--json", "pubkey", "base", APP_ID,
        "--anchor", "chain", "--rpc-url", "https://rpc.example.com",
    )  # fmt: skip
    assert result.exit_code == ExitCode.USAGE
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "ConfigurationError"
    assert "reinstall with pip install 'phala-kms[cli]'" in error["hint"]
    assert "pip install -e '.[cli]'" in error["hint"]
    assert server.total_requests == 0


# --------------------------------------------------------------------------- signatures


def test_require_timestamped_refuses_a_legacy_only_key(server: FakeKMSServer) -> None:
    signer = server.k256_pubkey_for("base")
    args = ("pubkey", "base", APP_ID, "--trusted-signer", signer, "--require-timestamped")
    result = invoke(server, *args)
    assert result.exit_code == ExitCode.VERIFICATION
    assert "--require-timestamped refuses it" in hint(result)
    server.timestamped_signatures = True
    accepted = invoke(server, "--json", *args)
    assert accepted.exit_code == 0, accepted.output
    assert json.loads(accepted.stdout)["verification"]["scheme"] == "signature_v1"


def test_require_timestamped_in_the_fan_out(server: FakeKMSServer) -> None:
    result = invoke(
        server, "--json", "pubkeys", "base", APP_ID, "ab" * 20,
        "--trusted-signer", server.k256_pubkey_for("base"), "--require-timestamped",
    )  # fmt: skip
    assert result.exit_code == ExitCode.VERIFICATION
    data = json.loads(result.stdout)
    assert data["failed"] == 2
    assert "--require-timestamped refuses it" in data["results"][0]["error"]["hint"]


def test_a_half_present_signature_v1_exits_6(server: FakeKMSServer) -> None:
    served = invoke(server, "--json", "pubkey", "base", APP_ID)
    body = json.loads(served.stdout)
    stripped = {"public_key": body["public_key"], "signature": body["signature"],
                "timestamp": 1764547200}  # fmt: skip
    server.inject("app_pubkey", StatusFault(200, body=stripped))
    result = invoke(
        server, "pubkey", "base", APP_ID, "--trusted-signer", server.k256_pubkey_for("base")
    )
    assert result.exit_code == ExitCode.VERIFICATION
    assert "timestamp and signature_v1 do not come together" in hint(result)


# --------------------------------------------------------------------------- encrypt-env


def test_encrypt_env_check_registered(
    onchain: FakeKMSServer, chain: FakeChainRPC, tmp_path: Path
) -> None:
    path = env_file(tmp_path)
    trust = ("--anchor", "chain", "--rpc-url", chain.url, "--check-registered")
    result = invoke(onchain, "--json", "encrypt-env", KMS, REGISTERED, "--env-file", path, *trust)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["registered_on_chain"] is True
    assert data["verification"]["scheme"] == "signature_v1"
    opened = decrypt_env_vars(data["encrypted_env"], onchain.app_private_key(KMS, REGISTERED))
    assert {v.key: v.value for v in opened} == {"A": "alpha-S3CRET", "B": "beta-S3CRET"}
    assert "S3CRET" not in result.stderr

    human = invoke(onchain, "encrypt-env", KMS, REGISTERED, "--env-file", path, *trust)
    assert "app registered with the KMS contract on chain" in human.stderr

    refused = invoke(onchain, "encrypt-env", KMS, UNREGISTERED, "--env-file", path, *trust)
    assert refused.exit_code == ExitCode.VERIFICATION
    assert "registeredApps is false" in hint(refused)
    assert refused.stdout == ""
    assert onchain.route_counts.get("app_pubkey", 0) == 2  # never for the unregistered app


def test_encrypt_env_for_a_cvm(server: FakeKMSServer, tmp_path: Path) -> None:
    cvm = server.add_cvm("kms-base-prod7")
    path = env_file(tmp_path)
    signer = server.k256_pubkey_for("base")
    result = invoke(
        server, "--json", "encrypt-env", "--cvm", cvm, "--env-file", path,
        "--trusted-signer", signer,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["cvm_id"], data["kms"]) == (cvm, "kms-base-prod7")  # by slug, not "base"
    opened = decrypt_env_vars(data["encrypted_env"], server.app_private_key("base", data["app_id"]))
    assert [v.key for v in opened] == ["A", "B"]
    human = invoke(server, "encrypt-env", "--cvm", cvm, "--env-file", path, "--trust-api")
    assert human.exit_code == 0, human.output
    assert f"(CVM {cvm})" in human.stderr


def test_a_kms_argument_overrides_the_cvms(server: FakeKMSServer, tmp_path: Path) -> None:
    cvm = server.add_cvm("kms-base-prod7", kms_info={"slug": None, "id": None})
    path = env_file(tmp_path)
    signer = ("--trusted-signer", server.k256_pubkey_for("base"))
    missing = invoke(server, "encrypt-env", "--cvm", cvm, "--env-file", path, *signer)
    assert missing.exit_code == ExitCode.API_ERROR  # no slug or id to choose the KMS by
    assert "kms_info.slug or kms_info.id" in missing.stderr
    given = invoke(
        server, "--json", "encrypt-env", "base", "--cvm", cvm, "--env-file", path, *signer
    )
    assert given.exit_code == 0, given.output
    assert json.loads(given.stdout)["kms"] == "base"


def test_encrypt_env_require_timestamped(server: FakeKMSServer, tmp_path: Path) -> None:
    args = ("encrypt-env", "base", APP_ID, "--env-file", env_file(tmp_path), "--trust-api")
    refused = invoke(server, *args, "--require-timestamped")
    assert refused.exit_code == ExitCode.VERIFICATION
    assert refused.stdout == ""
    server.timestamped_signatures = True
    result = invoke(server, *args, "--require-timestamped")
    assert result.exit_code == 0, result.output
    assert "key verified: signature_v1, signed at" in result.stderr
    assert "(anchors: api)" in result.stderr


def test_a_docker_compose_that_names_every_variable(server: FakeKMSServer, tmp_path: Path) -> None:
    docker = tmp_path / "docker-compose.yaml"
    docker.write_text("services:\n  app:\n    environment:\n      - X=${A}\n      - Y=$B\n")
    result = invoke(
        server, "--json", "encrypt-env", "base", APP_ID, "--env-file", env_file(tmp_path),
        "--trust-api", "--docker-compose", str(docker),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["allowed_envs"] == ["A", "B"]


def test_a_cvm_of_another_kms_is_refused(server: FakeKMSServer, tmp_path: Path) -> None:
    cvm = server.add_cvm("phala")
    result = invoke(
        server, "encrypt-env", "--cvm", cvm, "--env-file", env_file(tmp_path),
        "--trusted-signer", server.k256_pubkey_for("base"),
    )  # fmt: skip
    assert result.exit_code == ExitCode.VERIFICATION
    assert "refusing to encrypt for another KMS" in result.stderr
    assert server.route_counts.get("app_pubkey", 0) == 0


def test_an_unknown_cvm_exits_4(server: FakeKMSServer, tmp_path: Path) -> None:
    result = invoke(
        server, "encrypt-env", "--cvm", "cvm_missing", "--env-file", env_file(tmp_path),
        "--no-verify",
    )  # fmt: skip
    assert result.exit_code == ExitCode.NOT_FOUND


def test_allowed_names(server: FakeKMSServer, tmp_path: Path) -> None:
    path = env_file(tmp_path)
    compose = tmp_path / "app-compose.json"
    compose.write_text(json.dumps({"allowed_envs": ["A", "B"]}))
    docker = tmp_path / "docker-compose.yaml"
    docker.write_text("services:\n  app:\n    environment:\n      - X=${A}\n")
    base = ("encrypt-env", "base", APP_ID, "--env-file", path, "--trust-api")
    ok = invoke(server, "--json", *base, "--app-compose", str(compose))
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["allowed_envs"] == ["A", "B"]
    ok = invoke(server, *base, "--allowed-envs", "A", "--allowed-envs", "B,C")
    assert ok.exit_code == 0, ok.output
    assert "every name allowed (--allowed-envs)" in ok.stderr
    before = server.total_requests
    for extra in (("--allowed-envs", "A"), ("--docker-compose", str(docker))):
        refused = invoke(server, *base, *extra)
        assert refused.exit_code == ExitCode.USAGE, extra
        assert "'B' is not in the app's allowed_envs" in refused.stderr
        assert "--allowed-envs / --app-compose / --docker-compose" in hint(refused)
        assert "S3CRET" not in refused.output
    assert server.total_requests == before  # refused before any request


# --------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("pubkey", "base", APP_ID, "--anchor", "pinned"), "--anchor pinned needs"),
        (("pubkey", "base", APP_ID, "--anchor", "chain"), "--anchor chain needs --rpc-url"),
        (("pubkey", "base", APP_ID, "--rpc-url", "http://127.0.0.1:1"), "--rpc-url is used"),
        (("pubkey", "base", APP_ID, "--node-url", "http://127.0.0.1:1"), "--node-url is used"),
        (("pubkey", "base", APP_ID, "--require-timestamped"), "--require-timestamped needs"),
        (("pubkeys", "base", APP_ID, "--anchor", "moon"), "Invalid value for '--anchor'"),
        (("encrypt-env", "base", "--env-file", "-", "--trust-api"), "give KMS and APP_ID"),
        (
            ("encrypt-env", "base", APP_ID, "--cvm", "c", "--env-file", "-", "--trust-api"),
            "with --cvm the app id comes from the CVM",
        ),
        (
            ("encrypt-env", "base", APP_ID, "--env-file", "-", "--trust-api", "--check-registered"),
            "--check-registered needs --rpc-url",
        ),
        (
            ("encrypt-env", "base", APP_ID, "--env-file", "-", "--no-verify", "--anchor", "api"),
            "exactly one of",
        ),
        ((*ENCRYPT, "--no-verify", "--require-timestamped"), "--require-timestamped needs"),
        (
            (*ENCRYPT, "--trust-api", "--allowed-envs", "A", "--docker-compose", __file__),
            "give the allowed names once",
        ),
    ],
)
def test_options_that_contradict_or_would_be_ignored_exit_2(
    server: FakeKMSServer, args: tuple[str, ...], message: str
) -> None:
    result = invoke(server, *args, stdin="A=1\n")
    assert result.exit_code == ExitCode.USAGE, result.output
    assert message in result.stderr
    assert server.total_requests == 0


@pytest.mark.parametrize(
    ("flag", "url"),
    [("--rpc-url", "http://rpc.example.com"), ("--node-url", "http://kms.example.com")],
)
def test_plain_http_off_loopback_is_refused(server: FakeKMSServer, flag: str, url: str) -> None:
    anchor = "chain" if flag == "--rpc-url" else "node"
    result = invoke(server, "pubkey", "base", APP_ID, "--anchor", anchor, flag, url)
    assert result.exit_code == ExitCode.USAGE
    assert f"hint: check {flag}" in result.stderr
    assert server.total_requests == 0


def test_ca_file(server: FakeKMSServer, tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    pem = tmp_path / "kms-ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    choice = TrustChoice(anchors=("node",), ca_file=str(pem))
    context = choice.ssl_context
    assert context is not None
    units = [dict(item[0] for item in cert["subject"]) for cert in context.get_ca_certs()]
    assert any("Testing CA" in unit.get("organizationalUnitName", "") for unit in units)
    assert len(units) > 1  # the system store is kept
    ok = invoke(server, "pubkey", "base", APP_ID, "--anchor", "node", "--ca-file", str(pem))
    assert ok.exit_code == 0, ok.output

    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    result = invoke(server, "pubkey", "base", APP_ID, "--anchor", "node", "--ca-file", str(bad))
    assert result.exit_code == ExitCode.USAGE
    assert "--ca-file" in result.stderr
    unused = invoke(server, "pubkey", "base", APP_ID, "--trust-api", "--ca-file", str(pem))
    assert unused.exit_code == ExitCode.USAGE
    assert "--ca-file is used by" in unused.stderr


# --------------------------------------------------------------------------- the error table


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("legacy_signature", ExitCode.VERIFICATION),
        ("incomplete_signature_v1", ExitCode.VERIFICATION),
        ("anchor_mismatch", ExitCode.VERIFICATION),
        ("anchor_unavailable", ExitCode.VERIFICATION),
        ("malformed_anchor", ExitCode.VERIFICATION),
        ("app_not_registered", ExitCode.VERIFICATION),
        ("wrong_chain", ExitCode.USAGE),
        ("invalid_trusted_signer", ExitCode.USAGE),
    ],
)
def test_each_reason_has_its_code_and_its_own_hint(reason: str, code: ExitCode) -> None:
    err = errors.SignatureVerificationError("x", reason=reason)
    assert exit_code_for(err) == code
    assert GENERIC_HINT not in hint_for(err)


def test_an_unknown_reason_keeps_the_generic_hint() -> None:
    err = errors.SignatureVerificationError("x", reason="signer_mismatch")
    assert (exit_code_for(err), GENERIC_HINT in hint_for(err)) == (ExitCode.VERIFICATION, True)
