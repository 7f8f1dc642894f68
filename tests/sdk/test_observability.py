"""Operability: one DEBUG record per attempt on ``phala_kms``, the INFO retry notice, and
``trace_configs=`` so aiohttp tracing and OpenTelemetry see every attempt.

Each behaviour is checked on both clients; OpenTelemetry runs with its in-memory span
exporter against the fake on 127.0.0.1, both through ``trace_configs=`` and through
``AioHttpClientInstrumentor`` (uninstrumented again in teardown).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from opentelemetry.instrumentation.aiohttp_client import (
    AioHttpClientInstrumentor,
    create_trace_config,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from phala_kms import (
    AsyncKMSClient,
    ConfigurationError,
    ConnectRefusedError,
    KMSClient,
    NotFoundError,
    RetryPolicy,
)
from phala_kms.testing import FakeKMSServer, StatusFault
from tests.helpers import API_KEY

NO_WAIT = RetryPolicy(max_retries=1, initial_backoff=0.0, jitter=0.0)
FIELDS = ("http_method", "http_path", "http_status", "error_type", "elapsed_ms", "attempt")

pytestmark = pytest.mark.fake_kms_options(api_key=API_KEY, phala_node_count=2)


def call(kind: str, method: str, *args: Any, **settings: Any) -> Any:
    """Run one client method on a fresh client of ``kind`` ("async" or "sync")."""
    if kind == "sync":
        with KMSClient(**settings) as client:
            return getattr(client, method)(*args)

    async def run() -> Any:
        async with AsyncKMSClient(**settings) as client:
            return await getattr(client, method)(*args)

    return asyncio.run(run())


@pytest.fixture(params=["async", "sync"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Callable[[int], list[logging.LogRecord]]:
    caplog.set_level(logging.DEBUG, logger="phala_kms")
    return lambda level: [r for r in caplog.records if r.name == "phala_kms" and r.levelno == level]


def no_key_in(record: logging.LogRecord) -> None:
    assert "SECRET" not in record.getMessage()
    assert "SECRET" not in repr(vars(record))


# --------------------------------------------------------------------------- logging


def test_one_debug_record_per_attempt(
    server: FakeKMSServer, kind: str, records: Callable[[int], list[logging.LogRecord]]
) -> None:
    server.inject("kms_info", StatusFault(503))
    info = call(
        kind, "get_kms_info", "phala", api_key=API_KEY, base_url=server.base_url,
        retry_policy=NO_WAIT,
    )  # fmt: skip
    assert info.slug == "phala"
    first, second = records(logging.DEBUG)
    assert [getattr(first, f) for f in FIELDS[:4]] == ["GET", "/kms/phala", 503, "ServerError"]
    assert [getattr(second, f) for f in FIELDS[:4]] == ["GET", "/kms/phala", 200, None]
    assert (first.attempt, second.attempt) == (1, 2)  # type: ignore[attr-defined]
    ids = [r.request_id for r in (first, second)]  # type: ignore[attr-defined]
    assert all(ids) and ids[0] != ids[1]  # the server's X-Request-ID of each response
    for record in (first, second):
        assert record.elapsed_ms >= 0  # type: ignore[attr-defined]
        message = record.getMessage()
        assert message.startswith("GET /kms/phala -> ")
        assert f"(attempt {record.attempt}, request_id={record.request_id})" in message  # type: ignore[attr-defined]
        assert " ms " in message
        no_key_in(record)
    assert first.getMessage().startswith("GET /kms/phala -> 503 ServerError in ")
    assert second.getMessage().startswith("GET /kms/phala -> 200 in ")
    (notice,) = records(logging.INFO)  # the retry notice is kept
    assert notice.getMessage().startswith(f"retrying GET {server.base_url}/kms/phala in 0.00 s")
    no_key_in(notice)


def test_a_transport_failure_is_logged_with_its_error_type(
    kind: str, closed_port: int, records: Callable[[int], list[logging.LogRecord]]
) -> None:
    with pytest.raises(ConnectRefusedError):
        call(
            kind, "get_kms_info", "phala", api_key=API_KEY,
            base_url=f"http://127.0.0.1:{closed_port}/api/v1", retry_policy=NO_WAIT,
        )  # fmt: skip
    attempts = records(logging.DEBUG)
    assert [(r.http_status, r.error_type, r.attempt) for r in attempts] == [  # type: ignore[attr-defined]
        (None, "ConnectRefusedError", 1),
        (None, "ConnectRefusedError", 2),
    ]
    assert all(r.request_id is None for r in attempts)  # type: ignore[attr-defined]
    for record in attempts:
        no_key_in(record)


def test_the_query_string_is_never_logged(
    server: FakeKMSServer, kind: str, records: Callable[[int], list[logging.LogRecord]]
) -> None:
    call(kind, "get_kms_list", 2, 1, api_key=API_KEY, base_url=server.base_url)
    (record,) = records(logging.DEBUG)
    assert record.http_path == "/kms"  # type: ignore[attr-defined]
    assert "?" not in record.getMessage()
    assert "page" not in record.getMessage()


def test_an_error_status_carries_the_body_request_id(
    server: FakeKMSServer, kind: str, records: Callable[[int], list[logging.LogRecord]]
) -> None:
    with pytest.raises(NotFoundError) as caught:
        call(kind, "get_kms_info", "nope", api_key=API_KEY, base_url=server.base_url)
    (record,) = records(logging.DEBUG)
    assert (record.http_status, record.error_type) == (404, "NotFoundError")  # type: ignore[attr-defined]
    assert record.request_id == caught.value.request_id  # type: ignore[attr-defined]


def test_nothing_is_logged_below_debug(
    server: FakeKMSServer, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="phala_kms")
    call(kind, "get_kms_info", "phala", api_key=API_KEY, base_url=server.base_url)
    assert [r for r in caplog.records if r.name == "phala_kms"] == []


# --------------------------------------------------------------------------- trace_configs


class Counter:
    """An aiohttp TraceConfig counting request starts and ends (and the statuses seen)."""

    def __init__(self) -> None:
        self.starts = 0
        self.statuses: list[int] = []
        self.config = aiohttp.TraceConfig()
        self.config.on_request_start.append(self._start)
        self.config.on_request_end.append(self._end)

    async def _start(self, *_: Any) -> None:
        self.starts += 1

    async def _end(self, _session: Any, _ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
        self.statuses.append(params.response.status)


def test_trace_configs_see_every_attempt(server: FakeKMSServer, kind: str) -> None:
    counter = Counter()
    server.inject("kms_info", StatusFault(503))
    call(
        kind, "get_kms_info", "phala", api_key=API_KEY, base_url=server.base_url,
        retry_policy=NO_WAIT, trace_configs=[counter.config],
    )  # fmt: skip
    assert counter.starts == 2
    assert counter.statuses == [503, 200]


@pytest.mark.parametrize("client_class", [AsyncKMSClient, KMSClient], ids=["async", "sync"])
@pytest.mark.parametrize("bad", [[object()], "not-a-trace-config", [aiohttp.TraceConfig(), 1]])
def test_trace_configs_must_be_trace_configs(client_class: type[Any], bad: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        client_class("k", "http://127.0.0.1:9/api/v1", trace_configs=bad)
    assert caught.value.setting == "trace_configs"


async def test_trace_configs_do_not_apply_to_a_callers_session() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ConfigurationError) as caught:
            AsyncKMSClient(
                "k", "http://127.0.0.1:9/api/v1", session=session,
                trace_configs=[aiohttp.TraceConfig()],
            )  # fmt: skip
    assert caught.value.setting == "trace_configs"


def test_both_clients_take_the_same_arguments() -> None:
    import inspect

    blocking = inspect.signature(KMSClient.__init__).parameters
    asynchronous = dict(inspect.signature(AsyncKMSClient.__init__).parameters)
    del asynchronous["session"]
    assert list(blocking) == list(asynchronous)
    assert blocking["trace_configs"].default is None


# --------------------------------------------------------------------------- OpenTelemetry


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def assert_one_span_per_attempt(finished: tuple[ReadableSpan, ...], base_url: str) -> None:
    assert len(finished) == 2
    statuses = []
    for span in finished:
        attributes = dict(span.attributes or {})
        statuses.append(
            attributes.get("http.status_code", attributes.get("http.response.status_code"))
        )
        url = attributes.get("http.url", attributes.get("url.full"))
        assert url == f"{base_url}/kms/phala"
        shown = repr(attributes) + span.name + repr([e.attributes for e in span.events])
        assert "SECRET" not in shown
    assert statuses == [503, 200]


def test_opentelemetry_via_trace_configs(
    server: FakeKMSServer, kind: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    server.inject("kms_info", StatusFault(503))
    call(
        kind, "get_kms_info", "phala", api_key=API_KEY, base_url=server.base_url,
        retry_policy=NO_WAIT, trace_configs=[create_trace_config(tracer_provider=provider)],
    )  # fmt: skip
    assert_one_span_per_attempt(exporter.get_finished_spans(), server.base_url)


@pytest.fixture
def instrumented(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> Iterator[InMemorySpanExporter]:
    provider, exporter = spans
    instrumentor = AioHttpClientInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield exporter
    finally:
        instrumentor.uninstrument()


def test_opentelemetry_instrumentor_sees_the_clients_session(
    server: FakeKMSServer, kind: str, instrumented: InMemorySpanExporter
) -> None:
    server.inject("kms_info", StatusFault(503))
    call(
        kind, "get_kms_info", "phala", api_key=API_KEY, base_url=server.base_url,
        retry_policy=NO_WAIT,
    )  # fmt: skip
    assert_one_span_per_attempt(instrumented.get_finished_spans(), server.base_url)
