"""Paging: ``Paginated.has_next``, one page at a time, and the iterators that walk every
page (both clients), guarded against servers that would make them loop forever."""

from __future__ import annotations

import re
from typing import Any

import pytest

from phala_kms import AsyncKMSClient, KMSInfo, Paginated, ResponseValidationError
from phala_kms._pagination import next_page
from phala_kms.testing import FakeKMSServer, StatusFault
from tests.helpers import MOCK_BASE


def node(number: int) -> dict[str, Any]:
    return {"id": f"kms_{number:04d}", "url": f"https://kms{number}.example", "version": "v1"}


def page_body(page: int, *, total: int, page_size: int, pages: int, items: int) -> dict[str, Any]:
    first = (page - 1) * page_size
    return {
        "items": [node(first + i) for i in range(items)],
        "total": total,
        "page": page,
        "page_size": page_size,
        "pages": pages,
    }


def page_of(body: dict[str, Any]) -> Paginated[KMSInfo]:
    return Paginated(
        items=tuple(KMSInfo(**item) for item in body["items"]),
        total=body["total"],
        page=body["page"],
        page_size=body["page_size"],
        pages=body["pages"],
    )


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("page", "pages", "items", "has_next"),
    [
        (1, 3, 20, True),
        (2, 3, 20, True),
        (3, 3, 10, False),  # the last page
        (4, 3, 0, False),  # beyond the end
        (1, 0, 0, False),  # nothing at all
        (1, 5, 0, False),  # an empty page ends the walk whatever ``pages`` says
    ],
)
def test_has_next_is_a_non_empty_page_before_the_last(
    page: int, pages: int, items: int, has_next: bool
) -> None:
    body = page_body(page, total=50, page_size=20, pages=pages, items=items)
    assert page_of(body).has_next is has_next


def test_next_page_walks_to_the_end() -> None:
    first = page_of(page_body(1, total=5, page_size=2, pages=3, items=2))
    assert next_page(1, first, first_total=5) == 2
    second = page_of(page_body(2, total=5, page_size=2, pages=3, items=2))
    assert next_page(2, second, first_total=5) == 3
    last = page_of(page_body(3, total=5, page_size=2, pages=3, items=1))
    assert next_page(3, last, first_total=5) is None


def test_next_page_refuses_an_echo_of_another_page() -> None:
    echoed = page_of(page_body(1, total=50, page_size=20, pages=3, items=20))
    with pytest.raises(ResponseValidationError) as caught:
        next_page(2, echoed, first_total=50)
    assert "asked for page 2 but the server answered page 1" in str(caught.value)
    assert caught.value.status == 200 and caught.value.model == "Paginated"
    assert caught.value.problems


@pytest.mark.parametrize(("first_total", "limit"), [(2, 1), (3, 2), (4, 2), (0, 0)])
def test_next_page_refuses_more_pages_than_the_first_total_allows(
    first_total: int, limit: int
) -> None:
    # page_size 2: ceil(first_total / 2) pages at most, whatever later pages claim.
    claims_more = page_of(page_body(limit or 1, total=100, page_size=2, pages=50, items=2))
    with pytest.raises(ResponseValidationError) as caught:
        next_page(limit or 1, claims_more, first_total=first_total)
    assert f"allows only {limit}" in str(caught.value)


# --------------------------------------------------------------------------- against the fake


def test_kms_list_pages_and_iteration(kms: Any, server: FakeKMSServer) -> None:
    first = kms.get_kms_list(page=1, page_size=20)
    assert first.total == 50 and first.pages == 3 and len(first.items) == 20
    last = kms.get_kms_list(page=3, page_size=20)
    assert len(last.items) == 10
    everything = kms.iter_kms_list(page_size=20)
    assert len(everything) == 50
    assert len({item.id for item in everything}) == 50
    assert [i.id for i in everything[:20]] == [i.id for i in first.items]
    onchain = kms.iter_kms_list(is_onchain=True)
    assert onchain and all(i.chain_id is not None for i in onchain)
    versions = {r.phala_version for r in server.requests if r.route == "kms_list"}
    assert versions == {"2026-05-22"}  # node-centric calls pin the old version


def test_empty_page_beyond_the_end(kms: Any) -> None:
    page = kms.get_kms_list(page=99, page_size=100)
    assert page.items == () and page.total == 50


@pytest.mark.parametrize("method", ["iter_kms_list", "iter_kms_contracts"])
def test_a_server_that_ignores_the_page_parameter_is_not_walked_forever(
    kms: Any, server: FakeKMSServer, method: str
) -> None:
    # Every request gets page 1 back, whatever ?page says.
    body = page_body(1, total=50, page_size=20, pages=3, items=20)
    if method == "iter_kms_contracts":
        body["items"] = [
            {"id": f"c{i}", "contract_address": "phala", "chain_id": 0, "node_count": 1}
            for i in range(20)
        ]
    server.inject("kms_list", StatusFault(200, body=body), times=None)
    with pytest.raises(ResponseValidationError) as caught:
        getattr(kms, method)(page_size=20)
    assert "asked for page 2 but the server answered page 1" in str(caught.value)
    assert [dict(r.query)["page"] for r in server.requests] == ["1", "2"]


CLAIMS: dict[str, int] = {"total": 2, "page_size": 1, "pages": 5, "items": 1}


def test_a_server_claiming_more_pages_than_its_total_is_not_walked_forever(
    kms: Any, server: FakeKMSServer
) -> None:
    # total=2 at page_size=1 allows 2 pages; page 2 still says more follow.
    server.inject("kms_list", StatusFault(200, body=page_body(1, **CLAIMS)), times=1)
    server.inject("kms_list", StatusFault(200, body=page_body(2, **CLAIMS)), times=1)
    with pytest.raises(ResponseValidationError) as caught:
        kms.iter_kms_list(page_size=1)
    assert "total=2 with page_size=1 allows only 2" in str(caught.value)
    assert server.route_counts == {"kms_list": 2}


def test_a_total_that_grows_while_walking_does_not_extend_the_walk(
    kms: Any, server: FakeKMSServer
) -> None:
    server.inject(
        "kms_list",
        StatusFault(200, body=page_body(1, total=2, page_size=1, pages=2, items=1)),
        times=1,
    )
    server.inject(
        "kms_list",
        StatusFault(200, body=page_body(2, total=100, page_size=1, pages=100, items=1)),
        times=1,
    )
    with pytest.raises(ResponseValidationError, match="allows only 2"):
        kms.iter_kms_list(page_size=1)
    assert server.route_counts == {"kms_list": 2}


async def test_iterators_stop_on_a_page_echo_with_aioresponses(
    mocked: Any, mock_client: AsyncKMSClient
) -> None:
    body = page_body(1, total=50, page_size=20, pages=3, items=20)
    mocked.get(re.compile(re.escape(MOCK_BASE) + r"/kms\?.*"), payload=body, repeat=True)
    seen: list[str] = []

    async def walk() -> None:
        async for item in mock_client.iter_kms_list(page_size=20):
            seen.append(item.id)

    with pytest.raises(ResponseValidationError):
        await walk()
    assert len(seen) == 20  # page 1's items, then the refusal instead of page 1 again
    assert [dict(url.query)["page"] for _m, url, _k in mocked.sent()] == ["1", "2"]
