"""`Account` against scripted HTTP answers: requests sent, errors raised, retries, config."""

from __future__ import annotations

import base64
import email.utils
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from engine.backend.v1 import Account, Credentials, RetryPolicy, classify, encode_add_contacts
from engine.backend.v1.codec import ATOM_NS, CTCT_NS, merge_contact_lists, parse_contact_entry
from engine.errors import (
    AccessDeniedError,
    ApiError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ConflictError,
    ConnectionLostError,
    DoNotMailError,
    FatalApiError,
    MalformedResponseError,
    NotFoundError,
    QuotaExhaustedError,
    ServerError,
    ThrottledError,
    UnsupportedMediaError,
)

Captured = Callable[[str], bytes]
MakeAccount = Callable[..., Account]

BASE = "https://api.example.test/ws/customers/acme/"
ID = "http://api.constantcontact.com/ws/customers/acme"
XML = "application/atom+xml"
HTML = "text/html;charset=utf-8"
THROTTLE_BODY = "<html><body>Your API requests are currently being refused</body></html>"
QUOTA_BODY = '[{"error_key":"mashery.not.authorized.over.ratelimit","error_message":"daily quota"}]'


# --- documents the fake server answers with ---------------------------------------------


def lists_feed(entries: list[tuple[str, str]], links: list[tuple[str, str | None]]) -> str:
    """A lists feed with `(key, name)` entries and `(href, rel)` links in the given order."""
    link_xml = "".join(
        f'<link href="{href}"' + (f' rel="{rel}"' if rel else "") + " />" for href, rel in links
    )
    entry_xml = "".join(
        f'<entry><id>{ID}/lists/{key}</id><title type="text">{name}</title>'
        f'<content type="application/vnd.ctct+xml"><ContactList xmlns="{CTCT_NS}" '
        f'id="{ID}/lists/{key}"><Name>{name}</Name><SortOrder>99</SortOrder></ContactList>'
        "</content></entry>"
        for key, name in entries
    )
    return f'<?xml version="1.0"?><feed xmlns="{ATOM_NS}">{link_xml}{entry_xml}</feed>'


def contacts_feed(found: list[tuple[str, str]]) -> str:
    """A search/contacts feed with `(contact id, email)` summary entries."""
    entries = "".join(
        f"<entry><id>{ID}/contacts/{key}</id>"
        f'<content type="application/vnd.ctct+xml"><Contact xmlns="{CTCT_NS}" '
        f'id="{ID}/contacts/{key}"><Status>Active</Status><EmailAddress>{mail}</EmailAddress>'
        "</Contact></content></entry>"
        for key, mail in found
    )
    return f'<feed xmlns="{ATOM_NS}"><link href="contacts" rel="first" />{entries}</feed>'


def contact_entry(key: str, mail: str) -> str:
    """A full contact entry, as the 201 of POST contacts or a GET contacts/{id}."""
    return (
        f'<entry xmlns="{ATOM_NS}"><id>{ID}/contacts/{key}</id>'
        f'<content type="application/vnd.ctct+xml"><Contact xmlns="{CTCT_NS}" '
        f'id="{ID}/contacts/{key}"><Status>Active</Status><EmailAddress>{mail}</EmailAddress>'
        f'<ContactLists><ContactList id="{ID}/lists/1" /></ContactLists></Contact></content>'
        "</entry>"
    )


def activity_entry(key: str, status: str, errors: list[tuple[int, str, str]]) -> str:
    """An activity entry with `(line, email, message)` errors."""
    error_xml = "".join(
        f"<Error><LineNumber>{line}</LineNumber><EmailAddress>{mail}</EmailAddress>"
        f"<Message>{message}</Message></Error>"
        for line, mail, message in errors
    )
    return (
        f'<entry xmlns="{ATOM_NS}"><id>{ID}/activities/{key}</id>'
        f'<content type="application/vnd.ctct+xml"><Activity xmlns="{CTCT_NS}" '
        f'id="{ID}/activities/{key}"><Type>ADD_CONTACTS</Type><Status>{status}</Status>'
        f"<Errors>{error_xml}</Errors><TransactionCount>2</TransactionCount></Activity>"
        "</content></entry>"
    )


# --- helpers on what aioresponses saw ---------------------------------------------------


def sent(m: aioresponses, method: str, url: str) -> list[Any]:
    """The calls made to one method and URL (query order and encoding normalised)."""
    target = URL(url)
    return m.requests.get((method, target.with_query(sorted(target.query.items()))), [])


def total(m: aioresponses) -> int:
    """How many requests were sent, to any URL."""
    return sum(len(calls) for calls in m.requests.values())


def urls(m: aioresponses) -> list[str]:
    """The distinct URLs requested, in first-request order."""
    return [str(url) for _, url in m.requests]


@pytest.fixture
def throttles(account: Account, monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """The retry_after of each throttle the account reported to its governor.

    The governor's reaction itself (pause, slower rate) is tested in test_governor.py; here
    it would make the retries wait in real time.
    """
    seen: list[float | None] = []
    monkeypatch.setattr(account.governor, "on_throttle", seen.append)
    return seen


# --- authentication ---------------------------------------------------------------------


def test_credentials_authorization_value() -> None:
    """The Authorization value is Basic base64("APIKEY%username:password")."""
    expected = "Basic " + base64.b64encode(b"K%acme:P").decode()
    assert Credentials("acme", "K", "P").auth() == expected


async def test_every_request_carries_basic_auth(m: aioresponses, account: Account) -> None:
    """Each request sends Authorization: Basic base64("K%acme:P") and Accept: atom+xml."""
    m.get(BASE + "lists", body=lists_feed([], []), content_type=XML)
    m.post(BASE + "contacts", status=201, body=contact_entry("9", "a@x.io"), content_type=XML)
    await account.lists()
    await account.create_contact("a@x.io", [f"{ID}/lists/1"])
    assert total(m) == 2
    for calls in m.requests.values():
        headers = calls[0].kwargs["headers"]
        assert headers["Authorization"] == "Basic " + base64.b64encode(b"K%acme:P").decode()
        assert headers["Accept"] == XML
        assert calls[0].kwargs["allow_redirects"] is False


# --- classify: every status path --------------------------------------------------------


def _classify(status: int, **kwargs: Any) -> ApiError:
    args: dict[str, Any] = {"method": "GET", "url": BASE + "lists", "kind": "lists"}
    args.update(kwargs)
    return classify(status, **args)


@pytest.mark.parametrize(
    ("status", "kwargs", "expected", "message"),
    [
        pytest.param(
            400,
            {"body": b"at least on valid ContactList"},
            BadRequestError,
            "at least on valid ContactList",
            id="400",
        ),
        pytest.param(401, {}, AuthenticationError, "APIKEY%username", id="401"),
        pytest.param(
            403,
            {"kind": "service", "url": BASE},
            AccessDeniedError,
            "must end with a slash",
            id="403-service",
        ),
        pytest.param(
            403,
            {"url": "http://127.0.0.1/ws/customers/acme/lists"},
            AccessDeniedError,
            "https",
            id="403-http",
        ),
        pytest.param(
            403,
            {"kind": "contact-write", "method": "PUT"},
            DoNotMailError,
            "Do Not Mail",
            id="403-contact-write",
        ),
        pytest.param(
            403, {"body": THROTTLE_BODY.encode()}, ThrottledError, "throttling", id="403-throttle"
        ),
        pytest.param(
            403, {"body": QUOTA_BODY.encode()}, QuotaExhaustedError, "quota", id="403-quota"
        ),
        pytest.param(
            403,
            {"body": b"<p>You don't have permission</p>"},
            AccessDeniedError,
            "another account",
            id="403-other",
        ),
        pytest.param(404, {}, NotFoundError, "not found", id="404"),
        pytest.param(409, {}, ConflictError, "exists", id="409"),
        pytest.param(415, {}, UnsupportedMediaError, "content type", id="415"),
        pytest.param(429, {}, ThrottledError, "throttling", id="429"),
        pytest.param(
            429, {"body": b"daily limit reached"}, QuotaExhaustedError, "quota", id="429-quota"
        ),
        pytest.param(
            500, {"body": b"<h1>HTTP Status 500 - boom</h1>"}, ServerError, "boom", id="500"
        ),
        pytest.param(503, {}, ServerError, "server error", id="503"),
        pytest.param(
            503,
            {"headers": {"Retry-After": "3"}},
            ThrottledError,
            "overloaded",
            id="503-retry-after",
        ),
        pytest.param(418, {}, FatalApiError, "unexpected answer 418", id="other"),
    ],
)
def test_classify(
    status: int, kwargs: dict[str, Any], expected: type[ApiError], message: str
) -> None:
    """Each status (and 403 context) maps to the error that says what to do next."""
    error = _classify(status, **kwargs)
    assert type(error) is expected
    assert message in error.message
    assert error.status == status


def test_classify_keeps_a_trimmed_text_excerpt_of_html_bodies() -> None:
    """Error bodies are reduced to trimmed text, never parsed as XML, at most 500 chars."""
    body = b"<html><head><title>Apache Tomcat</title></head><body><h1>HTTP Status 400 -" + (
        b" x" * 2000 + b"</body></html>"
    )
    error = _classify(400, body=body)
    assert error.body.startswith("Apache Tomcat HTTP Status 400 - x x")
    assert len(error.body) <= 500
    assert "<" not in error.body


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param("7", 7.0, id="seconds"),
        pytest.param("1.5", 1.5, id="fraction"),
        pytest.param("-3", 0.0, id="negative"),
        pytest.param("soon", None, id="junk"),
        pytest.param("inf", None, id="infinite"),
        pytest.param("nan", None, id="nan"),
        pytest.param("", None, id="empty"),
    ],
)
def test_classify_reads_retry_after(header: str, expected: float | None) -> None:
    """Retry-After in seconds is read; junk is ignored rather than crashing the request."""
    error = _classify(429, headers={"Retry-After": header})
    assert isinstance(error, ThrottledError)
    assert error.retry_after == expected


def test_classify_reads_retry_after_as_http_date() -> None:
    """Retry-After as an HTTP date gives the seconds until then."""
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    error = _classify(429, headers={"Retry-After": when})
    assert isinstance(error, ThrottledError)
    assert error.retry_after == pytest.approx(30, abs=2)


# --- status paths through the client: exactly what is sent ------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(400, BadRequestError, id="400"),
        pytest.param(401, AuthenticationError, id="401"),
        pytest.param(404, NotFoundError, id="404"),
        pytest.param(409, ConflictError, id="409"),
        pytest.param(415, UnsupportedMediaError, id="415"),
    ],
)
async def test_client_errors_are_sent_once(
    m: aioresponses, account: Account, status: int, expected: type[ApiError]
) -> None:
    """400, 401, 404, 409 and 415 raise their error after one request: no retry."""
    m.post(BASE + "contacts", status=status, body="<h1>no</h1>", content_type=HTML, repeat=True)
    with pytest.raises(expected) as caught:
        await account.create_contact("a@x.io", [f"{ID}/lists/1"])
    assert total(m) == 1
    assert account.retries == 0
    assert (caught.value.status, caught.value.method, caught.value.url) == (
        status,
        "POST",
        BASE + "contacts",
    )


async def test_401_explains_the_login_form(m: aioresponses, account: Account) -> None:
    """A 401 stops with a message naming the APIKEY%username login and the variables."""
    m.get(BASE + "lists", status=401, body="HTTP Status 401 - Unable to authenticate user")
    with pytest.raises(AuthenticationError, match=r"APIKEY%username") as caught:
        await account.lists()
    assert "CTCT_API_KEY" in str(caught.value)
    assert "Unable to authenticate user" in caught.value.body


async def test_403_on_service_document_names_the_trailing_slash(
    m: aioresponses, account: Account
) -> None:
    """A 403 on the service document says the URL must end with a slash; sent once."""
    m.get(BASE, status=403, body="<title>403 Forbidden</title>", content_type=HTML, repeat=True)
    with pytest.raises(AccessDeniedError, match="must end with a slash"):
        await account.verify()
    assert total(m) == 1


async def test_403_over_http_names_https(m: aioresponses, make_account: MakeAccount) -> None:
    """A 403 answered over plain http says the API wants https; sent once."""
    base = "http://127.0.0.1:8080/ws/customers/acme/"
    m.get(base + "lists", status=403, body="Forbidden", repeat=True)
    async with make_account(base_url=base, allow_http=True) as account:
        with pytest.raises(AccessDeniedError, match="https") as caught:
            await account.lists()
    assert "plain http" in caught.value.message
    assert total(m) == 1


async def test_403_on_put_contact_is_do_not_mail(m: aioresponses, account: Account) -> None:
    """A 403 on PUT contacts/{id} raises DoNotMailError after one request."""
    entry_body = contact_entry("7", "dnm@x.io").encode()
    entry = parse_contact_entry(entry_body)
    m.put(BASE + "contacts/7", status=403, body="Forbidden", repeat=True)
    with pytest.raises(DoNotMailError):
        await account.put_contact(entry, entry_body)
    assert total(m) == 1


async def test_403_throttle_is_retried(
    m: aioresponses, account: Account, throttles: list[float | None]
) -> None:
    """A 403 whose body names the rate limit is a throttle: the governor hears, and it retries."""
    m.get(BASE + "lists", status=403, body=THROTTLE_BODY, content_type=HTML)
    m.get(BASE + "lists", body=lists_feed([("1", "A")], []), content_type=XML)
    assert [item.key for item in await account.lists()] == ["1"]
    assert total(m) == 2
    assert throttles == [None]
    assert account.retries == 1


async def test_403_daily_quota_is_not_retried(
    m: aioresponses, account: Account, throttles: list[float | None]
) -> None:
    """A 403 whose body names the daily quota stops the run at once."""
    m.get(BASE + "lists", status=403, body=QUOTA_BODY, repeat=True)
    with pytest.raises(QuotaExhaustedError, match="resets"):
        await account.lists()
    assert total(m) == 1
    assert throttles == []


async def test_429_without_retry_after(
    m: aioresponses, account: Account, throttles: list[float | None], sleeps: list[float]
) -> None:
    """A 429 without Retry-After is retried after the policy's own backoff."""
    m.get(BASE + "lists", status=429, body="Too Many Requests")
    m.get(BASE + "lists", body=lists_feed([], []), content_type=XML)
    assert await account.lists() == []
    assert total(m) == 2
    assert throttles == [None]
    assert sleeps == [0.0]


async def test_429_with_retry_after(
    m: aioresponses, account: Account, throttles: list[float | None], sleeps: list[float]
) -> None:
    """A 429 with Retry-After: 7 waits 7 s before the retry and tells the governor so."""
    m.get(BASE + "lists", status=429, headers={"Retry-After": "7"})
    m.get(BASE + "lists", body=lists_feed([], []), content_type=XML)
    assert await account.lists() == []
    assert throttles == [7.0]
    assert sleeps == [7.0]


async def test_429_exhausted_raises_throttled(
    m: aioresponses, account: Account, throttles: list[float | None]
) -> None:
    """A 429 on every attempt ends in ThrottledError carrying retry_after, after 3 requests."""
    m.get(BASE + "lists", status=429, headers={"Retry-After": "2"}, repeat=True)
    with pytest.raises(ThrottledError) as caught:
        await account.lists()
    assert caught.value.retry_after == 2.0
    assert total(m) == 3
    assert throttles == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_retried_then_success(m: aioresponses, account: Account, status: int) -> None:
    """5xx twice, then 200: the third request succeeds."""
    m.get(BASE + "lists", status=status, body="boom", repeat=2)
    m.get(BASE + "lists", body=lists_feed([("3", "C")], []), content_type=XML)
    assert [item.name for item in await account.lists()] == ["C"]
    assert total(m) == 3
    assert (account.retries, account.requests_sent) == (2, 3)


async def test_500_exhausted_raises_server_error(m: aioresponses, account: Account) -> None:
    """500 on every attempt ends in ServerError after exactly `attempts` requests."""
    m.get(BASE + "lists", status=500, body="<h1>HTTP Status 500 - boom</h1>", repeat=True)
    with pytest.raises(ServerError, match="boom") as caught:
        await account.lists()
    assert caught.value.status == 500
    assert total(m) == 3


@pytest.mark.parametrize(
    "exception",
    [
        pytest.param(aiohttp.ClientConnectionError("Connection reset by peer"), id="reset"),
        pytest.param(aiohttp.ServerDisconnectedError(), id="disconnected"),
        pytest.param(TimeoutError(), id="timeout"),
        pytest.param(ConnectionRefusedError(111, "refused"), id="refused"),
    ],
)
async def test_connection_errors_retried_then_lost(
    m: aioresponses, account: Account, exception: Exception
) -> None:
    """A request that never gets an answer is retried, then raises ConnectionLostError."""
    m.get(BASE + "lists", exception=exception, repeat=True)
    with pytest.raises(ConnectionLostError, match="no answer") as caught:
        await account.lists()
    assert caught.value.status is None
    assert total(m) == 3


async def test_connection_error_then_success(m: aioresponses, account: Account) -> None:
    """One dropped connection is retried transparently."""
    m.get(BASE + "lists", exception=aiohttp.ClientConnectionError("reset"))
    m.get(BASE + "lists", body=lists_feed([("1", "A")], []), content_type=XML)
    assert len(await account.lists()) == 1
    assert total(m) == 2


async def test_html_on_200_is_malformed(m: aioresponses, account: Account) -> None:
    """An HTML page answered with 200 (a proxy, a login page) raises MalformedResponseError."""
    m.get(BASE + "lists", body="<html><body>Welcome</body></html>", content_type=HTML, repeat=True)
    with pytest.raises(MalformedResponseError, match="HTML") as caught:
        await account.lists()
    assert caught.value.status == 200


async def test_unparseable_200_is_malformed(m: aioresponses, account: Account) -> None:
    """A truncated XML body raises MalformedResponseError carrying the request context."""
    m.get(BASE + "lists", body='<feed xmlns="x"><entry><id>', content_type=XML, repeat=True)
    with pytest.raises(MalformedResponseError) as caught:
        await account.lists()
    assert (caught.value.status, caught.value.method, caught.value.url) == (
        200,
        "GET",
        BASE + "lists",
    )


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="streamed"),
        pytest.param({"Content-Length": "5000"}, id="content-length"),
    ],
)
async def test_oversize_body_refused(
    m: aioresponses, make_account: MakeAccount, headers: dict[str, str]
) -> None:
    """A body larger than max_response_bytes is refused, never parsed."""
    body = lists_feed([(str(n), f"List {n}") for n in range(50)], [])
    assert len(body) > 1000
    m.get(BASE + "lists", body=body, content_type=XML, headers=headers, repeat=True)
    async with make_account(max_response_bytes=1000) as account:
        with pytest.raises(MalformedResponseError, match="over the cap of 1000"):
            await account.lists()


# --- pagination ---------------------------------------------------------------------------


async def test_lists_follows_next_links_wherever_they_sit(
    m: aioresponses, account: Account
) -> None:
    """lists() follows rel="next" as the last or first link, absolute or relative."""
    # Page 1: next last, absolute http URL on the real API host.
    m.get(
        BASE + "lists",
        body=lists_feed(
            [("active", "Active"), ("1", "One")],
            [
                (f"{ID}/lists", None),
                (f"{ID}/lists", "self"),
                ("/ws/customers/acme/lists", "first"),
                ("/ws/customers/acme/lists", "current"),
                ("http://api.constantcontact.com/ws/customers/acme/lists?next=g24um-fy", "next"),
            ],
        ),
        content_type=XML,
    )
    # Page 2: next first, in the relative 2008 form.
    m.get(
        BASE + "lists?next=g24um-fy",
        body=lists_feed([("2", "Two")], [("lists?next=6", "next"), ("lists", "self")]),
        content_type=XML,
    )
    # Page 3: the third link, server-relative.
    m.get(
        BASE + "lists?next=6",
        body=lists_feed(
            [("3", "Three")],
            [("lists", None), ("lists", "self"), ("/ws/customers/acme/lists?next=x7", "next")],
        ),
        content_type=XML,
    )
    m.get(
        BASE + "lists?next=x7",
        body=lists_feed([("4", "Four")], [("lists", "first")]),
        content_type=XML,
    )
    lists = await account.lists()
    assert [item.key for item in lists] == ["active", "1", "2", "3", "4"]
    assert urls(m) == [
        BASE + "lists",
        BASE + "lists?next=g24um-fy",  # our host and https, not the href's
        BASE + "lists?next=6",
        BASE + "lists?next=x7",
    ]


@pytest.mark.parametrize(
    "href",
    [
        pytest.param("/ws/customers/other/lists?next=1", id="other-account"),
        pytest.param("https://evil.example/ws/customers/other/lists", id="other-host-and-account"),
        pytest.param("/ws/customers/acme/../other/lists?next=1", id="dot-segments"),
        pytest.param("/ws/customers/acme/%2e%2e/other/lists", id="encoded-dot-segments"),
        pytest.param("/ws/customers/acmex/lists", id="prefix-of-other-account"),
        pytest.param("../../other/lists", id="relative-escape"),
    ],
)
async def test_next_link_leaving_the_account_refused(
    m: aioresponses, account: Account, href: str
) -> None:
    """A next link outside the account's base path is refused before any request is sent."""
    m.get(BASE + "lists", body=lists_feed([("1", "A")], [(href, "next")]), content_type=XML)
    m.get(re.compile(r".*"), body=lists_feed([], []), content_type=XML, repeat=True)
    with pytest.raises(MalformedResponseError, match="leaves the account"):
        await account.lists()
    assert total(m) == 1


async def test_next_link_loop_refused(m: aioresponses, account: Account) -> None:
    """A feed whose next link points back to a page already read is refused."""
    m.get(BASE + "lists", body=lists_feed([("1", "A")], [("lists?next=2", "next")]))
    m.get(BASE + "lists?next=2", body=lists_feed([("2", "B")], [("lists", "next")]))
    with pytest.raises(MalformedResponseError, match="loops"):
        await account.lists()
    assert total(m) == 2


async def test_list_members_pages(m: aioresponses, account: Account, captured: Captured) -> None:
    """list_members yields every member of every page of lists/{id}/members."""
    first = captured("memberscollection.xml").replace(
        b'rel="current" />',
        b'rel="current" />\n<link href="/ws/customers/acme/lists/2/members?next=q1" rel="next" />',
    )
    m.get(BASE + "lists/2/members", body=first, content_type=XML)
    m.get(BASE + "lists/2/members?next=q1", body=captured("nocontent.xml"), content_type=XML)
    members = [member async for member in account.list_members(f"{ID}/lists/2")]
    assert len(members) == 50
    assert members[0].email == "winston_stiedemann@mcdermottrobel.uk"
    assert total(m) == 2


# --- search ---------------------------------------------------------------------------------


def _echo_search(found_every: int) -> Callable[..., CallbackResult]:
    """A search answer that finds every `found_every`-th email it was asked for."""

    def answer(url: URL, **kwargs: Any) -> CallbackResult:
        asked = url.query.getall("email")
        found = [
            (str(1000 + i), mail)
            for i, mail in enumerate(asked)
            if int(mail[4:7]) % found_every == 0
        ]
        return CallbackResult(body=contacts_feed(found), content_type=XML)

    return answer


async def test_search_batches_of_fifty(m: aioresponses, account: Account) -> None:
    """120 emails go out as 3 searches of ≤ 50 lower-cased emails; results keyed lower-case."""
    emails = [f"User{n:03d}@Example.COM" for n in range(120)]
    m.get(re.compile(re.escape(BASE + "contacts?")), callback=_echo_search(3), repeat=True)
    found = await account.search_contacts(emails)

    assert total(m) == 3
    batches = [url.query.getall("email") for (_, url) in m.requests]
    assert [len(batch) for batch in batches] == [50, 50, 20]
    assert sorted(mail for batch in batches for mail in batch) == sorted(
        mail.lower() for mail in emails
    )
    assert set(found) == {f"user{n:03d}@example.com" for n in range(0, 120, 3)}
    assert found["user003@example.com"].email == "user003@example.com"


async def test_search_dedupes_and_trims(m: aioresponses, account: Account) -> None:
    """The same email in several spellings is searched once."""
    m.get(re.compile(re.escape(BASE + "contacts?")), callback=_echo_search(1), repeat=True)
    found = await account.search_contacts(["user001@x.io", " USER001@X.IO ", "User001@x.io"])
    assert list(found) == ["user001@x.io"]
    ((_, url),) = m.requests
    assert url.query.getall("email") == ["user001@x.io"]


async def test_search_500_twice_is_none_found(m: aioresponses, account: Account) -> None:
    """A search answered 500 twice is read as "none found"; the next batch still runs."""
    emails = [f"user{n:03d}@x.io" for n in range(60)]
    first = BASE + "contacts?" + "&".join(f"email=user{n:03d}%40x.io" for n in range(50))
    m.get(first, status=500, body="boom", repeat=2)
    m.get(re.compile(re.escape(BASE + "contacts?")), callback=_echo_search(1), repeat=True)
    found = await account.search_contacts(emails)
    assert len(sent(m, "GET", first)) == 2
    assert sorted(found) == emails[50:]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(401, AuthenticationError, id="401"),
        pytest.param(400, BadRequestError, id="400"),
        pytest.param(429, ThrottledError, id="429"),
    ],
)
async def test_search_other_errors_are_not_none_found(
    m: aioresponses,
    account: Account,
    throttles: list[float | None],
    status: int,
    expected: type[ApiError],
) -> None:
    """Only a 5xx search is read as "none found": other failures raise."""
    m.get(re.compile(r".*"), status=status, body="no", repeat=True)
    with pytest.raises(expected):
        await account.search_contacts(["user005@x.io"])


async def test_search_500_once_is_retried(m: aioresponses, account: Account) -> None:
    """A search answered 500 once is retried and its results used."""
    m.get(re.compile(r".*"), status=500, body="boom")
    m.get(re.compile(r".*"), body=contacts_feed([("5", "user005@x.io")]), content_type=XML)
    assert list(await account.search_contacts(["user005@x.io"])) == ["user005@x.io"]
    assert total(m) == 2


async def test_search_ignores_entries_not_asked_for(m: aioresponses, account: Account) -> None:
    """An entry for an email that was not searched is not reported as found."""
    m.get(re.compile(r".*"), body=contacts_feed([("5", "someone@else.io")]), content_type=XML)
    assert await account.search_contacts(["user005@x.io"]) == {}


# --- writes -------------------------------------------------------------------------------


async def test_create_contact(m: aioresponses, account: Account) -> None:
    """create_contact POSTs an atom+xml entry (lower-cased email) and returns the new id."""
    m.post(BASE + "contacts", status=201, body=contact_entry("417", "new@x.io"), content_type=XML)
    new_id = await account.create_contact(" New@X.io ", [f"{ID}/lists/3"], {"FirstName": "Ann"})
    assert new_id == f"{ID}/contacts/417"
    (call,) = sent(m, "POST", BASE + "contacts")
    assert call.kwargs["headers"]["Content-Type"] == XML
    body = call.kwargs["data"]
    assert b"<EmailAddress>new@x.io</EmailAddress>" in body
    assert b"<OptInSource>ACTION_BY_CUSTOMER</OptInSource>" in body
    assert f'<ContactList id="{ID}/lists/3" />'.encode() in body


async def test_get_and_put_contact(m: aioresponses, account: Account, captured: Captured) -> None:
    """get_contact GETs contacts/{id}; put_contact PUTs the body as atom+xml to the same key."""
    m.get(BASE + "contacts/2", body=captured("single_contact_by_id.xml"), content_type=XML)
    m.put(BASE + "contacts/2", status=204)
    entry = await account.get_contact("http://api.constantcontact.com/ws/customers/acme/contacts/2")
    body = merge_contact_lists(entry, {"7": f"{ID}/lists/7"})
    assert body is not None
    await account.put_contact(entry, body)
    (call,) = sent(m, "PUT", BASE + "contacts/2")
    assert call.kwargs["headers"]["Content-Type"] == XML
    assert call.kwargs["data"] == body


async def test_create_list(m: aioresponses, account: Account, captured: Captured) -> None:
    """create_list POSTs the list entry and parses the 201 body."""
    m.post(BASE + "lists", status=201, body=captured("new_list.xml"), content_type=XML)
    created = await account.create_list("Test list 5")
    assert (created.key, created.name) == ("15", "Test list 5")
    (call,) = sent(m, "POST", BASE + "lists")
    assert b"<Name>Test list 5</Name>" in call.kwargs["data"]


async def test_submit_activity(m: aioresponses, account: Account) -> None:
    """submit_activity POSTs the form body, form-encoded, and parses the 201 activity."""
    body = encode_add_contacts([{"EmailAddress": "a@x.io"}], [f"{ID}/lists/3"])
    m.post(
        BASE + "activities",
        status=201,
        body=activity_entry("a07e1abcdefghijklmn", "PENDING", []),
        content_type=XML,
    )
    activity = await account.submit_activity(body)
    assert (activity.key, activity.status, activity.finished) == (
        "a07e1abcdefghijklmn",
        "PENDING",
        False,
    )
    (call,) = sent(m, "POST", BASE + "activities")
    assert call.kwargs["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(call.kwargs["data"].decode())["activityType"] == ["ADD_CONTACTS"]


async def test_get_activity(m: aioresponses, account: Account) -> None:
    """get_activity parses Status, TransactionCount and each line Error."""
    m.get(
        BASE + "activities/a07e1abcdefghijklmn",
        body=activity_entry(
            "a07e1abcdefghijklmn",
            "COMPLETE",
            [(3, "bad@@x", "Invalid email address"), (4, "dnm@x.io", "Do Not Mail")],
        ),
        content_type=XML,
    )
    activity = await account.get_activity(f"{ID}/activities/a07e1abcdefghijklmn")
    assert (activity.status, activity.transaction_count, activity.finished) == ("COMPLETE", 2, True)
    assert [(e.line_number, e.email, e.message) for e in activity.errors] == [
        (3, "bad@@x", "Invalid email address"),
        (4, "dnm@x.io", "Do Not Mail"),
    ]


# --- resolving list names -----------------------------------------------------------------


async def test_resolve_lists(m: aioresponses, account: Account, captured: Captured) -> None:
    """Names resolve to lists by exact Name over the whole feed, in the order asked."""
    m.get(BASE + "lists", body=captured("contactlistscollection.xml"), content_type=XML)
    resolved = await account.resolve_lists(["Clients", "General Interest", "Clients"])
    assert list(resolved) == ["Clients", "General Interest"]
    assert resolved["Clients"].id.endswith("/lists/2")


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(["Clients", "Customers"], id="unknown"),
        pytest.param(["Do Not Mail"], id="system-list"),
        pytest.param(["Active"], id="system-active"),
    ],
)
async def test_resolve_lists_refuses_unknown_and_system_lists(
    m: aioresponses, account: Account, captured: Captured, names: list[str]
) -> None:
    """An unknown or system list name raises ConfigError listing the account's user lists."""
    m.get(BASE + "lists", body=captured("contactlistscollection.xml"), content_type=XML)
    with pytest.raises(ConfigError) as caught:
        await account.resolve_lists(names)
    message = str(caught.value)
    assert repr(names[-1]) in message
    assert "'Clients', 'General Interest'" in message
    assert "'Removed'" not in message


async def test_resolve_lists_asks_did_you_mean_for_a_name_in_the_wrong_case(
    m: aioresponses, account: Account, captured: Captured
) -> None:
    """A name that differs from a list's only in case: "did you mean", no --create-lists."""
    m.get(BASE + "lists", body=captured("contactlistscollection.xml"), content_type=XML)
    with pytest.raises(ConfigError) as caught:
        await account.resolve_lists(["clients"])
    assert "no list 'clients'; did you mean 'Clients'?" in str(caught.value)
    assert "--create-lists" not in str(caught.value)


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param(
            {"base_url": "http://api.example.test/ws/customers/acme/"}, "https", id="http-remote"
        ),
        pytest.param(
            {"base_url": "http://10.0.0.5/ws/customers/acme/", "allow_http": True},
            "non-loopback",
            id="http-remote-allowed",
        ),
        pytest.param(
            {"base_url": "http://127.0.0.1:8080/ws/customers/acme/"},
            "allow_http",
            id="http-loopback-not-allowed",
        ),
        pytest.param({"base_url": "ftp://api.example.test/ws/"}, "https", id="ftp"),
        pytest.param({"base_url": "https:///ws/customers/acme/"}, "https", id="no-host"),
        pytest.param(
            {"base_url": "https://K%25acme:P@api.example.test/ws/customers/acme/"},
            "environment",
            id="credentials-in-url",
        ),
        pytest.param({"ca_file": "/nonexistent/ca.pem"}, "CA file", id="missing-ca"),
        pytest.param({"timeout": 0}, "timeout", id="zero-timeout"),
    ],
)
def test_bad_configuration_refused(
    make_account: MakeAccount, kwargs: dict[str, Any], match: str
) -> None:
    """Configurations that would leak credentials or cannot work raise ConfigError."""
    with pytest.raises(ConfigError, match=match):
        make_account(**kwargs)


@pytest.mark.parametrize(
    "base_url",
    [
        pytest.param("http://127.0.0.1:8080/ws/customers/acme/", id="ipv4"),
        pytest.param("http://localhost:8080/ws/customers/acme/", id="localhost"),
        pytest.param("http://[::1]:8080/ws/customers/acme/", id="ipv6"),
    ],
)
def test_http_to_loopback_allowed_when_asked(make_account: MakeAccount, base_url: str) -> None:
    """Plain http to a loopback simulator works with allow_http=True."""
    assert make_account(base_url=base_url, allow_http=True).base_url == base_url


def test_trailing_slash_added(make_account: MakeAccount) -> None:
    """A base URL without its trailing slash gets one (without it the API answers 403)."""
    account = make_account(base_url="https://api.example.test/ws/customers/acme")
    assert account.base_url == BASE
    assert account.url("lists") == BASE + "lists"


def test_default_base_url() -> None:
    """Without a base URL the account talks https to api.constantcontact.com as its user."""
    account = Account(Credentials("acme", "K", "P"))
    assert account.base_url == "https://api.constantcontact.com/ws/customers/acme/"


def test_existing_ca_file_accepted(make_account: MakeAccount, tmp_path: Path) -> None:
    """An existing CA file is accepted."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked until the session opens")
    assert make_account(ca_file=ca).base_url == BASE


@pytest.mark.parametrize(
    ("args", "match"),
    [
        pytest.param(("", "K", "P"), "username", id="no-username"),
        pytest.param(("acme", "", "P"), "api key", id="no-key"),
        pytest.param(("acme", "K", ""), "password", id="no-password"),
        pytest.param(("K%acme", "K", "P"), "bare", id="login-as-username"),
        pytest.param(("acme:x", "K", "P"), ":", id="colon"),
    ],
)
def test_bad_credentials_refused(args: tuple[str, str, str], match: str) -> None:
    """Empty values and a username in login form raise ConfigError."""
    with pytest.raises(ConfigError, match=match):
        Credentials(*args)


def test_credentials_from_env() -> None:
    """from_env reads CTCT_* variables; given values win; a missing one is named."""
    env = {"CTCT_USERNAME": "acme", "CTCT_API_KEY": "K", "CTCT_PASSWORD": "P"}
    assert Credentials.from_env(env, password="Q") == Credentials("acme", "K", "Q")
    with pytest.raises(ConfigError, match="CTCT_PASSWORD"):
        Credentials.from_env({"CTCT_USERNAME": "acme", "CTCT_API_KEY": "K"})


# --- secrets (I7) ---------------------------------------------------------------------------

KEY, PASSWORD = "key-5ecret-0f-acme", "pw-5ecret-0f-acme"
SECRETS = (KEY, PASSWORD, base64.b64encode(f"{KEY}%acme:{PASSWORD}".encode()).decode())


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_repr_of_credentials_and_account_hide_secrets(make_account: MakeAccount) -> None:
    """repr and str of Credentials and Account never show the key or the password."""
    credentials = Credentials("acme", KEY, PASSWORD)
    account = make_account(credentials=credentials)
    for text in (repr(credentials), str(credentials), repr(account), str(account)):
        assert "acme" in text
        _assert_no_secret(text)


@pytest.mark.parametrize(
    "base_url",
    [
        pytest.param(f"https://{KEY}%25acme:{PASSWORD}@api.example.test/ws/", id="https"),
        pytest.param(f"ftp://{KEY}%25acme:{PASSWORD}@api.example.test/ws/", id="ftp"),
        pytest.param(f"http://{KEY}%25acme:{PASSWORD}@10.1.1.1/ws/", id="http"),
    ],
)
def test_config_errors_hide_secrets_in_urls(make_account: MakeAccount, base_url: str) -> None:
    """A base URL with credentials in it is refused without echoing them."""
    with pytest.raises(ConfigError) as caught:
        make_account(base_url=base_url)
    _assert_no_secret(str(caught.value))
    _assert_no_secret(repr(caught.value))


async def test_api_errors_and_logs_hide_secrets(
    m: aioresponses,
    make_account: MakeAccount,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No error text, attribute or log line of any failed request contains a secret."""
    caplog.set_level(logging.DEBUG)
    statuses = [400, 401, 403, 404, 409, 415, 429, 500, 503]
    for status in statuses:
        m.get(BASE + f"contacts/{status}", status=status, body="nope", repeat=True)
    m.get(BASE + "contacts/1", exception=aiohttp.ClientConnectionError("reset"), repeat=True)
    errors: list[ApiError] = []
    async with make_account(credentials=Credentials("acme", KEY, PASSWORD)) as account:
        monkeypatch.setattr(account.governor, "on_throttle", lambda retry_after: None)
        for key in [*map(str, statuses), "1"]:
            with pytest.raises(ApiError) as caught:
                await account.get_contact(key)
            errors.append(caught.value)
    assert len(errors) == len(statuses) + 1
    for error in errors:
        _assert_no_secret(f"{error!s} {error!r} {error.url} {error.body} {error.message}")
    _assert_no_secret(caplog.text)
    assert "retry" in caplog.text


# --- lifecycle ------------------------------------------------------------------------------


async def test_closed_account_cannot_reopen(m: aioresponses, make_account: MakeAccount) -> None:
    """An Account cannot be reopened once closed, nor used before it is opened."""
    account = make_account()
    with pytest.raises(RuntimeError, match="async with"):
        await account.lists()
    async with account:
        assert "OPENED" in repr(account)
    assert "CLOSED" in repr(account)
    with pytest.raises(RuntimeError, match="reopen"):
        async with account:
            pass
    await account.aclose()  # idempotent


# --- on the wire: a real loopback server ----------------------------------------------------


@pytest.fixture
async def wire() -> AsyncIterator[tuple[TestServer, list[web.Request]]]:
    """A real HTTP server on 127.0.0.1 that records requests and answers an empty feed."""
    seen: list[web.Request] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(body=contacts_feed([]).encode(), content_type=XML)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    async with server:
        yield server, seen


async def test_on_the_wire(
    wire: tuple[TestServer, list[web.Request]], make_account: MakeAccount
) -> None:
    """On a real socket: Basic K%acme:P, and emails lower-cased with `@` sent as %40."""
    server, seen = wire
    base = str(server.make_url("/ws/customers/acme/"))
    async with make_account(base_url=base, allow_http=True) as account:
        assert await account.search_contacts(["Jane.Doe@Example.com", "b+c@x.io"]) == {}
    (request,) = seen
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"K%acme:P").decode()
    assert request.raw_path == (
        "/ws/customers/acme/contacts?email=jane.doe%40example.com&email=b%2Bc%40x.io"
    )


def test_an_error_line_leaves_the_query_and_its_emails_out() -> None:
    """An API error names the request without its query string: no email ends up in logs."""
    error = ServerError(
        "server error",
        status=500,
        method="GET",
        url=BASE + "contacts?email=jane%40example.com&email=joe%40example.com",
    )
    assert "example.com" not in str(error)
    assert str(error) == f"500 server error (GET {BASE}contacts?…)"


async def test_a_certificate_not_signed_by_the_given_ca_says_so(
    simulator: Any, tmp_path: Path
) -> None:
    """With --ca-file given, a certificate from another CA is named as such, not "pass one"."""
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    config = simulator.config
    account = Account(
        Credentials(config.username, config.api_key, config.password),
        base_url=simulator.base_url,
        ca_file=other,
    )
    async with account:
        with pytest.raises(FatalApiError, match="not signed by the CA in") as caught:
            await account.verify()
    assert str(other) in str(caught.value)


async def test_an_unreachable_host_is_named_at_once_while_retrying(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused connection is logged at the first retry, naming the host, and once only."""
    account = Account(
        Credentials("acme", "key", "pw"),
        base_url="https://127.0.0.1:1/ws/customers/acme/",
        retry=RetryPolicy(attempts=3, wait_initial=0.01, wait_max=0.01, wait_jitter=0),
    )
    with caplog.at_level(logging.WARNING, logger="engine"):
        async with account:
            with pytest.raises(ConnectionLostError, match=r"no answer from 127\.0\.0\.1"):
                await account.verify()
            with pytest.raises(ConnectionLostError):
                await account.verify()
    told = [r.getMessage() for r in caplog.records if "no answer from 127.0.0.1" in r.getMessage()]
    assert len(told) == 1
    assert "retrying" in told[0]


async def test_plain_http_to_an_https_server_names_the_cause(simulator: Any) -> None:
    """--allow-http against an https server: the error says plain http met an https server."""
    config = simulator.config
    account = Account(
        Credentials(config.username, config.api_key, config.password),
        base_url=simulator.base_url.replace("https://", "http://"),
        allow_http=True,
        retry=RetryPolicy(attempts=1),
    )
    async with account:
        with pytest.raises(ConnectionLostError, match="an https server closes such connections"):
            await account.verify()
