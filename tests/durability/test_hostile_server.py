"""A hostile or broken server: malformed XML, an entity-expansion bomb, oversize bodies, wrong
content types, truncated answers. Each is classified (`MalformedResponseError`), retried,
and then either the contact is `failed` with a reason or the run stops with a clear message;
the run never crashes and memory does not grow with the body.

The server is the simulator (plain http on 127.0.0.1, port 0) with one more middleware in
front that breaks the answers a test chooses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from engine.backend.v1 import Account, Credentials, RateGovernor, RetryPolicy
from engine.errors import MalformedResponseError
from engine.pipeline.config import MigrationConfig
from engine.pipeline.run import migrate
from engine.simulator import AccountStore, SimulatorConfig, create_app

from .conftest import API_KEY, PASSWORD, USERNAME, read_report

CONFIG = SimulatorConfig(
    host="127.0.0.1",
    port=0,
    tls=False,
    username=USERNAME,
    api_key=API_KEY,
    password=PASSWORD,
    activity_delay=0.02,
    seed=3,
)
ATTEMPTS = 3
CAP = 1024 * 1024  # the client's response cap in these tests
ATOM = "application/atom+xml"
Breaker = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- broken answers ------------------------------------------------------------------------


async def malformed_xml(request: web.Request) -> web.StreamResponse:
    """200 with XML that does not parse."""
    return web.Response(body=b"<entry><content><Contact id='1'><Email", content_type=ATOM)


BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>
<entry xmlns="http://www.w3.org/2005/Atom"><title>&lol9;</title></entry>"""


async def entity_bomb(request: web.Request) -> web.StreamResponse:
    """200 with a billion-laughs document (entity expansion)."""
    return web.Response(body=BOMB, content_type=ATOM)


async def declared_oversize(request: web.Request) -> web.StreamResponse:
    """200 declaring a body of 64 MB; only the first chunks are ever sent."""
    response = web.StreamResponse(headers={"Content-Type": ATOM})
    response.content_length = 64 * CAP
    await response.prepare(request)
    await _stream(response, 4 * CAP)
    return response


async def chunked_oversize(request: web.Request) -> web.StreamResponse:
    """200, chunked, without a length: 32 MB of an endless XML text node."""
    response = web.StreamResponse(headers={"Content-Type": ATOM})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b"<entry><title>")
    await _stream(response, 32 * CAP)
    return response


async def _stream(response: web.StreamResponse, size: int) -> None:
    chunk = b"x" * 65536  # the same object every time: the server's memory stays flat
    try:
        for _ in range(size // len(chunk)):
            await response.write(chunk)
    except (ConnectionError, RuntimeError):  # the client gave up, as it should
        pass


async def html_page(request: web.Request) -> web.StreamResponse:
    """200 with an HTML page (a proxy's or a captive portal's) instead of Atom."""
    return web.Response(
        text="<html><body><h1>Welcome to the hotel Wi-Fi</h1></body></html>",
        content_type="text/html",
    )


async def json_body(request: web.Request) -> web.StreamResponse:
    """200 with a JSON body (another API version's answer)."""
    return web.json_response({"contacts": [{"id": 1}]})


async def short_content_length(request: web.Request) -> web.StreamResponse:
    """200 whose Content-Length promises more than is sent before the connection closes."""
    body = b'<entry xmlns="http://www.w3.org/2005/Atom"><id>http://x/contacts/1</id>'
    response = web.StreamResponse(headers={"Content-Type": ATOM})
    response.content_length = len(body) + 500
    await response.prepare(request)
    await response.write(body)
    _close(request)
    return response


async def closed_mid_body(request: web.Request) -> web.StreamResponse:
    """200, chunked, cut off in the middle of the document."""
    response = web.StreamResponse(headers={"Content-Type": ATOM})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b'<entry xmlns="http://www.w3.org/2005/Atom"><content><Contact>')
    _close(request)
    return response


def _close(request: web.Request) -> None:
    transport = request.transport
    assert transport is not None
    transport.abort()


#: Each breaker, with what the engine's message must say about it.
BREAKERS = [
    pytest.param(malformed_xml, "is not well-formed XML", id="malformed-xml"),
    pytest.param(entity_bomb, "declares a DOCTYPE or ENTITY; refused", id="entity-expansion-bomb"),
    pytest.param(
        declared_oversize,
        f"the response of {64 * CAP} bytes is over the cap of {CAP}",
        id="oversize-declared-content-length",
    ),
    pytest.param(
        chunked_oversize, f"the response is over the cap of {CAP} bytes", id="oversize-chunked"
    ),
    pytest.param(html_page, "expected XML, the server answered HTML", id="html-content-type"),
    pytest.param(json_body, "the response is not XML", id="json-content-type"),
    pytest.param(short_content_length, "the response was cut short", id="truncated-content-length"),
    pytest.param(closed_mid_body, "the response was cut short", id="connection-closed-mid-body"),
]


# --- the server ----------------------------------------------------------------------------


@dataclasses.dataclass
class Hostile:
    """A running hostile server.

    Attributes:
        base_url: the API base (plain http, loopback).
        store: the account behind it.
        broken: requests answered by the breaker.
    """

    base_url: str
    store: AccountStore
    broken: int = 0


@asynccontextmanager
async def hostile_server(
    breaker: Breaker, applies: Callable[[web.Request], bool], store: AccountStore | None = None
) -> AsyncIterator[Hostile]:
    """The simulator, whose answers to requests that `applies` to come from `breaker`."""
    store = store or AccountStore(CONFIG)
    app = create_app(CONFIG, store)
    server = Hostile("", store)

    @web.middleware
    async def hostile(request: web.Request, handler: Breaker) -> web.StreamResponse:
        if applies(request):
            server.broken += 1
            return await breaker(request)
        return await handler(request)

    app.middlewares.insert(0, hostile)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        await web.SockSite(runner, sock).start()
        server.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/ws/customers/{USERNAME}/"
        yield server
    finally:
        await runner.cleanup()
        sock.close()


def new_account(server: Hostile) -> Account:
    """An `Account` on the hostile server: 3 attempts, no waits, a 1 MB response cap."""
    return Account(
        Credentials(USERNAME, API_KEY, PASSWORD),
        base_url=server.base_url,
        allow_http=True,
        governor=RateGovernor(rate=None, concurrency=8),
        retry=RetryPolicy(attempts=ATTEMPTS, wait_initial=0.0, wait_max=0.0, wait_jitter=0.0),
        timeout=10.0,
        max_response_bytes=CAP,
    )


def contact_get(request: web.Request) -> bool:
    """The GET of one contact's entry."""
    return request.method == "GET" and request.path.rsplit("/", 2)[-2] == "contacts"


# --- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize(("breaker", "message"), BREAKERS)
async def test_broken_answer_is_classified_and_retried(breaker: Breaker, message: str) -> None:
    """A broken answer raises MalformedResponseError after every attempt of the retry policy."""
    store = AccountStore(CONFIG)
    contact = store.add_contact("ann@example.com", lists=[store.create_list("Alpha")])
    async with (
        hostile_server(breaker, contact_get, store) as server,
        new_account(server) as account,
    ):
        with pytest.raises(MalformedResponseError) as caught:
            await account.get_contact(str(contact))
    assert server.broken == ATTEMPTS
    assert message in caught.value.message
    assert caught.value.url.endswith(f"/contacts/{contact}")
    assert PASSWORD not in repr(caught.value)
    assert API_KEY not in str(caught.value)


@pytest.mark.parametrize(
    "breaker",
    [pytest.param(declared_oversize, id="declared"), pytest.param(chunked_oversize, id="chunked")],
)
async def test_oversize_body_does_not_grow_memory(breaker: Breaker) -> None:
    """A body far over the cap (64 MB declared, 32 MB chunked) is refused within a few MB."""
    store = AccountStore(CONFIG)
    contact = store.add_contact("ann@example.com", lists=[store.create_list("Alpha")])
    async with (
        hostile_server(breaker, contact_get, store) as server,
        new_account(server) as account,
    ):
        tracemalloc.start()
        try:
            with pytest.raises(MalformedResponseError, match="over the cap"):
                await account.get_contact(str(contact))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 4 * CAP, f"peak {peak / CAP:.1f} MB"


def seed(store: AccountStore) -> list[str]:
    """Lists Alpha and Beta, and ten members of Alpha; returns their emails."""
    alpha = store.create_list("Alpha")
    store.create_list("Beta")
    emails = [f"member{i}@example.com" for i in range(10)]
    for email in emails:
        store.add_contact(email, lists=[alpha])
    return emails


@pytest.mark.parametrize(("breaker", "message"), BREAKERS)
async def test_broken_contact_answer_fails_that_contact_only(
    breaker: Breaker, message: str, tmp_path: Path
) -> None:
    """A broken answer for one contact fails that contact with a reason; the others are done."""
    store = AccountStore(CONFIG)
    emails = seed(store)
    victim = store.contact_by_email(emails[3])
    assert victim is not None

    def victim_get(request: web.Request) -> bool:
        return contact_get(request) and request.path.endswith(f"/contacts/{victim.id}")

    source = tmp_path / "in.csv"
    source.write_text("Email Address\n" + "".join(f"{e}\n" for e in emails))
    async with hostile_server(breaker, victim_get, store) as server, new_account(server) as account:
        report = await migrate(
            account,
            source,
            lists=["Beta"],
            config=MigrationConfig(bulk_threshold=None),
            report=tmp_path / "report.jsonl",
        )
    lines = {line["email"]: line for line in read_report(tmp_path / "report.jsonl")}
    assert server.broken == ATTEMPTS
    assert lines[emails[3]]["outcome"] == "failed"
    assert message in lines[emails[3]]["reason"]
    assert {lines[e]["outcome"] for e in emails if e != emails[3]} == {"updated"}
    assert report.outcomes["failed"] == 1
    assert report.pending == 0
    alpha, beta = (store.list_by_name(n) for n in ("Alpha", "Beta"))
    assert alpha is not None
    assert beta is not None
    assert len(store.members(alpha.id)) == 10
    assert victim.id not in store.members(beta.id)


@pytest.mark.parametrize(
    "breaker",
    [
        pytest.param(malformed_xml, id="malformed-xml"),
        pytest.param(entity_bomb, id="entity-expansion-bomb"),
        pytest.param(html_page, id="html-content-type"),
        pytest.param(closed_mid_body, id="connection-closed-mid-body"),
    ],
)
async def test_broken_activity_status_falls_back_per_contact(
    breaker: Breaker, tmp_path: Path
) -> None:
    """Broken activity polls send their contacts contact by contact; every row is done."""
    store = AccountStore(CONFIG)
    emails = seed(store) + [f"new{i}@example.org" for i in range(30)]

    def activity_get(request: web.Request) -> bool:
        return request.method == "GET" and "/activities/" in request.path

    source = tmp_path / "in.csv"
    source.write_text("Email Address\n" + "".join(f"{e}\n" for e in emails))
    async with (
        hostile_server(breaker, activity_get, store) as server,
        new_account(server) as account,
    ):
        report = await migrate(
            account,
            source,
            lists=["Beta"],
            config=MigrationConfig(poll_initial=0.01, poll_max=0.02, probe_size=0),
            report=tmp_path / "report.jsonl",
        )
    lines = read_report(tmp_path / "report.jsonl")
    assert server.broken >= ATTEMPTS
    assert report.ok
    # The activity ran on the server: the per-contact path finds the lists already there,
    # and reports them added by that activity (not `unchanged`: the engine did add them).
    assert {line["path"] for line in lines} == {"contact"}
    assert {line["outcome"] for line in lines} <= {"bulk_added", "updated", "created"}
    for line in lines:
        if line["outcome"] == "bulk_added":
            assert "its activity had asked for" in line["note"], line
    beta = store.list_by_name("Beta")
    assert beta is not None
    assert len(store.members(beta.id)) == len(emails)


@pytest.mark.parametrize(("breaker", "message"), BREAKERS)
async def test_broken_service_document_stops_the_run_cleanly(
    breaker: Breaker, message: str, tmp_path: Path
) -> None:
    """A broken service document stops the run with the classified error, before any write."""
    store = AccountStore(CONFIG)
    emails = seed(store)

    def service(request: web.Request) -> bool:
        return request.path.endswith(f"/customers/{USERNAME}/")

    source = tmp_path / "in.csv"
    source.write_text("Email Address\n" + "".join(f"{e}\n" for e in emails))
    before = {c.email: set(c.lists) for c in store.contacts()}
    async with hostile_server(breaker, service, store) as server, new_account(server) as account:
        with pytest.raises(MalformedResponseError) as caught:
            await migrate(account, source, lists=["Beta"], report=tmp_path / "r.jsonl")
    assert server.broken == ATTEMPTS
    assert message in str(caught.value)
    assert f"GET {server.base_url}" in str(caught.value)
    assert {c.email: set(c.lists) for c in store.contacts()} == before


async def test_search_timeouts_get_the_whole_retry_budget() -> None:
    """A search whose first three answers time out gets the whole retry budget, not two tries."""
    store = AccountStore(CONFIG)
    store.add_contact("ann@example.com", lists=[store.create_list("Alpha")])
    slow = 3

    def first_searches(request: web.Request) -> bool:
        nonlocal slow
        if request.method == "GET" and request.path.endswith("/contacts") and slow:
            slow -= 1
            return True
        return False

    async def too_slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.0)  # over the client's timeout
        return web.Response(status=500)

    async with hostile_server(too_slow, first_searches, store) as server:
        account = Account(
            Credentials(USERNAME, API_KEY, PASSWORD),
            base_url=server.base_url,
            allow_http=True,
            governor=RateGovernor(rate=None),
            retry=RetryPolicy(attempts=5, wait_initial=0.0, wait_max=0.0, wait_jitter=0.0),
            timeout=0.2,
        )
        async with account:
            found = await account.search_contacts(["ann@example.com", "bob@example.com"])
    assert server.broken == 3
    assert list(found) == ["ann@example.com"]
