"""V3Client: exact HTTP sequences (aioresponses) for the answers a simulator seldom gives,
the refusal of plain http before any request, and pages read ahead."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from aioresponses import aioresponses

from engine.backend.governor import RateGovernor
from engine.backend.v3 import FileTokenStore, OAuthEndpoints, TokenSet, V3Auth, V3Client
from engine.errors import (
    AccessDeniedError,
    BadRequestError,
    ConfigError,
    MalformedResponseError,
    QuotaExhaustedError,
)

from .conftest import FAST_RETRY, no_sleep

BASE = "https://api.example.com/v3/"
LISTS = re.compile(r"^https://api\.example\.com/v3/contact_lists.*$")


def _auth(tmp_path: Path) -> V3Auth:
    store = FileTokenStore(tmp_path / "v3.json")
    store.save(TokenSet("access-token-xyz", "refresh-token-xyz", 4e9))
    endpoints = OAuthEndpoints("client-1", auth_url="https://auth.example.com/oauth2/default/v1/")
    return V3Auth(endpoints, store=store, clock=lambda: 1e9)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[V3Client]:
    """A client of a fictitious API host (answers come from aioresponses)."""
    async with V3Client(
        _auth(tmp_path),
        base_url=BASE,
        governor=RateGovernor(rate=None),
        retry=FAST_RETRY,
        sleep=no_sleep,
    ) as opened:
        yield opened


async def test_throttled_is_retried_and_told_to_the_governor(
    client: V3Client, m: aioresponses
) -> None:
    """A 429 `throttled` object body is retried after a backoff and counted as a throttle."""
    throttled = {"error_key": "throttled", "error_message": "Too Many Requests"}
    m.get(LISTS, status=429, payload=throttled)
    m.get(LISTS, status=200, payload={"lists": []})
    assert await client.send("GET", client.url("contact_lists")) == {"lists": []}
    assert (client.requests_sent, client.retries) == (2, 1)
    assert client.governor.stats().throttles == 1


async def test_the_servers_time_is_the_date_of_its_newest_answer(
    client: V3Client, m: aioresponses
) -> None:
    """`server_time` is None before an answer, then the newest answer's `Date`; an answer
    without one keeps the last, one that cannot be read gives None."""
    assert client.server_time() is None
    m.get(LISTS, payload={"lists": []}, headers={"Date": "Tue, 10 Mar 2026 12:00:00 GMT"})
    m.get(LISTS, payload={"lists": []}, headers={"Date": "Tue, 10 Mar 2026 12:00:07 GMT"})
    m.get(LISTS, payload={"lists": []})
    m.get(LISTS, payload={"lists": []}, headers={"Date": "not a date"})
    await client.send("GET", client.url("contact_lists"))
    assert client.server_time() == 1_773_144_000.0
    await client.send("GET", client.url("contact_lists"))
    assert client.server_time() == 1_773_144_007.0
    await client.send("GET", client.url("contact_lists"))
    assert client.server_time() == 1_773_144_007.0
    await client.send("GET", client.url("contact_lists"))
    assert client.server_time() is None


async def test_quota_exceeded_stops_without_retry(client: V3Client, m: aioresponses) -> None:
    """A 429 `quota_exceeded` raises QuotaExhaustedError at once."""
    spent = {"error_key": "quota_exceeded", "error_message": "Limit Exceeded"}
    m.get(LISTS, status=429, payload=spent)
    with pytest.raises(QuotaExhaustedError, match="midnight UTC"):
        await client.send("GET", client.url("contact_lists"))
    assert client.requests_sent == 1


async def test_validation_errors_and_forbidden(client: V3Client, m: aioresponses) -> None:
    """A 400 array body gives BadRequestError with every message; a 403 AccessDeniedError;
    a 200 that is not JSON is malformed (retried, then raised)."""
    errors = [
        {"error_key": "contacts.api.validation.error", "error_message": "first_name is too long"},
        {"error_key": "contacts.api.validation.error", "error_message": "51 lists"},
    ]
    m.get(LISTS, status=400, payload=errors)
    m.get(LISTS, status=403, payload={"error_key": "forbidden", "error_message": "scope"})
    for _ in range(3):
        m.get(LISTS, status=200, body="<html>", content_type="text/html")
    with pytest.raises(BadRequestError, match="first_name is too long; 51 lists"):
        await client.send("GET", client.url("contact_lists"))
    with pytest.raises(AccessDeniedError, match="contact_data scope"):
        await client.send("GET", client.url("contact_lists"))
    with pytest.raises(MalformedResponseError):
        await client.send("GET", client.url("contact_lists"))
    assert client.requests_sent == 5


async def test_a_next_link_must_stay_under_the_api(client: V3Client) -> None:
    """Paging follows `/v3/…` hrefs on our own host and refuses one that leaves the API."""
    assert client.follow("/v3/contacts?cursor=abc") == BASE + "contacts?cursor=abc"
    with pytest.raises(MalformedResponseError):
        client.follow("/v3/../oauth2/default/v1/token")


def test_plain_http_is_refused_before_any_request(tmp_path: Path, m: aioresponses) -> None:
    """Plain http to a non-loopback host is a ConfigError (with or without allow_http), and
    to a loopback host only with allow_http; nothing is sent (no session exists yet)."""
    auth = _auth(tmp_path)
    for url in ("http://api.example.com/v3/", "http://10.0.0.5/v3/"):
        with pytest.raises(ConfigError, match="non-loopback"):
            V3Client(auth, base_url=url, allow_http=True)
    with pytest.raises(ConfigError, match="allow_http"):
        V3Client(auth, base_url="http://127.0.0.1:9/v3/")
    assert V3Client(auth, base_url="http://127.0.0.1:9/v3/", allow_http=True).base_url
    with pytest.raises(ConfigError, match="non-loopback"):
        OAuthEndpoints("c", auth_url="http://auth.example.com/oauth2/default/v1/")
    assert not m.requests


CONTACTS = re.compile(r"^https://api\.example\.com/v3/contacts.*$")


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        pytest.param(b"<html><body>Service Unavailable</body></html>", {}, id="html-as-200"),
        pytest.param(b'{"contacts": [', {}, id="truncated-json"),
        pytest.param(b"[" * 20_000 + b"]" * 20_000, {}, id="deep-nesting"),
        pytest.param(b"\xff\xfe\x00garbage", {}, id="not-utf8"),
        pytest.param(b"{}", {"Content-Type": "text/plain"}, id="wrong-content-type-ok-json"),
    ],
)
async def test_a_hostile_answer_is_a_malformed_response_never_a_crash(
    client: V3Client, m: aioresponses, body: bytes, headers: dict[str, str]
) -> None:
    """An answer that is not JSON (HTML, cut short, nested past the stack, not UTF-8) raises
    MalformedResponseError, naming no body; JSON under a wrong content type is still read."""
    m.get(CONTACTS, status=200, body=body, headers=headers, repeat=True)  # retried: garbled
    if body == b"{}":
        assert await client.send("GET", client.url("contacts")) == {}
        return
    with pytest.raises(MalformedResponseError, match="not JSON") as caught:
        await client.send("GET", client.url("contacts"))
    assert "garbage" not in str(caught.value)
    assert "<html>" not in str(caught.value)


async def test_an_oversize_answer_is_refused_before_it_is_read_whole(
    tmp_path: Path, m: aioresponses
) -> None:
    """A body over the response cap is refused (MalformedResponseError), not buffered."""
    async with V3Client(
        _auth(tmp_path),
        base_url=BASE,
        governor=RateGovernor(rate=None),
        retry=FAST_RETRY,
        sleep=no_sleep,
        max_response_bytes=1024,
    ) as small:
        body = b'{"contacts": [' + b" " * 4096 + b"]}"
        m.get(CONTACTS, status=200, body=body, repeat=True)
        with pytest.raises(MalformedResponseError, match="over the cap"):
            await small.send("GET", small.url("contacts"))


CONTACTS = re.compile(r"^https://api\.example\.com/v3/contacts.*$")


def _page(n: int, more: bool) -> dict[str, object]:
    """Page `n` of a collection of contacts, two a page, linking to page n + 1 when `more`."""
    page: dict[str, object] = {"contacts": [{"contact_id": f"{n}-{i}"} for i in range(2)]}
    if more:
        page["_links"] = {"next": {"href": f"/v3/contacts?cursor={n + 1}"}}
    return page


async def test_pages_ahead_requests_a_page_only_when_asked_and_gives_them_in_order(
    client: V3Client, m: aioresponses
) -> None:
    """The next page is requested as soon as the caller asks, before it is done with this
    one; never while it does not ask; the items are those `pages` gives, page by page."""
    for n in (1, 2, 3):
        m.get(CONTACTS, payload=_page(n, more=n < 3))
    got: list[list[str]] = []
    async with client.pages_ahead("contacts", "contacts", {"limit": "2"}) as pages:
        async for items in pages:
            await anyio.wait_all_tasks_blocked()
            sent = client.requests_sent
            assert sent == len(got) + 1  # this page only: the next is not asked for yet
            pages.ask()
            await anyio.wait_all_tasks_blocked()
            assert client.requests_sent == min(sent + 1, 3)  # asked: on its way
            got.append([item["contact_id"] for item in items])
    assert got == [["1-0", "1-1"], ["2-0", "2-1"], ["3-0", "3-1"]]
    assert client.requests_sent == 3


async def test_pages_ahead_sends_nothing_the_caller_did_not_come_to(
    client: V3Client, m: aioresponses
) -> None:
    """A caller that stops at the first page without asking leaves the rest unrequested."""
    for n in (1, 2):
        m.get(CONTACTS, payload=_page(n, more=True))
    async with client.pages_ahead("contacts", "contacts", {}) as pages:
        async for items in pages:
            assert len(items) == 2
            break
    assert client.requests_sent == 1


async def test_pages_ahead_raises_a_pages_error_when_the_caller_comes_to_it(
    client: V3Client, m: aioresponses
) -> None:
    """Page 2 answered 400: the caller has page 1 whole, then gets the BadRequestError
    itself (not an exception group), at page 2."""
    m.get(CONTACTS, payload=_page(1, more=True))
    m.get(CONTACTS, status=400, payload=[{"error_key": "x", "error_message": "bad cursor"}])
    got: list[int] = []

    async def read() -> None:
        async with client.pages_ahead("contacts", "contacts", {}) as pages:
            async for items in pages:
                pages.ask()
                got.append(len(items))

    with pytest.raises(BadRequestError, match="bad cursor"):
        await read()
    assert got == [2]


async def test_an_error_of_the_caller_leaves_pages_ahead_as_itself(
    client: V3Client, m: aioresponses
) -> None:
    """The caller's own exception comes out of the block unwrapped (not in an exception
    group), with the page it asked for done or cancelled."""
    for n in (1, 2):
        m.get(CONTACTS, payload=_page(n, more=True))

    async def read() -> None:
        async with client.pages_ahead("contacts", "contacts", {}) as pages:
            async for _items in pages:
                pages.ask()
                raise KeyError("the caller's")

    with pytest.raises(KeyError, match="the caller's"):
        await read()


async def test_leaving_pages_ahead_cancels_the_request_still_running(
    client: V3Client, m: aioresponses
) -> None:
    """A page asked for whose answer never comes does not hold up the caller that leaves."""
    started = anyio.Event()

    async def never(url: object, **kwargs: object) -> None:
        started.set()
        await anyio.sleep_forever()

    m.get(CONTACTS, payload=_page(1, more=True))
    m.get(CONTACTS, callback=never)
    with anyio.fail_after(5):
        async with client.pages_ahead("contacts", "contacts", {}) as pages:
            async for _items in pages:
                pages.ask()
                await started.wait()
                break
    assert client.requests_sent == 2
