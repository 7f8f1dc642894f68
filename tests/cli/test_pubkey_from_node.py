"""``phala-kms pubkey KMS APP_ID --from-node URL``: the key straight from a KMS node,
verified against the trust anchors exactly like the API's key, against the fake's node
routes (``{server.url}/node/{ref}/prpc/...``).

Every failure is checked for its exit code and a hint that names ``--from-node``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result

from phala_kms.cli import ExitCode, cli
from phala_kms.testing import FakeKMSServer, NonJSONFault, RedirectFault, StatusFault

APP_ID = "0123456789abcdef0123456789abcdef01234567"
NODE = "kms-base-prod7"  # one of the fake's Base KMS nodes


@pytest.fixture(autouse=True)
def _no_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)


def invoke(server: FakeKMSServer, *args: str) -> Result:
    env = {"PHALA_CLOUD_API_PREFIX": server.base_url, "PHALA_CLOUD_API_KEY": server.api_key}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def hint(result: Result) -> str:
    return next(line for line in result.stderr.splitlines() if line.startswith("hint: "))


def node_requests(server: FakeKMSServer) -> list[Any]:
    return [r for r in server.requests if r.route in ("node_pubkey", "node_meta")]


def test_the_key_comes_from_the_node_and_is_verified(server: FakeKMSServer) -> None:
    url = server.node_url(NODE)
    root = server.k256_pubkey_for("base")
    result = invoke(
        server, "--json", "pubkey", "base", APP_ID, "--from-node", url,
        "--trusted-signer", root, "--require-timestamped",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["public_key"] == server.app_public_key("base", APP_ID).hex()
    assert data["key_source"] == f"node: POST {url}/prpc/GetAppEnvEncryptPubKey?json"
    assert data["verified"] is True
    assert data["verification"]["scheme"] == "signature_v1"
    assert data["verification"]["signer"] == root
    assert isinstance(data["verification"]["timestamp"], int)
    assert server.route_counts.get("app_pubkey", 0) == 0  # the API never served the key
    (sent,) = node_requests(server)
    assert sent.route == "node_pubkey" and sent.method == "POST"
    assert "X-API-Key" not in sent.headers  # the API key stays with the API

    table = invoke(server, "pubkey", "base", APP_ID, "--from-node", url, "--trusted-signer", root)
    assert table.exit_code == 0, table.output
    assert f"node: POST {url}/prpc/GetAppEnvEncryptPubKey?json" in table.stdout
    assert "signature_v1, signed at" in table.stdout


def test_with_the_api_down_a_pinned_signer_and_a_node_suffice(server: FakeKMSServer) -> None:
    """The Cloud API down (every API request 503): the pinned root key and the node's key
    are all it takes, and the API is not asked anything."""
    server.outage = True
    result = invoke(
        server, "--json", "pubkey", "base", APP_ID, "--from-node", server.node_url(NODE),
        "--trusted-signer", server.k256_pubkey_for("base"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["public_key"] == server.app_public_key("base", APP_ID).hex()
    assert server.outage_count == 0


def test_a_node_and_a_pinned_signer_need_no_api_key(
    server: FakeKMSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PHALA_CLOUD_API_KEY", raising=False)
    env = {"PHALA_CLOUD_API_PREFIX": server.base_url}
    args = ["--json", "pubkey", "base", APP_ID, "--from-node", server.node_url(NODE)]
    pinned = ["--trusted-signer", server.k256_pubkey_for("base")]
    result = CliRunner().invoke(cli, args + pinned, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["public_key"] == server.app_public_key("base", APP_ID).hex()
    assert len(node_requests(server)) == server.total_requests == 1  # the API was not asked
    # an anchor that asks the API still needs the key: refused with the usual hint,
    # before anything is sent
    asks_api = CliRunner().invoke(cli, [*args, "--trust-api"], env=env, catch_exceptions=False)
    assert asks_api.exit_code == ExitCode.AUTH, asks_api.output
    assert "PHALA_CLOUD_API_KEY" in hint(asks_api)
    assert server.total_requests == 1


def test_the_node_anchor_and_the_node_key_together(server: FakeKMSServer) -> None:
    url = server.node_url(NODE)
    result = invoke(
        server, "--json", "pubkey", "base", APP_ID, "--from-node", url,
        "--anchor", "node", "--anchor", "api",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [anchor["source"] for anchor in data["anchors"]] == ["api", "node", "node", "node"]
    assert data["trusted_signer"] == server.k256_pubkey_for("base")
    assert server.route_counts.get("app_pubkey", 0) == 0


def test_a_node_of_another_kms_exits_6(server: FakeKMSServer) -> None:
    """The Ethereum KMS's node signs with another root key than Base's pinned one."""
    result = invoke(
        server, "pubkey", "base", APP_ID, "--from-node", server.node_url("ethereum"),
        "--trusted-signer", server.k256_pubkey_for("base"),
    )  # fmt: skip
    assert result.exit_code == ExitCode.VERIFICATION
    assert "SignatureVerificationError" in result.stderr
    assert "not proven to come from the trusted KMS" in hint(result)
    assert result.stdout == ""


def test_an_unreachable_node_exits_5(server: FakeKMSServer, closed_port: int) -> None:
    result = invoke(
        server, "--json", "pubkey", "base", APP_ID, "--from-node",
        f"http://127.0.0.1:{closed_port}", "--trusted-signer", server.k256_pubkey_for("base"),
    )  # fmt: skip
    assert result.exit_code == ExitCode.NETWORK
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "ConnectRefusedError"
    assert error["exit_code"] == ExitCode.NETWORK
    assert "the KMS node did not answer: check the --from-node URL" in error["hint"]
    assert "--base-url" not in error["hint"]  # not the API's problem


@pytest.mark.parametrize(
    ("fault", "kind", "code"),
    [
        (NonJSONFault("<html>gateway</html>"), "ResponseValidationError", ExitCode.API_ERROR),
        (
            StatusFault(200, body={"public_key": "zz", "signature": "00"}),
            "ResponseValidationError",
            ExitCode.API_ERROR,
        ),
        (StatusFault(200, body=[1, 2, 3]), "ResponseValidationError", ExitCode.API_ERROR),
        (RedirectFault(), "RedirectError", ExitCode.API_ERROR),
        (StatusFault(500), "ServerError", ExitCode.NETWORK),
    ],
)
def test_a_node_answering_garbage_fails_closed(
    server: FakeKMSServer, fault: Any, kind: str, code: ExitCode
) -> None:
    server.inject("/node/*", fault, times=None)
    result = invoke(
        server, "--json", "--max-retries", "0", "pubkey", "base", APP_ID,
        "--from-node", server.node_url(NODE), "--trusted-signer", server.k256_pubkey_for("base"),
    )  # fmt: skip
    assert result.exit_code == code, result.output
    error = json.loads(result.stdout)["error"]
    assert error["type"] == kind
    assert "--from-node" in error["hint"]
    assert "public_key" not in json.loads(result.stdout)


def test_a_node_that_does_not_exist_exits_4(server: FakeKMSServer) -> None:
    result = invoke(
        server, "pubkey", "base", APP_ID, "--from-node", server.url + "/node/kms-nowhere",
        "--trusted-signer", server.k256_pubkey_for("base"),
    )  # fmt: skip
    assert result.exit_code == ExitCode.NOT_FOUND
    assert "not an app key: check that --from-node is the node's base URL" in hint(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--from-node", "http://127.0.0.1:1"), "--from-node needs a signer"),
        (
            ("--from-node", "http://kms.example.com", "--trusted-signer", "0x" + "02" * 33),
            "hint: check --from-node",
        ),
        (
            ("--from-node", "https://kms.example.com/?q=1", "--trusted-signer", "0x" + "02" * 33),
            "hint: check --from-node",
        ),
    ],
)
def test_bad_from_node_usage_exits_2_before_any_request(
    server: FakeKMSServer, args: tuple[str, ...], message: str
) -> None:
    result = invoke(server, "pubkey", "base", APP_ID, *args)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert message in result.stderr
    assert server.total_requests == 0


def test_ca_file_is_used_by_from_node(server: FakeKMSServer, tmp_path: Any) -> None:
    """--ca-file is the node's TLS trust with --from-node, so it is not refused as unused
    (plain http to loopback does not use it; the SDK's own tests cover TLS to a node)."""
    import trustme

    pem = tmp_path / "kms-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(pem))
    root = server.k256_pubkey_for("base")
    args = ("pubkey", "base", APP_ID, "--trusted-signer", root, "--ca-file", str(pem))
    unused = invoke(server, *args)
    assert unused.exit_code == ExitCode.USAGE
    assert "--ca-file is used by" in unused.stderr
    used = invoke(server, *args, "--from-node", server.node_url(NODE))
    assert used.exit_code == 0, used.output
