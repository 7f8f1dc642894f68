"""Issue 13, "the command line and first contact": every failure a user can cause ends
with a one-line message, a hint and a documented exit code, never a traceback.

Bad bytes in input files, the ``[cli]`` extra missing, Ctrl-C and SIGTERM, ``--json``
failures, a closed stdout, hostile text from the server (on a real pseudo-terminal
too), secrets in unparsable lines, the docs a newcomer reads first, and the demo's
final hint. Signals, pipes and the entry point run as real processes, each killed in
``finally`` and waited for with a bounded timeout.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import io
import json
import os
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import phala_kms
from phala_kms._constants import DEFAULT_CONCURRENCY
from phala_kms.cli import EXIT_CODES, ExitCode, cli
from phala_kms.cli._output import JSON_MAX_DEPTH, inert, to_jsonable
from phala_kms.testing import FakeKMSServer, LatencyFault, StatusFault, decrypt_env_vars

ROOT = Path(__file__).resolve().parents[2]
APP_ID = "0123456789abcdef0123456789abcdef01234567"
SECRET = "ghp_S3CRET_do_not_echo_0123456789"
ERROR_KEYS = {"type", "message", "status", "error_code", "request_id", "exit_code", "hint"}
# What a hostile server sends: an OSC 52 clipboard write, clear-screen (7-bit and C1
# CSI), a bell, a bidi override.
HOSTILE = "pwned \x1b]52;c;cm0gLXJmIH4=\x07 \x1b[2J \x9b2J \u202eevil"
HOSTILE_SHOWN = "pwned \\x1b]52;c;cm0gLXJmIH4=\\x07 \\x1b[2J \\x9b2J \\u202eevil"
TIMEOUT = 30


# --------------------------------------------------------------------------- helpers


def invoke(server: FakeKMSServer | None, *args: str, stdin: str | bytes | None = None) -> Result:
    env: dict[str, str | None] = {"COLUMNS": None}
    if server is not None:
        env.update(PHALA_CLOUD_API_PREFIX=server.base_url, PHALA_CLOUD_API_KEY=server.api_key)
    return CliRunner().invoke(cli, list(args), env=env, input=stdin, catch_exceptions=False)


def child_env(server: FakeKMSServer | None = None) -> dict[str, str]:
    """The environment of a child ``phala-kms``: no developer settings, the fake's."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PHALA_CLOUD_") and k != "COLUMNS"
    }
    if server is not None:
        env["PHALA_CLOUD_API_PREFIX"] = server.base_url
        env["PHALA_CLOUD_API_KEY"] = server.api_key
    return env


def phala_kms_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "phala_kms.cli", *args]


@contextlib.contextmanager
def child(cmd: list[str], **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """A child process, killed (and reaped) in ``finally`` whatever the test did."""
    proc = subprocess.Popen(cmd, text=True, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError, OSError):
            proc.communicate(timeout=TIMEOUT)


class LineReader:
    """Reads a child's stdout lines in a thread, so a test waits with a deadline."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line)

    def until(self, predicate: Callable[[str], bool], timeout: float = TIMEOUT) -> str:
        give_up = time.monotonic() + timeout
        while (left := give_up - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no such line within {timeout} s; got {self.seen!r}")

    def rest(self) -> str:
        self._thread.join(TIMEOUT)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)


def assert_clean_failure(stderr: str, code: int, returncode: int) -> None:
    """One ``error:`` line (plus a ``hint:``), the expected code, and no traceback."""
    assert returncode == code, stderr
    assert "Traceback" not in stderr
    assert "unexpected internal error" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr


# --------------------------------------------------------------------------- 1. bad bytes


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"A=caf\xe9\n", "line 1: not UTF-8 text"),
        (b"A=1\n# caf\xc3\xa9 is fine\nB=\xff\n", "line 3: not UTF-8 text"),
        ("A=1\n".encode("utf-16"), "is UTF-16 text"),
    ],
)
def test_an_env_file_that_is_not_utf8_is_a_usage_error(
    server: FakeKMSServer, tmp_path: Path, data: bytes, expected: str
) -> None:
    server.reset()
    path = tmp_path / "l.env"
    path.write_bytes(data)
    args = ("encrypt-env", "phala", APP_ID, "--env-file", str(path), "--trust-api")
    result = invoke(server, *args)
    assert_clean_failure(result.stderr, ExitCode.USAGE, result.exit_code)
    assert str(path) in result.stderr
    assert expected in result.stderr
    assert result.stdout == ""
    assert server.total_requests == 0
    # the same bytes through stdin: the same message, naming <stdin>
    piped = invoke(server, *args[:-2], "-", "--trust-api", stdin=data)
    assert piped.exit_code == ExitCode.USAGE
    assert f"<stdin>{', ' if 'line' in expected else ' '}{expected}" in piped.stderr


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xfe\n", "is UTF-16 text"),
        (f"{APP_ID}\n\xe9\n".encode("latin-1"), "line 2: not UTF-8 text"),
    ],
)
def test_a_from_file_that_is_not_utf8_is_a_usage_error(
    server: FakeKMSServer, tmp_path: Path, data: bytes, expected: str
) -> None:
    server.reset()
    path = tmp_path / "ids.txt"
    path.write_bytes(data)
    result = invoke(server, "pubkeys", "phala", "--from-file", str(path))
    assert_clean_failure(result.stderr, ExitCode.USAGE, result.exit_code)
    assert f"{path}{', ' if 'line' in expected else ' '}{expected}" in result.stderr
    assert server.total_requests == 0


def test_bad_bytes_as_a_real_process(server: FakeKMSServer, tmp_path: Path) -> None:
    """The issue's two commands, through the real entry point."""
    env_file = tmp_path / "l.env"
    env_file.write_bytes(b"A=caf\xe9\n")
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"\xff\xfe\n")
    for args in (
        ("encrypt-env", "phala", APP_ID, "--env-file", str(env_file), "--trust-api"),
        ("pubkeys", "phala", "--from-file", str(ids)),
    ):
        proc = subprocess.run(
            phala_kms_cmd(*args),
            capture_output=True,
            text=True,
            env=child_env(server),
            timeout=TIMEOUT,
            check=False,
        )
        assert_clean_failure(proc.stderr, ExitCode.USAGE, proc.returncode)
        assert "UTF-" in proc.stderr


# --------------------------------------------------------------------------- 2. the [cli] extra


def _entry_point() -> tuple[str, str]:
    """``phala-kms``'s entry point as pyproject.toml declares it: (module, function)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    scripts = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^phala-kms\s*=\s*"([\w.]+):(\w+)"', scripts, re.MULTILINE)
    assert match is not None, scripts
    return match.group(1), match.group(2)


@pytest.mark.parametrize(
    ("blocked", "named"),
    [
        (("click",), "click"),
        (("rich",), "rich"),
        (("dotenv",), "python-dotenv"),
        (("click", "rich", "dotenv"), "click, rich and python-dotenv"),
    ],
)
@pytest.mark.parametrize("how", ["entry point", "python -m"])
def test_without_the_cli_extra_the_command_says_what_to_install(
    blocked: tuple[str, ...], named: str, how: str
) -> None:
    """Run the console script's function (or ``-m``) with the modules made unimportable."""
    module, function = _entry_point()
    block = f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
    if how == "entry point":
        code = block + f"sys.argv[0] = 'phala-kms'\nfrom {module} import {function}\n{function}()"
    else:
        code = block + "import runpy\nrunpy.run_module('phala_kms.cli', run_name='__main__')"
    for args in (["list"], ["--json", "info", "phala"]):
        proc = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=TIMEOUT,
            check=False,
        )
        assert_clean_failure(proc.stderr, ExitCode.USAGE, proc.returncode)
        assert f"needs {named}, which" in proc.stderr
        assert "hint: install the [cli] extra: pip install 'phala-kms[cli]'" in proc.stderr
        assert "ModuleNotFoundError" not in proc.stderr
        if "--json" in args:
            error = json.loads(proc.stdout)["error"]
            assert set(error) == ERROR_KEYS
            assert error["exit_code"] == ExitCode.USAGE
        else:
            assert proc.stdout == ""


def test_importing_the_cli_package_does_not_import_click() -> None:
    code = "import sys, phala_kms.cli\nprint('click' in sys.modules, 'rich' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=TIMEOUT
    ).stdout
    assert out.split() == ["False", "False"]


# --------------------------------------------------------------------------- 3. interrupts


def test_ctrl_c_in_a_command_exits_130(
    server: FakeKMSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phala_kms.sync import KMSClient

    def interrupted(self: KMSClient, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(KMSClient, "get_kms_info", interrupted)
    result = invoke(server, "info", "phala")
    assert_clean_failure(result.stderr, ExitCode.INTERRUPTED, result.exit_code)
    assert "error: interrupted (Ctrl-C)" in result.stderr
    assert "Aborted" not in result.stderr
    assert result.stdout == ""
    as_json = invoke(server, "--json", "info", "phala")
    assert as_json.exit_code == ExitCode.INTERRUPTED
    error = json.loads(as_json.stdout)["error"]
    assert (error["type"], error["exit_code"]) == ("Interrupted", 130)


@pytest.mark.parametrize("command", [("info", "phala"), ("pubkeys", "phala", APP_ID)])
def test_sigint_to_a_real_process_exits_130(
    server: FakeKMSServer, wait_until: Callable[..., bool], command: tuple[str, ...]
) -> None:
    """A real SIGINT while a request hangs (sync client, and the asyncio fan-out).

    The child starts with SIGINT's default disposition, as from an interactive shell
    (a command started with SIGINT ignored keeps ignoring it, as it should)."""
    route = "kms_info" if command[0] == "info" else "app_pubkey"
    server.inject(route, LatencyFault(TIMEOUT), times=None)
    with child(
        _with_sigint(phala_kms_cmd(*command), "SIG_DFL"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(server),
    ) as proc:
        assert wait_until(lambda: server.route_counts.get(route, 0) >= 1, timeout=TIMEOUT)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    assert_clean_failure(err, ExitCode.INTERRUPTED, proc.returncode)
    assert "error: interrupted (Ctrl-C)" in err
    assert out == ""


def _with_sigint(cmd: list[str], disposition: str) -> list[str]:
    """``cmd`` started with SIGINT's disposition ``SIG_IGN`` (the way a script's
    background job starts) or ``SIG_DFL`` (an interactive shell's foreground job),
    whatever this test process inherited."""
    code = (
        "import os, signal, sys\n"
        f"signal.signal(signal.SIGINT, signal.{disposition})\n"
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", code, *cmd]


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("parent_ignores_sigint", [False, True])
def test_fake_server_stops_cleanly_on_signals(sig: str, parent_ignores_sigint: bool) -> None:
    cmd = _with_sigint(
        phala_kms_cmd("fake-server", "--port", "0"),
        "SIG_IGN" if parent_ignores_sigint else "SIG_DFL",
    )
    with child(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env()) as proc:
        lines = LineReader(proc.stdout)
        prefix = lines.until(lambda line: line.startswith("export PHALA_CLOUD_API_PREFIX="))
        key = lines.until(lambda line: line.startswith("export PHALA_CLOUD_API_KEY="))
        lines.until(lambda line: "to stop" in line)
        base_url = prefix.strip().split("=", 1)[1]
        request = urllib.request.Request(  # noqa: S310 - loopback
            base_url + "/kms", headers={"X-API-Key": key.strip().split("=", 1)[1]}
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            assert response.status == 200
        proc.send_signal(getattr(signal, sig))
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait(timeout=TIMEOUT)
        out = lines.rest()
    assert proc.returncode == 0, err
    assert f"Stopped ({sig}): the server is closed." in out
    assert "Traceback" not in err
    port = int(base_url.split(":")[2].split("/")[0])
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))  # closed, not merely abandoned


# --------------------------------------------------------------------------- 4. --json, pipes


def test_json_failures_write_an_error_object_on_stdout(server: FakeKMSServer) -> None:
    result = invoke(server, "--json", "info", "kms_doesNotExist")
    assert result.exit_code == ExitCode.NOT_FOUND
    error = json.loads(result.stdout)["error"]
    assert set(error) == ERROR_KEYS
    assert error["type"] == "NotFoundError"
    assert (error["status"], error["error_code"]) == (404, "ERR-02-011")
    assert error["request_id"].startswith("req_fake")
    assert error["exit_code"] == ExitCode.NOT_FOUND
    assert "list --all" in error["hint"]
    assert "error: NotFoundError" in result.stderr  # the human line is still there


@pytest.mark.parametrize(
    ("args", "kind", "code"),
    [
        (("--json", "next-app-ids", "--counts", "21"), "BadParameter", ExitCode.USAGE),
        (("next-app-ids", "--json", "--counts", "21"), "BadParameter", ExitCode.USAGE),
        (("--json", "--timeout", "0", "list"), "BadParameter", ExitCode.USAGE),
        (("--json", "no-such-command"), "NoSuchCommand", ExitCode.USAGE),
        (("--json", "--api-key", "", "list"), "NoAPIKey", ExitCode.AUTH),
        (("--json", "onchain", "solana"), "BadRequestError", ExitCode.API_ERROR),
    ],
)
def test_every_json_failure_is_one_json_document(
    server: FakeKMSServer, args: tuple[str, ...], kind: str, code: int
) -> None:
    env = {"PHALA_CLOUD_API_PREFIX": server.base_url}
    if "--api-key" not in args:
        env["PHALA_CLOUD_API_KEY"] = server.api_key
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == code, result.output
    error = json.loads(result.stdout)["error"]
    assert set(error) == ERROR_KEYS
    assert error["exit_code"] == code
    # click before 8.2 names a missing command a plain UsageError
    assert error["type"] in ({kind, "UsageError"} if kind == "NoSuchCommand" else {kind})
    assert "Traceback" not in result.stderr


def test_json_after_a_document_stays_one_document(server: FakeKMSServer) -> None:
    """pubkeys writes its results, then fails: stdout is still exactly one document."""
    result = invoke(server, "--json", "pubkeys", "phala", APP_ID, "not-hex")
    assert result.exit_code == ExitCode.USAGE
    data = json.loads(result.stdout)
    assert data["failed"] == 1
    assert "error: 1 of 2 app ids failed" in result.stderr


def _run_into_a_closed_pipe(args: tuple[str, ...], env: dict[str, str]) -> tuple[int, str]:
    """Run with stdout a pipe whose reader has already gone: every write is EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            phala_kms_cmd(*args),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=TIMEOUT,
            check=False,
        )
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("info", "phala"),
        ("list", "--all"),
        ("--json", "list", "--all"),
        ("--json", "info", "kms_doesNotExist"),  # a failure whose JSON cannot be written
        ("demo", "--apps", "3"),
        ("--help",),
    ],
)
def test_a_closed_stdout_ends_quietly(server: FakeKMSServer, args: tuple[str, ...]) -> None:
    returncode, stderr = _run_into_a_closed_pipe(args, child_env(server))
    assert "Traceback" not in stderr
    assert "Exception ignored" not in stderr
    assert "BrokenPipe" not in stderr
    if "kms_doesNotExist" in args:
        assert returncode == ExitCode.NOT_FOUND  # the failure's code survives
        assert "error: NotFoundError" in stderr
    else:
        assert returncode == 0, stderr
        assert stderr == ""


def test_like_head_1(server: FakeKMSServer) -> None:
    """``phala-kms list --all | head -1``: read one line, close the pipe, exit 0."""
    with child(
        phala_kms_cmd("list", "--all"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(server),
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline()
        proc.stdout.close()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert err == ""


# --------------------------------------------------------------------------- 5. inert text


def test_inert() -> None:
    assert inert(HOSTILE) == HOSTILE_SHOWN
    assert inert("tab\there\nnew\rline\x00\x7f") == "tab\\there\\nnew\\rline\\x00\\x7f"
    assert inert("héllo wörld ✓ 日本") == "héllo wörld ✓ 日本"
    assert all(inert(chr(c)) != chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)))


def _no_raw_controls(text: str) -> None:
    """Nothing but newlines among the control characters."""
    bad = [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0]
    assert not bad, (bad, text)
    assert "\u202e" not in text


def test_hostile_error_messages_are_inert(server: FakeKMSServer) -> None:
    server.inject(
        "kms_info", StatusFault(400, error_code="ERR-01-001", message=HOSTILE), times=None
    )
    result = invoke(server, "-v", "info", "phala")
    assert result.exit_code == ExitCode.API_ERROR
    _no_raw_controls(result.stderr)
    assert HOSTILE_SHOWN in result.stderr
    as_json = invoke(server, "--json", "info", "phala")
    _no_raw_controls(as_json.stdout)  # JSON escapes: \u001b, \u009b, \u202e
    assert HOSTILE in json.loads(as_json.stdout)["error"]["message"]  # the same string


def test_hostile_fields_are_inert_in_tables_and_fields(server: FakeKMSServer) -> None:
    node = dict(server.nodes[0])
    node.update(slug="slug" + HOSTILE, url="https://x.example/" + HOSTILE, note=HOSTILE)
    page = {"items": [node], "total": 1, "page": 1, "page_size": 20, "pages": 1}
    server.inject("kms_info", StatusFault(200, body=node), times=None)
    server.inject("kms_list", StatusFault(200, body=page), times=None)
    for args in (("info", "phala"), ("list",)):
        result = invoke(server, *args)
        assert result.exit_code == 0, result.output
        _no_raw_controls(result.stdout)
        assert "\\x1b]52;c;" in result.stdout
    assert "note (extra)" in invoke(server, "info", "phala").stdout


def test_hostile_errors_in_the_pubkeys_table_are_inert(server: FakeKMSServer) -> None:
    server.inject("app_pubkey", StatusFault(400, message=HOSTILE), times=None)
    result = invoke(server, "pubkeys", "phala", APP_ID)
    assert result.exit_code == ExitCode.API_ERROR
    _no_raw_controls(result.stdout + result.stderr)
    assert "\\x1b]52;c;" in result.stdout


def test_hostile_text_in_the_demo_is_inert(server: FakeKMSServer) -> None:
    """Against a hostile API every step fails with its message; all of it is inert, and
    the demo ends with the error table's hint for the first failure."""
    server.inject("*", StatusFault(403, message=HOSTILE), times=None)
    result = CliRunner().invoke(
        cli,
        ["demo"],
        env={"PHALA_CLOUD_API_PREFIX": server.base_url, "PHALA_CLOUD_API_KEY": server.api_key},
    )
    assert result.exit_code == ExitCode.AUTH
    _no_raw_controls(result.stdout + result.stderr)
    assert HOSTILE_SHOWN in result.stdout


def _pubkey_body(server: FakeKMSServer, **extra: Any) -> str:
    with urllib.request.urlopen(  # noqa: S310 - loopback
        urllib.request.Request(  # noqa: S310
            f"{server.base_url}/kms/phala/pubkey/{APP_ID}", headers={"X-API-Key": server.api_key}
        ),
        timeout=TIMEOUT,
    ) as response:
        body = json.loads(response.read())
    return json.dumps({**body, **extra})


def test_json_is_strict_for_non_finite_numbers(server: FakeKMSServer) -> None:
    raw = _pubkey_body(server)[:-1] + ', "nan": NaN, "inf": Infinity, "ninf": -Infinity}'
    server.inject("app_pubkey", StatusFault(200, body=raw, content_type="application/json"))
    result = invoke(server, "--json", "pubkey", "phala", APP_ID)
    assert result.exit_code == 0, result.output

    def refuse(name: str) -> None:
        raise AssertionError(f"not strict JSON: {name}")

    data = json.loads(result.stdout, parse_constant=refuse)
    assert data["extra"] == {"nan": None, "inf": None, "ninf": None}


def test_deeply_nested_unknown_fields_are_capped(server: FakeKMSServer) -> None:
    deep: list[Any] = []
    cursor = deep
    for _ in range(700):
        cursor.append([])
        cursor = cursor[0]
    server.inject("app_pubkey", StatusFault(200, body=_pubkey_body(server, deep=deep)), times=2)
    result = invoke(server, "--json", "pubkey", "phala", APP_ID)
    assert result.exit_code == 0, result.output
    value = json.loads(result.stdout)["extra"]["deep"]
    depth = 0
    while isinstance(value, list):
        value, depth = value[0], depth + 1
    assert value == f"<nested deeper than {JSON_MAX_DEPTH} levels: not shown>"
    assert depth < JSON_MAX_DEPTH
    human = invoke(server, "pubkey", "phala", APP_ID)
    assert human.exit_code == 0, human.output
    assert "deep (extra)" in human.stdout
    assert to_jsonable(float("nan")) is None


def _run_in_a_pty(cmd: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    """Run ``cmd`` with stdin, stdout and stderr on a pseudo-terminal; (code, bytes)."""
    import pty

    master, slave = pty.openpty()
    output = bytearray()
    try:
        with child(cmd, stdin=slave, stdout=slave, stderr=slave, env=env) as proc:
            os.close(slave)
            slave = -1
            give_up = time.monotonic() + TIMEOUT
            while time.monotonic() < give_up:
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError as err:  # EIO: the child closed the terminal
                        if err.errno != errno.EIO:
                            raise
                        break
                    if not chunk:
                        break
                    output += chunk
                elif proc.poll() is not None:
                    break
            returncode = proc.wait(timeout=TIMEOUT)
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    return returncode, bytes(output)


def test_escape_sequences_never_reach_a_terminal(server: FakeKMSServer) -> None:
    """On a real (pseudo-)terminal: the server's OSC 52 and clear-screen are shown
    escaped, in an error and in a table; the terminal never receives them."""
    server.inject("kms_info", StatusFault(400, error_code="ERR-01-001", message=HOSTILE), times=1)
    node = dict(server.nodes[0], slug="s" + HOSTILE)
    page = {"items": [node], "total": 1, "page": 1, "page_size": 20, "pages": 1}
    server.inject("kms_list", StatusFault(200, body=page), times=1)
    env = {**child_env(server), "TERM": "xterm-256color", "COLUMNS": "400"}
    for args, code in ((("info", "phala"), ExitCode.API_ERROR), (("list",), 0)):
        returncode, output = _run_in_a_pty(phala_kms_cmd(*args), env)
        assert returncode == code, output
        assert b"\x1b]" not in output  # no OSC at all (52: the clipboard)
        assert b"\x1b[2J" not in output
        assert b"\x07" not in output
        assert "\x9b".encode() not in output
        assert b"\\x1b]52;c;cm0gLXJmIH4=\\x07" in output


# --------------------------------------------------------------------------- 6. .env strictness


def test_unparsable_env_lines_are_named_by_number_only(
    server: FakeKMSServer, tmp_path: Path
) -> None:
    server.reset()
    path = tmp_path / ".env"
    path.write_text(f'GOOD=1\n{SECRET} "unterminated\nALSO=2\n{SECRET}\n')
    result = invoke(server, "encrypt-env", "phala", APP_ID, "--env-file", str(path), "--no-verify")
    assert_clean_failure(result.stderr, ExitCode.USAGE, result.exit_code)
    assert f"{path}, line 2: cannot be parsed" in result.stderr
    assert SECRET not in result.output
    path.write_text(f"GOOD=1\n{SECRET}\n")
    bare = invoke(server, "encrypt-env", "phala", APP_ID, "--env-file", str(path), "--no-verify")
    assert bare.exit_code == ExitCode.USAGE
    assert f"{path}, line 2: a name without '='" in bare.stderr
    assert SECRET not in bare.output
    assert server.total_requests == 0


def test_duplicate_names_are_an_error(server: FakeKMSServer, tmp_path: Path) -> None:
    server.reset()
    path = tmp_path / ".env"
    path.write_text("A=1\nB=2\n\nexport A=3\n")
    result = invoke(server, "encrypt-env", "phala", APP_ID, "--env-file", str(path), "--no-verify")
    assert_clean_failure(result.stderr, ExitCode.USAGE, result.exit_code)
    assert "A is set on lines 1 and 4" in result.stderr
    assert server.total_requests == 0


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n  # and another\n"])
def test_an_empty_env_file_needs_allow_empty(
    server: FakeKMSServer, tmp_path: Path, text: str
) -> None:
    path = tmp_path / ".env"
    path.write_text(text)
    args = ("encrypt-env", "phala", APP_ID, "--env-file", str(path), "--no-verify")
    refused = invoke(server, *args)
    assert_clean_failure(refused.stderr, ExitCode.USAGE, refused.exit_code)
    assert "sets no variables" in refused.stderr
    assert "--allow-empty" in refused.stderr
    allowed = invoke(server, *args, "--allow-empty")
    assert allowed.exit_code == 0, allowed.output
    opened = decrypt_env_vars(allowed.stdout.strip(), server.app_private_key("phala", APP_ID))
    assert list(opened) == []


# --------------------------------------------------------------------------- 7. first docs


def test_the_package_docstring_opens_with_a_runnable_example(
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = phala_kms.__doc__ or ""
    head, _, rest = doc.partition("::\n")
    assert len(head.splitlines()) <= 5, "the example must be at the top"
    block = textwrap.dedent(rest.split("\n\n\n", 1)[0])  # up to the first two blank lines
    assert 5 <= len(block.strip().splitlines()) <= 12
    exec(compile(block, "phala_kms.__doc__", "exec"), {})  # noqa: S102 - our own docstring
    assert re.fullmatch(r"[0-9a-f]{120,}\n", capsys.readouterr().out)


def test_the_docs_say_where_things_are() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install -e '.[cli]'" in readme
    assert "not on PyPI" in readme
    assert "pip install -e '.[dev]'" in readme  # how to get nox, ruff and mypy
    for code in EXIT_CODES:
        assert f"| {int(code)} " in readme
    result = invoke(None, "demo", "--apps", "2")
    assert result.exit_code == 0, result.output
    assert "phala_kms.testing.decrypt_env_vars" in result.stdout


# --------------------------------------------------------------------------- 8. hints, defaults


def test_the_demo_ends_with_the_same_hint_as_every_other_command(server: FakeKMSServer) -> None:
    env = {"PHALA_CLOUD_API_PREFIX": server.base_url, "PHALA_CLOUD_API_KEY": "phak_bad_key_42"}
    listing = CliRunner().invoke(cli, ["list"], env=env)
    hint = next(line for line in listing.stderr.splitlines() if line.startswith("hint: "))
    result = CliRunner().invoke(cli, ["demo"], env=env)
    assert result.exit_code == listing.exit_code == ExitCode.AUTH
    assert result.stderr.splitlines()[-1] == hint
    assert "steps failed; first: step 1, PermissionDeniedError" in result.stderr
    as_json = CliRunner().invoke(cli, ["--json", "demo"], env=env)
    report = json.loads(as_json.stdout)
    assert report["hint"] == hint.removeprefix("hint: ")
    assert report["exit_code"] == ExitCode.AUTH


def test_the_default_concurrency_is_the_sdks_everywhere() -> None:
    from phala_kms import AsyncKMSClient, KMSClient

    assert DEFAULT_CONCURRENCY == 32
    for name in ("pubkeys", "demo"):
        command = cli.commands[name]
        option = next(p for p in command.params if p.name == "concurrency")
        assert option.default == DEFAULT_CONCURRENCY
        shown = " ".join(invoke(None, name, "--help").stdout.split())
        assert f"[default: {DEFAULT_CONCURRENCY};" in shown
    for client in (AsyncKMSClient, KMSClient):
        for method in ("get_app_env_encrypt_pubkeys", "get_verified_app_env_encrypt_pubkeys"):
            parameters = inspect.signature(getattr(client, method)).parameters
            if "concurrency" in parameters:
                assert parameters["concurrency"].default == DEFAULT_CONCURRENCY, (client, method)


def test_next_app_ids_is_described_as_a_stable_prediction() -> None:
    text = invoke(None, "next-app-ids", "--help").stdout
    assert "not a reservation" in text
    assert "the same ids until an app is" in " ".join(text.split())


def test_every_exit_code_is_documented() -> None:
    module_doc = sys.modules["phala_kms.cli"].__doc__ or ""
    help_text = invoke(None, "--help").stdout
    for code in ExitCode:
        assert re.search(rf"^{int(code)}\s", module_doc, re.MULTILINE), code
        assert f"{int(code):<3}  {EXIT_CODES[code]}" in help_text


def test_stdin_bytes_helper() -> None:
    """read_input takes bytes from a given binary stream (used for '-')."""
    from phala_kms.cli._envfile import decode_input, read_input

    assert read_input("-", io.BytesIO(b"A=1\n")) == b"A=1\n"
    assert decode_input("\ufeffA=1\n".encode(), "x.env", "nothing") == "A=1\n"
