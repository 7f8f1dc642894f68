"""The retry budget a client's calls share: retries draw tokens that successes refill.

* The accounting as tables of pure functions (:func:`budget_after_retry`,
  :func:`budget_after_success`) and the :class:`RetryBudget` around them.
* ``RetryPolicy.retry_budget`` / ``retry_cost`` validation.
* The loop with zero waits: exact attempt counts once the budget is spent.
* On both clients against the fake's outage switch: exact request counts; a blip gets
  every retry it needs; ``None`` disables the budget and ``0`` allows no retries.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from phala_kms import ConfigurationError, PhalaKMSError, RetryPolicy, ServerError
from phala_kms._retry import Retrier, RetryBudget, budget_after_retry, budget_after_success
from phala_kms.testing import FakeKMSServer, Outage
from tests.helpers import MakeClient

IDS = [f"{i:040x}" for i in range(1, 6)]


# --------------------------------------------------------------------------- accounting


@pytest.mark.parametrize(
    ("tokens", "cost", "left"),
    [
        (500.0, 5.0, 495.0),
        (5.0, 5.0, 0.0),  # exactly enough
        (4.9, 5.0, None),  # not enough: nothing is paid
        (0.0, 5.0, None),
        (0.0, 0.5, None),
        (1.0, 0.5, 0.5),
    ],
)
def test_a_retry_draws_its_cost(tokens: float, cost: float, left: float | None) -> None:
    assert budget_after_retry(tokens, cost) == left


@pytest.mark.parametrize(
    ("tokens", "capacity", "retried_cost", "after"),
    [
        (400.0, 500.0, None, 401.0),  # a first-attempt success puts 1 back
        (400.0, 500.0, 5.0, 405.0),  # a success after retrying refunds the last retry
        (500.0, 500.0, None, 500.0),  # never above the budget
        (498.0, 500.0, 5.0, 500.0),
        (0.0, 0.0, None, 0.0),  # a budget of 0 stays empty
    ],
)
def test_a_success_refills(
    tokens: float, capacity: float, retried_cost: float | None, after: float
) -> None:
    assert budget_after_success(tokens, capacity, retried_cost=retried_cost) == after


def test_the_budget_object() -> None:
    budget = RetryBudget.for_policy(RetryPolicy(retry_budget=10, retry_cost=4))
    assert budget.tokens == 10
    assert [budget.draw() for _ in range(3)] == [True, True, False]
    assert budget.tokens == 2 and budget.denied == 1
    budget.refill(retried=True)
    assert budget.tokens == 6
    budget.refill(retried=False)
    assert budget.tokens == 7


def test_no_budget_never_refuses_and_zero_always_does() -> None:
    unlimited = RetryBudget.for_policy(RetryPolicy(retry_budget=None))
    assert all(unlimited.draw() for _ in range(1000))
    empty = RetryBudget.for_policy(RetryPolicy(retry_budget=0))
    assert not empty.draw()
    empty.refill(retried=False)
    assert not empty.draw()


def test_the_defaults() -> None:
    policy = RetryPolicy()
    assert policy.retry_budget == 500
    assert policy.retry_cost == 5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("retry_budget", -1),
        ("retry_budget", math.inf),
        ("retry_budget", math.nan),
        ("retry_budget", "500"),
        ("retry_budget", True),
        ("retry_cost", 0),
        ("retry_cost", -5),
        ("retry_cost", math.inf),
        ("retry_cost", None),
    ],
)
def test_the_budget_settings_are_validated(field: str, value: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RetryPolicy(**{field: value})
    assert caught.value.setting == field


# --------------------------------------------------------------------------- the loop


class Instant:
    now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.now += delay


async def test_the_loop_stops_retrying_when_the_budget_is_spent() -> None:
    clock = Instant()
    policy = RetryPolicy(max_retries=3, initial_backoff=0, jitter=0, retry_budget=10, retry_cost=5)
    retrier = Retrier(policy, sleep=clock.sleep, clock=clock)
    attempts: list[int] = []

    async def failing(number: int, timeout: float) -> None:
        attempts.append(number)
        raise ServerError("503", status=503, attempts=number)

    with pytest.raises(ServerError):
        await retrier.run(failing, timeout=1.0, describe="GET a")
    assert attempts == [1, 2, 3]  # two retries paid for, the third refused
    attempts.clear()
    with pytest.raises(ServerError):
        await retrier.run(failing, timeout=1.0, describe="GET b")
    assert attempts == [1]  # nothing left

    async def working(number: int, timeout: float) -> str:
        return "ok"

    for _ in range(5):
        assert await retrier.run(working, timeout=1.0, describe="GET c") == "ok"
    assert retrier.budget.tokens == 5  # five successes put five tokens back
    attempts.clear()
    with pytest.raises(ServerError):
        await retrier.run(failing, timeout=1.0, describe="GET d")
    assert attempts == [1, 2]


async def test_a_spent_budget_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock = Instant()
    policy = RetryPolicy(initial_backoff=0, retry_budget=0)
    retrier = Retrier(policy, sleep=clock.sleep, clock=clock)

    async def failing(number: int, timeout: float) -> None:
        raise ServerError("503", status=503, attempts=number)

    with caplog.at_level("INFO", logger="phala_kms"), pytest.raises(ServerError):
        await retrier.run(failing, timeout=1.0, describe="GET a")
    assert "retry budget is spent" in caplog.text


# --------------------------------------------------------------------------- both clients


def test_in_an_outage_retries_stop_at_the_budget(
    make_client: MakeClient, server: FakeKMSServer
) -> None:
    server.outage = True
    policy = RetryPolicy(max_retries=3, initial_backoff=0, jitter=0, retry_budget=10, retry_cost=5)
    kms = make_client(retry_policy=policy)
    results = kms.get_app_env_encrypt_pubkeys("phala", IDS, concurrency=1, return_exceptions=True)
    assert all(isinstance(r, ServerError) and r.status == 503 for r in results)
    # the first id: 1 attempt + 2 paid retries; every other id: its one attempt
    assert server.total_requests == len(IDS) + 2
    assert server.outage_count == len(IDS) + 2
    assert [r.attempts for r in results] == [3, 1, 1, 1, 1]


def test_the_default_budget_bounds_an_outage(
    make_client: MakeClient, server: FakeKMSServer
) -> None:
    server.outage = True
    kms = make_client()  # 500 tokens at 5 a retry: 100 retries for the whole client
    ids = [f"{i:040x}" for i in range(1, 201)]
    results = kms.get_app_env_encrypt_pubkeys("phala", ids, return_exceptions=True)
    assert all(isinstance(r, ServerError) for r in results)
    assert server.total_requests == len(ids) + 100  # not 4x
    assert len(kms.waits) == 100


def test_a_blip_gets_every_retry_it_needs(make_client: MakeClient, server: FakeKMSServer) -> None:
    server.outage = Outage(fraction=0.1, seed=3)
    kms = make_client()
    ids = [f"{i:040x}" for i in range(1, 301)]
    results = kms.get_app_env_encrypt_pubkeys("phala", ids, return_exceptions=True)
    assert not [r for r in results if isinstance(r, PhalaKMSError)]
    assert server.total_requests == len(ids) + server.outage_count
    assert server.outage_count > 0


@pytest.mark.parametrize(("budget", "requests"), [(None, 3 * 4), (0, 3)])
def test_no_budget_and_a_zero_budget(
    make_client: MakeClient, server: FakeKMSServer, budget: float | None, requests: int
) -> None:
    server.outage = True
    policy = RetryPolicy(max_retries=3, initial_backoff=0, jitter=0, retry_budget=budget)
    kms = make_client(retry_policy=policy)
    results = kms.get_app_env_encrypt_pubkeys(
        "phala", IDS[:3], concurrency=1, return_exceptions=True
    )
    assert all(isinstance(r, ServerError) for r in results)
    assert server.total_requests == requests


def test_the_budget_is_shared_by_the_clients_calls(server: FakeKMSServer) -> None:
    from phala_kms import KMSClient
    from phala_kms.testing import instant_retries

    server.outage = True
    policy = RetryPolicy(max_retries=3, initial_backoff=0, retry_budget=15, retry_cost=5)
    with (
        KMSClient(server.api_key, server.base_url, retry_policy=policy) as client,
        instant_retries(client),
    ):
        for _ in range(3):
            with pytest.raises(ServerError):
                client.get_kms_info("phala")
    assert server.total_requests == 4 + 1 + 1  # 3 retries paid, then none


@pytest.mark.parametrize("failures", [5, 6])
def test_the_default_policy_outlasts_five_failures_in_a_row(
    make_client: MakeClient, server: FakeKMSServer, failures: int
) -> None:
    # A batch at a 10 % blip loses an id only when every attempt fails (0.1 ** attempts):
    # the default allows 6 attempts, the documented backoffs 15.5 s at most in all.
    from phala_kms.testing import StatusFault

    server.inject("app_pubkey", StatusFault(503), times=failures)
    kms = make_client()
    [result] = kms.get_app_env_encrypt_pubkeys("phala", IDS[:1], return_exceptions=True)
    assert server.total_requests == 6
    if failures == 5:
        assert not isinstance(result, PhalaKMSError)
    else:
        assert isinstance(result, ServerError) and result.attempts == 6
    assert len(kms.waits) == 5 and sum(kms.waits) <= 15.5
