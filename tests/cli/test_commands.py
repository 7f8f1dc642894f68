"""The ``phala-kms`` command, end to end through click's CliRunner against the fake API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from phala_kms import __version__
from phala_kms.cli import EXIT_CODES, ExitCode, cli, read_env_file
from phala_kms.cli._envfile import InputFileError
from phala_kms.testing import FakeKMSServer, StatusFault, decrypt_env_vars

APP_ID = "0123456789abcdef0123456789abcdef01234567"
OTHER_APP_ID = "0x" + "ab" * 20
WRONG_KEY = "phak_wrong_5ecret_KEY_do_not_print_4242"
NODE_FIELDS = {
    "id",
    "url",
    "version",
    "slug",
    "chain_id",
    "kms_contract_address",
    "gateway_app_id",
    "k256_pubkey",
    "extra",
}

# A .env with every syntax python-dotenv handles; values are distinctive so a leak is visible.
ENV_FILE_TEXT = """\
# database settings
export DATABASE_URL="postgres://user:pw-S3CRET-dq@db:5432/app"  # trailing comment
API_TOKEN='tok-S3CRET-sq $NOT_EXPANDED'
PLAIN=plain-S3CRET-value
EMPTY=
SPACED = spaced-S3CRET-value
MULTI="line1-S3CRET
line2-S3CRET"
"""
ENV_EXPECTED = {
    "DATABASE_URL": "postgres://user:pw-S3CRET-dq@db:5432/app",
    "API_TOKEN": "tok-S3CRET-sq $NOT_EXPANDED",
    "PLAIN": "plain-S3CRET-value",
    "EMPTY": "",
    "SPACED": "spaced-S3CRET-value",
    "MULTI": "line1-S3CRET\nline2-S3CRET",
}
SECRET_MARKER = "S3CRET"


@pytest.fixture(autouse=True)
def _no_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables are laid out for rich's default width, not the developer's terminal."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / "app.env"
    path.write_text(ENV_FILE_TEXT, encoding="utf-8")
    return path


def invoke(
    server: FakeKMSServer | None,
    *args: str,
    api_key: str | None = None,
    base_url: str | None = None,
    stdin: str | None = None,
) -> Result:
    """Run ``phala-kms`` with the fake's URL and key in the environment, as users would."""
    env: dict[str, str | None] = {}
    if server is not None:
        env["PHALA_CLOUD_API_PREFIX"] = base_url or server.base_url
        env["PHALA_CLOUD_API_KEY"] = api_key or server.api_key
    return CliRunner().invoke(cli, list(args), env=env, input=stdin, catch_exceptions=False)


def run_json(server: FakeKMSServer, *args: str) -> Any:
    result = invoke(server, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def as_served(item: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON model dict back in the API's shape: ``extra`` merged, absent nulls dropped."""
    merged = {k: v for k, v in item.items() if k != "extra"}
    merged.update(item["extra"])
    return merged


def same_as_served(item: Mapping[str, Any], served: Mapping[str, Any]) -> bool:
    merged = as_served(item)
    return all(merged.get(key) == value for key, value in served.items()) and all(
        value is None for key, value in merged.items() if key not in served
    )


# --------------------------------------------------------------------------- help, version


def test_help_lists_commands_and_exit_codes() -> None:
    result = invoke(None, "--help")
    assert result.exit_code == 0
    for command in (
        "list",
        "info",
        "pubkey",
        "pubkeys",
        "onchain",
        "next-app-ids",
        "encrypt-env",
        "contracts",
        "fake-server",
        "demo",
    ):
        assert command in result.stdout
    assert "PHALA_CLOUD_API_KEY" in result.stdout
    for code, text in EXIT_CODES.items():
        assert f"{int(code):<3}  {text}" in result.stdout


def test_exit_code_constants() -> None:
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 4, 5, 6, 130]
    assert set(EXIT_CODES) == set(ExitCode)


def test_version() -> None:
    result = invoke(None, "--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"phala-kms {__version__}"


def test_help_is_lazy() -> None:
    """``--help`` imports neither rich nor aiohttp."""
    code = (
        "import sys; from phala_kms.cli import cli\n"
        "try:\n    cli(['--help'], prog_name='phala-kms')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('rich', 'aiohttp', 'coincurve') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------- list / info


def test_list_json_first_page(server: FakeKMSServer) -> None:
    data = run_json(server, "list")
    assert list(data) == ["items", "total", "page", "page_size", "pages", "extra"]
    assert (data["total"], data["page"], data["page_size"], data["pages"]) == (50, 1, 20, 3)
    assert len(data["items"]) == 20
    for item, node in zip(data["items"], server.nodes[:20], strict=True):
        assert set(item) == NODE_FIELDS
        assert same_as_served(item, node)
    assert any(item["extra"] for item in data["items"])  # unknown fields ("region") kept


def test_list_json_all_pages_and_local_json_flag(server: FakeKMSServer) -> None:
    result = invoke(server, "list", "--all", "--page-size", "7", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [item["id"] for item in data["items"]] == [node["id"] for node in server.nodes]
    assert data["total"] == len(server.nodes)


@pytest.mark.parametrize(("flag", "onchain"), [("--onchain", True), ("--offchain", False)])
def test_list_filters(server: FakeKMSServer, flag: str, onchain: bool) -> None:
    data = run_json(server, "list", "--all", flag)
    expected = [n["id"] for n in server.nodes if (n["chain_id"] is not None) == onchain]
    assert [item["id"] for item in data["items"]] == expected


def test_list_page_and_table(server: FakeKMSServer) -> None:
    result = invoke(server, "list", "--page", "1", "--page-size", "10")
    assert result.exit_code == 0, result.output
    assert "page 1 of 5" in result.stdout
    assert "kms-base-prod7" in result.stdout
    assert server.nodes[0]["id"] in result.stdout
    assert "\x1b[" not in result.stdout  # no colours when not a terminal


def test_info(server: FakeKMSServer) -> None:
    node = server.nodes[2]
    data = run_json(server, "info", node["id"])
    assert set(data) == NODE_FIELDS
    assert same_as_served(data, node)
    human = invoke(server, "info", "kms-base-prod7")
    assert human.exit_code == 0
    assert server.k256_pubkey_for("base") in human.stdout  # whole, copyable


def test_info_shows_unknown_fields(server: FakeKMSServer) -> None:
    node = next(n for n in server.nodes if "region" in n)
    result = invoke(server, "info", node["id"])
    assert "region (extra)" in result.stdout
    assert node["region"] in result.stdout


def test_contracts(server: FakeKMSServer) -> None:
    data = run_json(server, "contracts", "--all")
    assert [as_served(item) for item in data["items"]] == server.contracts
    page = run_json(server, "contracts", "--onchain")
    assert {item["slug"] for item in page["items"]} == {"base", "ethereum"}
    human = invoke(server, "contracts")
    assert human.exit_code == 0
    assert "Base KMS" in human.stdout
    assert "off-chain" in human.stdout


def test_onchain(server: FakeKMSServer) -> None:
    data = run_json(server, "onchain", "base")
    assert (data["chain_name"], data["chain_id"]) == ("base", 8453)
    contract = data["contracts"][0]
    assert contract["k256_pubkey"] == server.k256_pubkey_for("base")
    assert [d["on_chain_allowed"] for d in contract["devices"]] == [True, None, False]
    human = invoke(server, "onchain", "ethereum")
    assert human.exit_code == 0
    assert server.k256_pubkey_for("ethereum") in human.stdout
    assert "eth-prod1" in human.stdout


def test_next_app_ids(server: FakeKMSServer) -> None:
    data = run_json(server, "next-app-ids", "--counts", "3")
    nonces = [item["nonce"] for item in data["app_ids"]]
    assert nonces == list(range(nonces[0], nonces[0] + 3))
    for item in data["app_ids"]:
        assert item["app_id"] == server.app_id_for_nonce(item["nonce"])
    # a prediction, not a reservation: reading it again predicts the same ids
    assert run_json(server, "next-app-ids", "--counts", "3") == data
    human = invoke(server, "next-app-ids")
    assert human.exit_code == 0
    assert data["app_ids"][0]["app_id"] in human.stdout
    # once an app is deployed, the prediction moves on by one
    assert server.deploy_app() == data["app_ids"][0]["app_id"]
    moved = run_json(server, "next-app-ids", "--counts", "3")
    assert moved["app_ids"][:2] == data["app_ids"][1:]
    assert moved["app_ids"][0]["nonce"] == nonces[0] + 1


# --------------------------------------------------------------------------- pubkey(s)


def test_pubkey_unverified(server: FakeKMSServer) -> None:
    data = run_json(server, "pubkey", "phala", APP_ID)
    assert data["public_key"] == server.app_public_key("phala", APP_ID).hex()
    assert data["verified"] is False
    assert data["trusted_signer"] is None
    human = invoke(server, "pubkey", "phala", APP_ID)
    assert "NO (pass --trusted-signer" in human.stdout


def test_pubkey_pinned_signer(server: FakeKMSServer) -> None:
    signer = server.k256_pubkey_for("base")
    data = run_json(server, "pubkey", "base", "0x" + APP_ID.upper(), "--trusted-signer", signer)
    assert data["verified"] is True
    assert data["app_id"] == APP_ID
    assert data["trusted_signer"] == signer
    assert data["trusted_signer_source"] == "pinned: the caller's k256_pubkey"
    assert data["anchors"] == [{"source": "pinned", "detail": data["trusted_signer_source"]}]
    assert data["public_key"] == server.app_public_key("base", APP_ID).hex()
    # the fake signs only the legacy form by default: said, with no timestamp claimed
    assert data["verification"] == {"scheme": "signature", "signer": signer, "timestamp": None}


@pytest.mark.parametrize(
    ("kms", "contract"),
    [("phala", "phala"), ("kms-base-prod7", "base"), ("kms-base-prod9", "base")],
)
def test_pubkey_trust_api_warns(server: FakeKMSServer, kms: str, contract: str) -> None:
    """--trust-api takes k256_pubkey from the contract view, else the node, else the node's
    contract (kms-base-prod9's node view omits it), and always says what it trusts."""
    result = invoke(server, "--json", "pubkey", kms, APP_ID, "--verify", "--trust-api")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["verified"] is True
    assert data["trusted_signer"].lower() == server.k256_pubkey_for(contract)
    assert data["trusted_signer_source"].startswith("api: GET /kms")
    assert "warning: --trust-api" in result.stderr
    assert "not against the API itself" in result.stderr


def test_pubkey_verify_needs_a_signer(server: FakeKMSServer) -> None:
    result = invoke(server, "pubkey", "phala", APP_ID, "--verify")
    assert result.exit_code == ExitCode.USAGE
    assert "--trusted-signer" in result.stderr
    # a pinned key and the API are two anchors: they must agree
    both = invoke(
        server, "pubkey", "phala", APP_ID, "--trust-api", "--trusted-signer", server.k256_pubkey
    )
    assert both.exit_code == 0, both.output
    assert "warning: --trust-api" not in both.stderr  # not the API alone
    other = server.k256_pubkey_for("base")
    disagree = invoke(server, "pubkey", "phala", APP_ID, "--trust-api", "--trusted-signer", other)
    assert disagree.exit_code == ExitCode.VERIFICATION
    assert "anchor_mismatch" in disagree.stderr or "disagree" in disagree.stderr


def test_pubkeys_fan_out(server: FakeKMSServer) -> None:
    ids = [f"{i:040x}" for i in range(1, 41)]
    data = run_json(
        server,
        "pubkeys",
        "ethereum",
        *ids,
        "--concurrency",
        "8",
        "--trusted-signer",
        server.k256_pubkey_for("ethereum"),
    )
    assert (data["total"], data["failed"], data["verified"]) == (40, 0, True)
    for app_id, row in zip(ids, data["results"], strict=True):
        assert row["ok"] is True
        assert row["app_id"] == app_id
        assert row["key"]["public_key"] == server.app_public_key("ethereum", app_id).hex()


def test_pubkeys_from_file(server: FakeKMSServer, tmp_path: Path) -> None:
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"# app ids\n{APP_ID}\n\n{OTHER_APP_ID}   # second\n")
    data = run_json(server, "pubkeys", "phala", "--from-file", str(ids_file))
    assert [row["app_id"] for row in data["results"]] == [APP_ID, OTHER_APP_ID]
    assert all(row["ok"] for row in data["results"])


def test_pubkeys_from_file_with_a_bad_line(server: FakeKMSServer, tmp_path: Path) -> None:
    """A line of the file that is not an app id stops the command before any request,
    named by its number, not its text (it may be a pasted secret)."""
    server.reset()
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"# app ids\n{APP_ID}\n\n{OTHER_APP_ID}   # second\nghp_S3CRET\n")
    result = invoke(server, "--json", "pubkeys", "phala", "--from-file", str(ids_file))
    assert result.exit_code == ExitCode.USAGE
    assert f"{ids_file}, line 5: not an app id" in result.stderr
    assert SECRET_MARKER not in result.output
    assert json.loads(result.stdout)["error"]["exit_code"] == ExitCode.USAGE
    assert server.total_requests == 0


def test_pubkeys_bad_id_argument_gets_its_row(server: FakeKMSServer) -> None:
    result = invoke(server, "--json", "pubkeys", "phala", APP_ID, OTHER_APP_ID, "not-hex")
    assert result.exit_code == ExitCode.USAGE
    data = json.loads(result.stdout)  # one document: the results, not an error object too
    assert [row["ok"] for row in data["results"]] == [True, True, False]
    error = data["results"][2]["error"]
    assert error["type"] == "InvalidArgumentError"
    assert error["exit_code"] == ExitCode.USAGE
    assert set(error) == {
        "type",
        "message",
        "status",
        "error_code",
        "request_id",
        "exit_code",
        "hint",
    }
    assert "1 of 3 app ids failed" in result.stderr


def test_pubkeys_stdin_table(server: FakeKMSServer) -> None:
    result = invoke(server, "pubkeys", "phala", "--from-file", "-", stdin=f"{APP_ID}\n")
    assert result.exit_code == 0, result.output
    assert server.app_public_key("phala", APP_ID).hex() in result.stdout
    assert "1 of 1 keys, NOT verified" in result.stdout


def test_encrypt_env_refuses_a_file_it_cannot_fully_parse(
    server: FakeKMSServer, tmp_path: Path
) -> None:
    server.reset()
    path = tmp_path / ".env"
    path.write_text('GOOD=value-S3CRET\nBROKEN LINE "unterminated\nLATE=also-S3CRET\n')
    result = invoke(
        server,
        "encrypt-env",
        "phala",
        APP_ID,
        "--env-file",
        str(path),
        "--trusted-signer",
        server.k256_pubkey,
    )
    assert result.exit_code == ExitCode.USAGE
    assert "line 2" in result.stderr
    assert result.stdout == ""  # nothing was encrypted
    assert SECRET_MARKER not in result.output
    assert server.total_requests == 0


@pytest.mark.parametrize("signer", ["0x1234", "not-hex"])
def test_a_malformed_trusted_signer_is_a_usage_error(server: FakeKMSServer, signer: str) -> None:
    server.reset()
    result = invoke(server, "pubkey", "phala", APP_ID, "--verify", "--trusted-signer", signer)
    assert result.exit_code == ExitCode.USAGE
    assert "k256_pubkey" in result.stderr
    assert server.total_requests == 0


def test_not_found_on_a_base_url_without_the_prefix_hints_at_it(server: FakeKMSServer) -> None:
    result = invoke(server, "list", base_url=server.url)  # no /api/v1
    assert result.exit_code == ExitCode.NOT_FOUND
    assert "/api/v1" in result.stderr


def test_pubkeys_wrong_signer_is_a_verification_failure(server: FakeKMSServer) -> None:
    result = invoke(
        server, "pubkeys", "base", APP_ID, OTHER_APP_ID, "--trusted-signer", server.k256_pubkey
    )
    assert result.exit_code == ExitCode.VERIFICATION
    assert "SignatureVerificationError" in result.stdout


@pytest.mark.parametrize(
    "args",
    [("pubkeys", "phala"), ("pubkeys", "phala", APP_ID, "--from-file", "-")],
)
def test_pubkeys_usage(server: FakeKMSServer, args: tuple[str, ...]) -> None:
    assert invoke(server, *args, stdin=APP_ID).exit_code == ExitCode.USAGE


# --------------------------------------------------------------------------- encrypt-env


def test_read_env_file_syntax(env_file: Path) -> None:
    assert read_env_file(str(env_file)) == ENV_EXPECTED


def test_read_env_file_interpolation(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text('A=one\nB="${A}-two"\n')
    assert read_env_file(str(path)) == {"A": "one", "B": "${A}-two"}
    assert read_env_file(str(path), interpolate=True) == {"A": "one", "B": "one-two"}


def test_read_env_file_rejects_a_bare_name(tmp_path: Path) -> None:
    """A name without '=' may be a secret pasted on its own line: named by its line."""
    path = tmp_path / ".env"
    path.write_text("GOOD=value-S3CRET\nghp_BARE_S3CRET\n")
    with pytest.raises(InputFileError, match="line 2: a name without '='") as info:
        read_env_file(str(path))
    assert SECRET_MARKER not in str(info.value)


def test_encrypt_env_round_trip(server: FakeKMSServer, env_file: Path) -> None:
    result = invoke(
        server,
        "encrypt-env",
        "base",
        APP_ID,
        "--env-file",
        str(env_file),
        "--trusted-signer",
        server.k256_pubkey_for("base"),
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1  # only the hex
    opened = decrypt_env_vars(lines[0], server.app_private_key("base", APP_ID))
    assert {item.key: item.value for item in opened} == ENV_EXPECTED
    assert [item.key for item in opened] == list(ENV_EXPECTED)
    assert "encrypted 6 variable(s)" in result.stderr
    assert SECRET_MARKER not in result.stdout + result.stderr


def test_encrypt_env_json_and_stdin(server: FakeKMSServer) -> None:
    result = invoke(
        server,
        "--json",
        "encrypt-env",
        "phala",
        APP_ID,
        "--env-file",
        "-",
        "--trust-api",
        stdin=ENV_FILE_TEXT,
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["env_keys"] == list(ENV_EXPECTED)
    assert data["verified"] is True
    opened = decrypt_env_vars(data["encrypted_env"], server.app_private_key("phala", APP_ID))
    assert {item.key: item.value for item in opened} == ENV_EXPECTED
    assert SECRET_MARKER not in result.stdout + result.stderr


def test_encrypt_env_no_verify_warns(server: FakeKMSServer, env_file: Path) -> None:
    result = invoke(
        server, "encrypt-env", "phala", APP_ID, "--env-file", str(env_file), "--no-verify"
    )
    assert result.exit_code == 0, result.output
    assert "warning: --no-verify" in result.stderr
    assert "key NOT verified" in result.stderr


@pytest.mark.parametrize(
    "trust",
    [(), ("--no-verify", "--trust-api"), ("--trusted-signer", "0x02", "--no-verify")],
)
def test_encrypt_env_needs_one_trust_choice(
    server: FakeKMSServer, env_file: Path, trust: tuple[str, ...]
) -> None:
    before = server.total_requests
    result = invoke(server, "encrypt-env", "phala", APP_ID, "--env-file", str(env_file), *trust)
    assert result.exit_code == ExitCode.USAGE
    assert "exactly one of" in result.stderr
    assert server.total_requests == before


def test_encrypt_env_bad_name_fails_before_any_request(
    server: FakeKMSServer, tmp_path: Path
) -> None:
    path = tmp_path / ".env"
    path.write_text("1BAD=value-S3CRET\n")
    before = server.total_requests
    result = invoke(server, "encrypt-env", "phala", APP_ID, "--env-file", str(path), "--no-verify")
    assert result.exit_code == ExitCode.USAGE
    assert "1BAD" in result.stderr
    assert SECRET_MARKER not in result.stdout + result.stderr
    assert server.total_requests == before


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    "args",
    [
        ("no-such-command",),
        ("next-app-ids", "--counts", "21"),
        ("list", "--page-size", "0"),
        ("--timeout", "0", "list"),
        ("pubkey", "phala", "not-an-app-id"),
        ("info",),
    ],
)
def test_usage_errors_exit_2(server: FakeKMSServer, args: tuple[str, ...]) -> None:
    result = invoke(server, *args)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert result.stdout == ""


def test_insecure_base_url_is_a_usage_error(server: FakeKMSServer) -> None:
    result = invoke(server, "list", base_url="http://example.com/api/v1")
    assert result.exit_code == ExitCode.USAGE
    assert "refusing plain http://" in result.stderr


def test_wrong_key_exits_3(server: FakeKMSServer) -> None:
    result = invoke(server, "list", api_key=WRONG_KEY)
    assert result.exit_code == ExitCode.AUTH
    assert "PermissionDeniedError" in result.stderr
    assert "hint: check PHALA_CLOUD_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_key_exits_3() -> None:
    result = invoke(None, "list")
    assert result.exit_code == ExitCode.AUTH
    assert "no API key configured" in result.stderr
    assert "PHALA_CLOUD_API_KEY" in result.stderr


def test_not_found_exits_4(server: FakeKMSServer) -> None:
    result = invoke(server, "--json", "info", "kms_doesNotExist")
    assert result.exit_code == ExitCode.NOT_FOUND
    assert json.loads(result.stdout)["error"]["type"] == "NotFoundError"
    assert "NotFoundError" in result.stderr
    assert "ERR-02-011" in result.stderr
    assert "request_id=req_fake" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # one message, one hint


def test_closed_port_exits_5(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/api/v1"
    options = ("--api-key", WRONG_KEY, "--base-url", url, "--timeout", "2", "--max-retries", "0")
    result = invoke(None, *options, "list")
    assert result.exit_code == ExitCode.NETWORK
    assert "ConnectRefusedError" in result.stderr
    assert "Traceback" not in result.stderr
    assert WRONG_KEY not in result.output


def test_5xx_after_retries_exits_5_and_verbose_logs_retries(server: FakeKMSServer) -> None:
    server.inject("kms_info", StatusFault(503), times=None)
    result = invoke(server, "-v", "--max-retries", "1", "info", "phala")
    assert result.exit_code == ExitCode.NETWORK
    assert "ServerError" in result.stderr
    assert "after 2 attempt(s)" in result.stderr
    assert "phala_kms: retrying GET" in result.stderr


def test_verbose_retry_then_success(server: FakeKMSServer) -> None:
    server.inject("kms_info", StatusFault(503), times=1)
    result = invoke(server, "--verbose", "--json", "info", "phala")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["slug"] == "phala"
    assert result.stderr.count("retrying GET") == 1


def test_wrong_trusted_signer_exits_6(server: FakeKMSServer) -> None:
    result = invoke(
        server, "pubkey", "base", APP_ID, "--trusted-signer", server.k256_pubkey_for("ethereum")
    )
    assert result.exit_code == ExitCode.VERIFICATION
    assert "SignatureVerificationError" in result.stderr
    assert "do not encrypt to this key" in result.stderr
    assert result.stdout == ""


def test_other_api_errors_exit_1(server: FakeKMSServer) -> None:
    result = invoke(server, "onchain", "solana")
    assert result.exit_code == ExitCode.API_ERROR
    assert "BadRequestError" in result.stderr
    assert "Unsupported chain" in result.stderr


# --------------------------------------------------------------------------- secrets


def _encrypt_args(env_file: Path, *extra: str) -> list[str]:
    return ["encrypt-env", "base", APP_ID, "--env-file", str(env_file), *extra]


def test_secrets_never_printed(server: FakeKMSServer, env_file: Path, closed_port: int) -> None:
    """Across failing scenarios, neither the API key nor any env value reaches stdout or stderr."""
    signer = server.k256_pubkey_for("base")
    closed = f"http://127.0.0.1:{closed_port}/api/v1"
    scenarios: list[tuple[list[str], str, int]] = [
        (["-v", *_encrypt_args(env_file, "--trusted-signer", signer)], WRONG_KEY, ExitCode.AUTH),
        (
            [
                *("-v", "--base-url", closed, "--max-retries", "1", "--timeout", "2"),
                *_encrypt_args(env_file, "--trust-api"),
            ],
            server.api_key,
            ExitCode.NETWORK,
        ),
        (_encrypt_args(env_file, "--trusted-signer", server.k256_pubkey), server.api_key, 6),
        (
            ["encrypt-env", "nope", APP_ID, "--env-file", str(env_file), "--trust-api"],
            server.api_key,
            ExitCode.NOT_FOUND,
        ),
        (["--json", "info", "kms_missing"], server.api_key, ExitCode.NOT_FOUND),
        (["list"], WRONG_KEY, ExitCode.AUTH),
    ]
    for args, key, code in scenarios:
        result = CliRunner().invoke(
            cli, ["--api-key", key, *args], env={"PHALA_CLOUD_API_PREFIX": server.base_url}
        )
        assert result.exit_code == code, (args, result.output)
        output = result.stdout + result.stderr
        assert key not in output, args
        assert SECRET_MARKER not in output, args
        assert "Traceback" not in output, args


def test_unexpected_errors_show_a_redacted_traceback(
    server: FakeKMSServer, env_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phala_kms.sync import KMSClient

    def explode(self: KMSClient, *args: Any, **kwargs: Any) -> str:
        raise RuntimeError(
            f"bug holding {server.api_key} and {ENV_EXPECTED['PLAIN']} and {ENV_EXPECTED['MULTI']}"
        )

    monkeypatch.setattr(KMSClient, "get_verified_app_env_encrypt_pubkey", explode)
    result = invoke(
        server, *_encrypt_args(env_file, "--trusted-signer", server.k256_pubkey_for("base"))
    )
    assert result.exit_code == ExitCode.API_ERROR
    assert "Traceback" in result.stderr
    assert "RuntimeError: bug holding *** and *** and ***" in result.stderr
    assert server.api_key not in result.output
    assert SECRET_MARKER not in result.output
    assert "unexpected internal error" in result.stderr


# --------------------------------------------------------------------------- fake-server


def test_fake_server_port_in_use_exits_2() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = invoke(None, "fake-server", "--port", str(port))
    assert result.exit_code == ExitCode.USAGE
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
