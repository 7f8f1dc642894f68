"""Secrets never leak: not into logs, error messages, reprs, tracebacks or other hosts.

The API key (right or wrong), env-var values and private keys must not appear in:
log records at DEBUG (ours, aiohttp's, the root logger's), the ``str``/``repr``/
attributes/pickle/full traceback (with chained causes) of any error the clients raise
across failing scenarios, or the repr of clients, settings and ``EnvVar``. Redirects
are never followed (the key would travel to the redirect target), and a plain
``http://`` base URL to a non-loopback host is refused before anything is sent.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from phala_kms import (
    AsyncKMSClient,
    ConfigurationError,
    EnvVar,
    InvalidArgumentError,
    KMSClient,
    PhalaKMSError,
    RedirectError,
    RetryPolicy,
    encrypt_env_vars,
)
from phala_kms.testing import (
    FakeKMSServer,
    GatewayHTMLFault,
    LatencyFault,
    NonJSONFault,
    RedirectFault,
    StatusFault,
    WrongShapeFault,
    decrypt_env_vars,
)
from tests.helpers import API_KEY, MakeClient

WRONG_KEY = "phak_wrong_SECRET_also_hidden_19b2e0"
ENV_SECRET = "env-value-SECRET-8d1e4c"
ENV = {"DATABASE_URL": f"postgres://app:{ENV_SECRET}@db/prod", "TOKEN": ENV_SECRET + "-2"}
APP_ID = "0123456789abcdef0123456789abcdef01234567"
POLICY = RetryPolicy(max_retries=1, initial_backoff=0.0, jitter=0.0)

# The fake accepts the test key, so it is the key the clients send.
pytestmark = pytest.mark.fake_kms_options(api_key=API_KEY, phala_node_count=2)


@pytest.fixture
def secrets(server: FakeKMSServer) -> list[str]:
    """Every secret of a test, plus distinctive fragments to catch partial leaks."""
    return [
        API_KEY,
        "SECRET_do_not_leak",
        WRONG_KEY,
        "SECRET_also_hidden",
        ENV_SECRET,
        server.app_private_key("phala", APP_ID).hex(),
        server.root_private_key("phala").hex(),
    ]


def exposure(err: BaseException) -> str:
    """Everything an error shows: message, repr, attributes, pickle, full traceback."""
    parts = [
        str(err),
        repr(err),
        repr(vars(err)),
        "".join(traceback.format_exception(type(err), err, err.__traceback__)),
        pickle.dumps(err).decode("latin-1"),
    ]
    cause: BaseException | None = err
    while cause is not None:  # each chained exception on its own, too
        parts += [str(cause), repr(cause)]
        cause = cause.__cause__ or cause.__context__
    return "\n".join(parts)


def assert_hidden(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"secret {secret[:12]}... leaked"


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="phala_kms")
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    return caplog


Fault = tuple[str, Any] | None


def failing_calls(server: FakeKMSServer) -> list[tuple[str, Fault, Callable[[Any], Any]]]:
    """(name, (route, fault) to inject or None, call(client)); each call raises."""
    info = lambda c: c.get_kms_info("phala")  # noqa: E731
    signer = server.k256_pubkey
    validation = {"detail": [{"loc": ["query", "counts"], "msg": "bad", "type": "int"}]}
    return [
        ("401", ("kms_info", StatusFault(401)), info),
        ("404", None, lambda c: c.get_kms_info("no-such-kms")),
        ("429", ("kms_info", StatusFault(429, error_code="ERR-05-002", retry_after=0)), info),
        ("500", ("kms_info", StatusFault(500)), info),
        ("502", ("kms_info", GatewayHTMLFault(502)), info),
        ("timeout", ("kms_info", LatencyFault(2.0)), info),
        ("redirect", ("kms_info", "redirect"), info),
        ("non-json", ("kms_info", NonJSONFault()), info),
        ("wrong-shape", ("kms_info", WrongShapeFault()), info),
        ("bad-app-id", None, lambda c: c.get_app_env_encrypt_pubkey("phala", "not-hex")),
        ("bad-kms", None, lambda c: c.get_kms_info("")),
        ("bad-counts", None, lambda c: c.next_app_ids(counts=99)),
        ("422", ("next_app_id", StatusFault(422, body=validation)), lambda c: c.next_app_ids(1)),
        (
            "encrypt-bad-name",
            None,
            lambda c: c.encrypt_env_vars_for_app(
                "phala", APP_ID, {"BAD NAME": ENV_SECRET}, trusted_signer=signer
            ),
        ),
        (
            "encrypt-bad-value",
            None,
            lambda c: c.encrypt_env_vars_for_app(
                "phala", APP_ID, [("OK", ENV_SECRET + "\ud800")], trusted_signer=signer
            ),
        ),
        (
            "encrypt-duplicate",
            None,
            lambda c: c.encrypt_env_vars_for_app(
                "phala",
                APP_ID,
                [EnvVar("A", ENV_SECRET), EnvVar("A", ENV_SECRET)],
                trusted_signer=signer,
            ),
        ),
        (
            "encrypt-wrong-signer",
            None,
            lambda c: c.encrypt_env_vars_for_app(
                "phala", APP_ID, ENV, trusted_signer=server.k256_pubkey_for("base")
            ),
        ),
        (
            "encrypt-404",
            None,
            lambda c: c.encrypt_env_vars_for_app("no-such-kms", APP_ID, ENV, trusted_signer=signer),
        ),
        (
            "encrypt-500",
            ("app_pubkey", StatusFault(500)),
            lambda c: c.encrypt_env_vars_for_app("phala", APP_ID, ENV, trusted_signer=signer),
        ),
        ("fan-out", None, lambda c: c.get_app_env_encrypt_pubkeys("no-such-kms", [APP_ID])),
    ]


@pytest.mark.timeout(60)
def test_no_secret_in_errors_or_logs(
    server: FakeKMSServer,
    secrets: list[str],
    debug_logs: pytest.LogCaptureFixture,
    make_client: MakeClient,
    closed_port: int,
) -> None:
    with FakeKMSServer.in_thread(api_key=API_KEY, phala_node_count=1) as evil:
        client = make_client(retry_policy=POLICY, timeout=0.3)
        seen: dict[str, PhalaKMSError] = {}
        for name, fault, call in failing_calls(server):
            server.clear_faults()
            if fault is not None:
                route, what = fault
                if what == "redirect":
                    what = RedirectFault(307, location=evil.base_url + "/kms/phala")
                server.inject(route, what, times=None)
            with pytest.raises(PhalaKMSError) as caught:
                client.run(call)
            seen[name] = caught.value
        server.clear_faults()
        # A wrong key is a secret too: 403 from the server's key check.
        wrong = make_client(api_key=WRONG_KEY, retry_policy=POLICY)
        with pytest.raises(PhalaKMSError) as caught:
            wrong.get_kms_info("phala")
        seen["403"] = caught.value
        refused = make_client(
            base_url=f"http://127.0.0.1:{closed_port}/api/v1", retry_policy=POLICY
        )
        with pytest.raises(PhalaKMSError) as caught:
            refused.get_kms_info("phala")
        seen["refused"] = caught.value
        assert evil.total_requests == 0

    expected = {
        "401": "AuthenticationError",
        "403": "PermissionDeniedError",
        "404": "NotFoundError",
        "429": "RateLimitError",
        "500": "ServerError",
        "502": "ServerError",
        "timeout": "APITimeoutError",
        "redirect": "RedirectError",
        "non-json": "ResponseValidationError",
        "wrong-shape": "ResponseValidationError",
        "bad-app-id": "InvalidArgumentError",
        "bad-kms": "InvalidArgumentError",
        "bad-counts": "InvalidArgumentError",
        "422": "UnprocessableEntityError",
        "encrypt-bad-name": "InvalidArgumentError",
        "encrypt-bad-value": "InvalidArgumentError",
        "encrypt-duplicate": "InvalidArgumentError",
        "encrypt-wrong-signer": "SignatureVerificationError",
        "encrypt-404": "NotFoundError",
        "encrypt-500": "ServerError",
        "fan-out": "NotFoundError",
        "refused": "ConnectRefusedError",
    }
    assert {name: type(err).__name__ for name, err in seen.items()} == expected
    for err in seen.values():
        assert_hidden(exposure(err), secrets)
    # The checks below can see a leak: logs and errors do carry URLs and server text.
    assert any("retrying GET" in r.getMessage() for r in debug_logs.records)
    assert server.base_url + "/kms/phala" in debug_logs.text
    assert server.base_url + "/kms/no-such-kms" in exposure(seen["404"])
    assert "Bad Gateway" in exposure(seen["502"])
    assert_hidden(debug_logs.text, secrets)
    for record in debug_logs.records:
        assert_hidden(record.getMessage() + repr(record.args) + repr(record.__dict__), secrets)
    for request in server.requests:  # the key travels in a header, never in the URL
        assert API_KEY not in request.path and API_KEY not in repr(dict(request.query))


async def test_the_api_key_stays_out_of_captured_locals_and_chained_request_info() -> None:
    # A malformed status line makes aiohttp raise an error that carries request_info.
    async def bad_status(reader: Any, writer: Any) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.1 9999 Nope\r\n\r\n")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(bad_status, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        async with AsyncKMSClient(API_KEY, f"http://127.0.0.1:{port}/api/v1", max_retries=0) as c:
            with pytest.raises(Exception) as caught:
                await c.get_kms_info("phala")
    finally:
        srv.close()
        await srv.wait_closed()
    err = caught.value
    text = "".join(traceback.TracebackException.from_exception(err, capture_locals=True).format())
    assert "headers" in text  # the locals really were captured
    assert API_KEY not in text
    cause = err.__cause__
    assert cause is not None
    assert API_KEY not in repr(getattr(cause, "request_info", ""))


def test_reprs_hide_the_key_and_values(secrets: list[str]) -> None:
    policy = RetryPolicy(deadline=5.0)
    async_client = AsyncKMSClient(API_KEY, "https://kms.test/api/v1", retry_policy=policy)
    with KMSClient(API_KEY, "https://kms.test/api/v1") as sync_client:
        shown = [
            repr(async_client),
            str(async_client),
            repr(sync_client),
            str(sync_client),
            repr(async_client.config),
            str(async_client.config),
            repr(sync_client.config),
            repr(policy),
        ]
        assert "kms.test" in repr(async_client.config)  # the repr does say something
        assert async_client.config.api_key == API_KEY  # and the key is really there
    env = [EnvVar("TOKEN", ENV_SECRET), EnvVar(key="DB", value=ENV_SECRET)]
    shown += [repr(env[0]), str(env[0]), repr(env), f"{env[1]!r}", str(tuple(env))]
    assert repr(env[0]) == "EnvVar(key='TOKEN', value=<redacted>)"
    assert_hidden("\n".join(shown), secrets)


def test_encryption_errors_hide_values_and_keys(server: FakeKMSServer, secrets: list[str]) -> None:
    public = server.app_public_key("phala", APP_ID)
    private = server.app_private_key("phala", APP_ID)
    failures: list[BaseException] = []
    for env_vars, key in [
        (ENV, b"short"),
        (ENV, "zz" * 32),
        (ENV, bytes(32)),  # a low-order point
        ({"1BAD": ENV_SECRET}, public),
        ({"OK": ENV_SECRET + "\udfff"}, public),
        ([("A", ENV_SECRET), ("A", ENV_SECRET)], public),
        ({"OK": 42}, public),
        (ENV_SECRET, public),
    ]:
        with pytest.raises(InvalidArgumentError) as caught:
            encrypt_env_vars(env_vars, key)  # type: ignore[arg-type]
        failures.append(caught.value)
    sealed = encrypt_env_vars(ENV, public)
    assert ENV_SECRET not in sealed
    other = server.app_private_key("phala", "ff" * 20)
    for ciphertext, key in [
        (sealed, other),
        (sealed[:-2], private),
        ("zz", private),
        (sealed, b"short"),
    ]:
        with pytest.raises(InvalidArgumentError) as caught:
            decrypt_env_vars(ciphertext, key)
        failures.append(caught.value)
    for err in failures:
        assert_hidden(exposure(err), secrets)
    assert [(v.key, v.value) for v in decrypt_env_vars(sealed, private)] == list(ENV.items())


# --------------------------------------------------------------------------- redirects


@pytest.mark.timeout(30)
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_never_followed(
    server: FakeKMSServer, make_client: MakeClient, status: int
) -> None:
    with FakeKMSServer.in_thread(api_key=API_KEY, phala_node_count=1) as evil:
        target = evil.base_url + "/kms/phala"
        server.inject("*", RedirectFault(status, location=target), times=None)
        client = make_client(retry_policy=RetryPolicy(max_retries=3))
        with pytest.raises(RedirectError) as caught:
            client.get_kms_info("phala")
        err = caught.value
        assert err.status == status and err.location == target and err.attempts == 1
        assert server.total_requests == 1  # exactly one request, not retried
        assert evil.total_requests == 0  # and the other host got nothing
        assert API_KEY not in exposure(err)


# --------------------------------------------------------------------------- plain http


REMOTE_HTTP = [
    "http://cloud-api.phala.com/api/v1",
    "http://10.0.0.7/api/v1",
    "http://192.168.1.1:8080/api/v1",
    "http://localhost.evil.example/api/v1",
    "http://127.0.0.1.nip.io/api/v1",
    "http://[::ffff:8.8.8.8]/api/v1",
    "http://[2001:db8::1]/api/v1",
    "HTTP://Example.COM/api/v1",
]


@pytest.mark.parametrize("base_url", REMOTE_HTTP)
@pytest.mark.parametrize("client_type", [AsyncKMSClient, KMSClient])
def test_plain_http_to_a_remote_host_is_refused_at_construction(
    base_url: str, client_type: Any
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        client_type(API_KEY, base_url)
    assert "http://" in str(caught.value)
    assert API_KEY not in exposure(caught.value)


@pytest.mark.parametrize("base_url", REMOTE_HTTP[:3])
def test_plain_http_from_the_environment_is_refused_too(
    monkeypatch: pytest.MonkeyPatch, base_url: str
) -> None:
    monkeypatch.setenv("PHALA_CLOUD_API_PREFIX", base_url)
    monkeypatch.setenv("PHALA_CLOUD_API_KEY", API_KEY)
    with pytest.raises(ConfigurationError) as caught:
        KMSClient()
    assert API_KEY not in exposure(caught.value)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:1/api/v1",
        "http://127.8.9.10/api/v1",
        "http://localhost/api/v1",
        "http://[::1]:9/api/v1",
    ],
)
def test_plain_http_to_loopback_is_allowed(base_url: str) -> None:
    with KMSClient(API_KEY, base_url) as client:
        assert client.config.base_url == base_url


@pytest.mark.parametrize(
    "base_url",
    [
        pytest.param("https://user:{key}@kms.test/api/v1", id="userinfo"),
        pytest.param("http://user:{key}@example.com/api/v1", id="userinfo-http"),
        pytest.param("ftp://user:{key}@kms.test/api/v1", id="userinfo-bad-scheme"),
        pytest.param("https://kms.test/api/v1?api_key={key}", id="query"),
        pytest.param("https://kms.test/api/v1#{key}", id="fragment"),
    ],
)
def test_a_key_misplaced_in_the_base_url_is_not_echoed(base_url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        KMSClient(base_url=base_url.format(key=API_KEY))
    assert API_KEY not in exposure(caught.value)
