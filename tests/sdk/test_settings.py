"""Client settings: the API key and base URL (arguments, environment, defaults), the
checks made at construction, and what ``repr`` shows."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from phala_kms import (
    DEFAULT_API_VERSION,
    DEFAULT_BASE_URL,
    AsyncKMSClient,
    AuthenticationError,
    ConfigurationError,
    KMSClient,
    PhalaKMSError,
    RetryPolicy,
)
from phala_kms import _constants as constants
from phala_kms.testing import FakeKMSServer
from tests.helpers import API_KEY, MOCK_BASE, load_fixture


async def test_missing_api_key_is_a_configuration_error_before_sending(mocked: Any) -> None:
    async with AsyncKMSClient(base_url=MOCK_BASE) as c:  # no key anywhere
        with pytest.raises(ConfigurationError, match="PHALA_CLOUD_API_KEY"):
            await c.get_kms_info("phala")
    assert mocked.requests == {}


async def test_missing_key_names_the_setting(mocked: Any) -> None:
    async with AsyncKMSClient(base_url=MOCK_BASE) as c:
        with pytest.raises(ConfigurationError) as caught:
            await c.get_kms_list()
    assert caught.value.setting == "api_key"


async def test_env_vars_supply_key_and_base(monkeypatch: pytest.MonkeyPatch, mocked: Any) -> None:
    monkeypatch.setenv("PHALA_CLOUD_API_KEY", API_KEY)
    monkeypatch.setenv("PHALA_CLOUD_API_PREFIX", "https://env.test/api/v1/")
    mocked.get("https://env.test/api/v1/kms/phala", payload=load_fixture("kms_info_minimal.json"))
    async with AsyncKMSClient() as c:
        assert c.config.base_url == "https://env.test/api/v1"
        await c.get_kms_info("phala")
    ((_m, _u, kwargs),) = mocked.sent()
    assert kwargs["headers"]["X-API-Key"] == API_KEY


def test_default_base_url() -> None:
    assert AsyncKMSClient(API_KEY).config.base_url == "https://cloud-api.phala.com/api/v1"
    assert DEFAULT_BASE_URL == "https://cloud-api.phala.com/api/v1"


def test_both_clients_default_to_the_shared_constants() -> None:
    expected = {
        "timeout": constants.DEFAULT_TIMEOUT,
        "connect_timeout": constants.DEFAULT_CONNECT_TIMEOUT,
        "max_retries": constants.DEFAULT_MAX_RETRIES,
        "max_connections": constants.DEFAULT_MAX_CONNECTIONS,
        "max_response_bytes": constants.DEFAULT_MAX_RESPONSE_BYTES,
    }
    for cls in (AsyncKMSClient, KMSClient):
        parameters = inspect.signature(cls).parameters
        assert {name: parameters[name].default for name in expected} == expected, cls
    client = AsyncKMSClient(API_KEY)
    assert client.config.api_version == DEFAULT_API_VERSION == constants.API_VERSIONS[-1]
    assert client.config.max_response_bytes == constants.DEFAULT_MAX_RESPONSE_BYTES


@pytest.mark.parametrize(
    "base_url",
    [
        "http://cloud-api.phala.com/api/v1",
        "http://10.0.0.1/api/v1",
        "ftp://kms.test/api/v1",
        "kms.test/api/v1",
        "https://user:pw@kms.test/api/v1",
        "https://kms.test/api/v1?x=1",
    ],
)
def test_unsafe_base_urls_are_refused(base_url: str) -> None:
    with pytest.raises(ConfigurationError):
        AsyncKMSClient(API_KEY, base_url)


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:8787/api/v1", "http://localhost/api/v1", "http://[::1]:1/api/v1"]
)
def test_plain_http_is_allowed_to_loopback(base_url: str) -> None:
    assert AsyncKMSClient(API_KEY, base_url).config.base_url == base_url


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": "60"},
        {"connect_timeout": float("inf")},
        {"max_connections": 0},
        {"api_version": ""},
        {"max_retries": 7, "retry_policy": RetryPolicy(max_retries=2)},
    ],
)
def test_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        AsyncKMSClient(API_KEY, MOCK_BASE, **kwargs)


def test_configuration_errors_name_the_setting() -> None:
    with pytest.raises(ConfigurationError) as caught:
        AsyncKMSClient(API_KEY, "http://example.com/api/v1")
    assert caught.value.setting == "base_url"
    with pytest.raises(ConfigurationError) as caught:
        AsyncKMSClient(API_KEY, MOCK_BASE, timeout=0)
    assert caught.value.setting == "timeout"


def test_repr_hides_the_key() -> None:
    c = AsyncKMSClient(API_KEY, MOCK_BASE)
    assert API_KEY not in repr(c)
    assert API_KEY not in repr(c.config)


@pytest.mark.parametrize(
    "setting",
    [{"api_key": "phak_x\r\nX-Evil: 1"}, {"api_version": "2026-06-23\r\nX-Evil: 1"}],
    ids=["api_key", "api_version"],
)
def test_header_settings_with_control_characters_are_refused(
    server: FakeKMSServer, setting: dict[str, str]
) -> None:
    kwargs = {"api_key": server.api_key, "base_url": server.base_url, **setting}
    with pytest.raises(PhalaKMSError), KMSClient(**kwargs) as client:
        client.get_kms_info("phala")
    assert server.total_requests == 0


def test_missing_key_sends_nothing(server: FakeKMSServer) -> None:
    with KMSClient(base_url=server.base_url) as client, pytest.raises(ConfigurationError):
        client.get_kms_info("phala")
    assert server.total_requests == 0
    assert AuthenticationError  # the 401 path is exercised by the fake's own tests
