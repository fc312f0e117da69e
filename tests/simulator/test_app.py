"""The simulator over real https, driven with a raw aiohttp client."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.simulator import AccountStore, RunningSimulator, SimulatorConfig, serve

# Fixture factories from conftest.py: start_simulator(**overrides) and session_for(sim, ...).
SimulatorStarter = Callable[..., Any]
SessionOpener = Callable[..., Any]

ATOM = "{http://www.w3.org/2005/Atom}"
CTCT = "{http://ws.constantcontact.com/ns/1.0/}"
ID_BASE = "http://api.constantcontact.com/ws/customers/demo/"
ATOM_CT = {"Content-Type": "application/atom+xml"}


def contact_body(email: str, list_ids: list[int], *, extra: str = "", source: str = "") -> str:
    """A minimal Atom entry for POST/PUT contacts, with bare ContactList elements."""
    lists = "".join(f'<ContactList id="{ID_BASE}lists/{i}" />' for i in list_ids)
    opt_in = f"<OptInSource>{source}</OptInSource>" if source else ""
    return (
        '<entry xmlns="http://www.w3.org/2005/Atom"><title type="text"> </title>'
        "<updated>2011-03-01T10:00:00.000Z</updated><author></author><id>data:,none</id>"
        '<content type="application/vnd.ctct+xml">'
        '<Contact xmlns="http://ws.constantcontact.com/ns/1.0/">'
        f"<EmailAddress>{email}</EmailAddress>{extra}{opt_in}"
        f"<ContactLists>{lists}</ContactLists></Contact></content></entry>"
    )


def list_ids_of(entry: ET.Element) -> set[int]:
    """The list ids in a full contact entry's ContactLists."""
    return {int(item.attrib["id"].rsplit("/", 1)[1]) for item in entry.iter(f"{CTCT}ContactList")}


async def get_xml(session: aiohttp.ClientSession, path: str) -> ET.Element:
    async with session.get(path) as response:
        assert response.status == 200, await response.text()
        return ET.fromstring(await response.read())


async def wait_for_activity(session: aiohttp.ClientSession, activity_id: str) -> ET.Element:
    """Poll an activity until it is COMPLETE or ERROR."""
    for _ in range(200):
        entry = await get_xml(session, f"activities/{activity_id}")
        if entry.findtext(f".//{CTCT}Status") in ("COMPLETE", "ERROR"):
            return entry
        await asyncio.sleep(0.02)
    raise AssertionError("activity did not finish")


async def post_activity(
    session: aiohttp.ClientSession, activity_type: str, data: str, list_ids: list[int]
) -> str:
    form = [("activityType", activity_type), ("data", data)]
    form += [("lists", f"{ID_BASE}lists/{i}") for i in list_ids]
    async with session.post("activities", data=form) as response:
        assert response.status == 201, await response.text()
        entry = ET.fromstring(await response.read())
    return entry.findtext(f"{ATOM}id", "").rsplit("/", 1)[1]


# -- auth, transport, service document -------------------------------------------------------


async def test_service_document_needs_the_trailing_slash(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """The service document answers with a slash; without it, Apache's 403 HTML page."""
    root = await get_xml(sim_session, "")
    assert root.tag == "{http://www.w3.org/2007/app}service"
    async with sim_session.get(simulator.base_url.rstrip("/")) as response:
        assert response.status == 403
        assert response.content_type == "text/html"
        assert "403 Forbidden" in await response.text()


async def test_missing_credentials_get_a_basic_challenge(
    simulator: RunningSimulator, session_for: SessionOpener
) -> None:
    """A request without credentials gets 401 with a Basic realm challenge and an HTML body."""
    async with (
        session_for(simulator) as session,
        session.get("lists", headers={"Authorization": ""}) as response,
    ):
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Basic realm="api.constantcontact.com"'
        assert response.headers["Content-Type"] == "text/html;charset=utf-8"


async def test_bad_credentials_are_401_without_echoing_secrets(
    simulator: RunningSimulator, session_for: SessionOpener
) -> None:
    """Wrong password or key gives the Tomcat 401 page, which never repeats the secrets."""
    for login, password in (("demo-key%demo", "wrong-pw"), ("wrong-key%demo", "demo-password")):
        opened = session_for(simulator, login=login, password=password)
        async with opened as session, session.get("lists") as response:
            text = await response.text()
            assert response.status == 401
            assert "HTTP Status 401 - Unable to authenticate user demo" in text
            assert "wrong" not in text
            assert "demo-password" not in text


async def test_username_mismatch_status_is_configurable(start_simulator: SimulatorStarter) -> None:
    """A path naming another account is 401 by default, 403 with the setting."""
    for status in (401, 403):
        async with start_simulator(username_mismatch_status=status) as (sim, session):
            other = sim.base_url.replace("/demo/", "/someoneelse/")
            async with session.get(other + "lists") as response:
                assert response.status == status


async def test_username_in_path_is_case_insensitive(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """The `{username}` path segment matches case-insensitively (the Perl client lower-cases)."""
    async with sim_session.get(simulator.base_url.replace("/demo/", "/DEMO/") + "lists") as r:
        assert r.status == 200


@pytest.mark.parametrize("status", [403, 401])
async def test_plain_http_listener_refuses(start_simulator: SimulatorStarter, status: int) -> None:
    """With TLS on, the plain-http listener answers every request with 403 (or 401)."""
    async with start_simulator(http_port=0, plain_http_status=status) as (sim, session):
        assert sim.http_base_url is not None
        async with session.get(sim.http_base_url + "lists") as response:
            assert response.status == status
            assert "HTTPS is required" in await response.text()


async def test_no_tls_serves_plain_http(session_for: SessionOpener) -> None:
    """With `tls=False` the API itself is served over plain http."""
    config = SimulatorConfig(tls=False, activity_delay=0.05)
    async with serve(config) as sim, session_for(sim) as session:
        assert sim.base_url.startswith("http://127.0.0.1:")
        assert sim.ca_path is None
        await get_xml(session, "lists")


# -- contacts --------------------------------------------------------------------------------


async def test_get_contact_full_entry_and_404(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """GET contacts/{id} gives the full entry with http ids and edit paths; unknown ids 404."""
    list_id = simulator.store.create_list("A")
    contact_id = simulator.store.add_contact("jon@example.com", lists=[list_id])
    entry = await get_xml(sim_session, f"contacts/{contact_id}")
    assert entry.findtext(f"{ATOM}id") == f"{ID_BASE}contacts/{contact_id}"
    assert entry.find(f"{ATOM}link").attrib == {  # type: ignore[union-attr]
        "href": f"/ws/customers/demo/contacts/{contact_id}",
        "rel": "edit",
    }
    assert list_ids_of(entry) == {list_id}
    for path in ("contacts/999", "contacts/abc", "nothing-here"):
        async with sim_session.get(path) as response:
            assert response.status == 404
            assert response.content_type == "text/html"


async def test_search_by_email(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """Search is case-sensitive on the stored lower-case email, skips misses, caps at 50."""
    list_id = simulator.store.create_list("A")
    simulator.store.add_contact("jane@x.com", lists=[list_id])
    simulator.store.add_contact("bob@x.com", lists=[list_id])
    feed = await get_xml(
        sim_session, "contacts?email=jane%40x.com&email=nope%40x.com&email=bob%40x.com"
    )
    emails = [e.text for e in feed.iter(f"{CTCT}EmailAddress")]
    assert emails == ["jane@x.com", "bob@x.com"]
    assert feed.find(f".//{CTCT}ContactLists") is None
    feed = await get_xml(sim_session, "contacts?email=Jane%40X.com")
    assert feed.find(f"{ATOM}entry") is None
    too_many = "&".join(f"email=p{n}%40x.com" for n in range(51))
    async with sim_session.get("contacts?" + too_many) as response:
        assert response.status == 400


async def test_search_miss_can_be_500(start_simulator: SimulatorStarter) -> None:
    """With `search_miss_500`, a search that finds nothing answers 500."""
    started = start_simulator(search_miss_500=True)
    async with started as (_sim, session), session.get("contacts?email=n%40x.com") as response:
        assert response.status == 500


async def test_post_contact_created_and_conflicts(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """POST contacts gives 201 with the entry and Location; an existing email (any case or
    status) gives 409."""
    store = simulator.store
    list_id = store.create_list("A")
    async with sim_session.post(
        "contacts", data=contact_body("New@X.com", [list_id]), headers=ATOM_CT
    ) as response:
        assert response.status == 201
        entry = ET.fromstring(await response.read())
    contact = store.contact_by_email("new@x.com")
    assert contact is not None
    assert response.headers["Location"] == f"{ID_BASE}contacts/{contact.id}"
    assert entry.findtext(f".//{CTCT}EmailAddress") == "new@x.com"
    store.opt_out(store.add_contact("gone@x.com", lists=[list_id]))
    for email in ("NEW@x.com", "gone@x.com"):
        async with sim_session.post(
            "contacts", data=contact_body(email, [list_id]), headers=ATOM_CT
        ) as response:
            assert response.status == 409


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        pytest.param(
            contact_body("a@x.com", []), 400, "at least on valid ContactList", id="no-list"
        ),
        pytest.param(contact_body("a@x.com", [99]), 400, "ContactList", id="unknown-list"),
        pytest.param("<entry><oops>", 400, "well-formed", id="malformed"),
        pytest.param(
            '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><entry>&a;</entry>',
            400,
            "DTD",
            id="doctype",
        ),
        pytest.param(
            contact_body("a@x.com", [1], extra=f"<FirstName>{'x' * 51}</FirstName>"),
            400,
            "FirstName",
            id="too-long",
        ),
    ],
)
async def test_post_contact_rejections(
    simulator: RunningSimulator,
    sim_session: aiohttp.ClientSession,
    body: str,
    status: int,
    text: str,
) -> None:
    """Invalid POST bodies get 400 with an HTML/text explanation."""
    simulator.store.create_list("A")
    async with sim_session.post("contacts", data=body, headers=ATOM_CT) as response:
        assert response.status == status
        assert response.headers["Content-Type"] == "text/html;charset=utf-8"
        assert text in await response.text()
    assert simulator.store.contact_count() == 0


async def test_wrong_content_type_and_method_are_415(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """A wrong Content-Type, or a method the resource lacks, gives 415."""
    list_id = simulator.store.create_list("A")
    contact_id = simulator.store.add_contact("a@x.com", lists=[list_id])
    body = contact_body("a@x.com", [list_id])
    async with sim_session.post("contacts", data=body, headers={"Content-Type": "text/xml"}) as r:
        assert r.status == 415
    async with sim_session.put(
        f"contacts/{contact_id}", data=body, headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 415
    async with sim_session.delete("contacts") as r:
        assert r.status == 415
    async with sim_session.post(f"contacts/{contact_id}", data=body, headers=ATOM_CT) as r:
        assert r.status == 415
    async with sim_session.post("activities", data=body, headers=ATOM_CT) as r:
        assert r.status == 415


async def test_put_replaces_memberships(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """The trap: PUT with only the new list drops the contact from its other lists."""
    store = simulator.store
    a, b = store.create_list("A"), store.create_list("B")
    contact_id = store.add_contact("p@x.com", lists=[a])
    async with sim_session.put(
        f"contacts/{contact_id}", data=contact_body("p@x.com", [b]), headers=ATOM_CT
    ) as r:
        assert r.status == 204
    assert store.get_contact(contact_id).lists == {b}
    assert store.members(a) == set()


async def test_get_then_put_back_with_union_keeps_everything(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """PUTting the whole GET document back with one more list keeps the old lists, their
    OptInTime, the fields, and ignores the read-only Status."""
    store = simulator.store
    a, b = store.create_list("A"), store.create_list("B")
    contact_id = store.add_contact("p@x.com", lists=[a], fields={"FirstName": "P", "City": "X"})
    stamp = store.get_contact(contact_id).memberships[a].time
    async with sim_session.get(f"contacts/{contact_id}") as response:
        document = await response.text()
    addition = (
        f'<ContactList id="https://127.0.0.1/ws/customers/demo/lists/{b}" />\n      </ContactLists>'
    )
    document = document.replace("</ContactLists>", addition).replace(
        "<Status>Active</Status>", "<Status>Removed</Status>"
    )
    async with sim_session.put(f"contacts/{contact_id}", data=document, headers=ATOM_CT) as r:
        assert r.status == 204, await r.text()
    contact = store.get_contact(contact_id)
    assert contact.lists == {a, b}
    assert contact.memberships[a].time == stamp
    assert contact.status == "Active"
    assert contact.fields == {"FirstName": "P", "City": "X"}


async def test_put_empty_lists_removes_then_lists_reactivate(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """PUT with empty ContactLists makes the contact Removed; PUT with lists makes it Active."""
    store = simulator.store
    a = store.create_list("A")
    contact_id = store.add_contact("p@x.com", lists=[a])
    for lists, status in (([], "Removed"), ([a], "Active")):
        async with sim_session.put(
            f"contacts/{contact_id}", data=contact_body("p@x.com", lists), headers=ATOM_CT
        ) as r:
            assert r.status == 204
        assert store.get_contact(contact_id).status == status


async def test_do_not_mail_put_is_forbidden(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """An owner PUT adding lists to a Do Not Mail contact is 403; the contact is unchanged."""
    store = simulator.store
    a = store.create_list("A")
    contact_id = store.add_contact("dnm@x.com", lists=[a])
    async with sim_session.delete(f"contacts/{contact_id}") as r:
        assert r.status == 204
    assert store.get_contact(contact_id).status == "Do Not Mail"
    body = contact_body("dnm@x.com", [a], source="ACTION_BY_CUSTOMER")
    async with sim_session.put(f"contacts/{contact_id}", data=body, headers=ATOM_CT) as r:
        assert r.status == 403
    assert store.get_contact(contact_id).lists == set()


async def test_put_unknown_and_malformed(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """PUT to an unknown id is 404; a malformed body is 400."""
    contact_id = simulator.store.add_contact("p@x.com")
    async with sim_session.put(
        "contacts/999", data=contact_body("p@x.com", []), headers=ATOM_CT
    ) as r:
        assert r.status == 404
    async with sim_session.put(f"contacts/{contact_id}", data="<entry", headers=ATOM_CT) as r:
        assert r.status == 400


async def test_contacts_feed_pages_with_opaque_tokens(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """GET contacts pages 50 at a time, newest first, with the next link third and opaque
    tokens; following the links visits every contact once."""
    for n in range(120):
        simulator.store.add_contact(f"p{n}@x.com")
    seen: list[int] = []
    path: str | None = "contacts"
    pages = 0
    while path is not None:
        feed = await get_xml(sim_session, path)
        pages += 1
        links = [(link.get("rel"), link.get("href")) for link in feed.findall(f"{ATOM}link")]
        seen += [
            int(e.findtext(f"{ATOM}id", "").rsplit("/", 1)[1]) for e in feed.iter(f"{ATOM}entry")
        ]
        rels = [rel for rel, _ in links]
        next_href = dict(links).get("next")
        if next_href is not None:
            assert rels == [None, "self", "next", "first", "current"]
            assert re.fullmatch(r"/ws/customers/demo/contacts\?next=[0-9a-z]+-[0-9a-z]+", next_href)
            path = next_href.split("/ws/customers/demo/", 1)[1]
        else:
            assert rels == [None, "self", "first", "current"]
            path = None
    assert pages == 3
    assert seen == list(range(120, 0, -1))
    async with sim_session.get("contacts?next=zzzz-1") as response:
        assert response.status == 400


async def test_updatedsince_lists_changed_contacts(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """`?updatedsince=` returns only contacts changed after the given time."""
    store = simulator.store
    store.add_contact("old@x.com")
    since = store.now()
    await asyncio.sleep(0.01)
    store.opt_out(store.add_contact("new@x.com"))
    feed = await get_xml(sim_session, f"contacts?updatedsince={since}")
    assert [e.text for e in feed.iter(f"{CTCT}EmailAddress")] == ["new@x.com"]
    async with sim_session.get("contacts?updatedsince=yesterday") as response:
        assert response.status == 400


# -- lists -----------------------------------------------------------------------------------


async def test_lists_feed_system_lists_first_and_paging(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """GET lists starts with active, do-not-mail, removed, then user lists, 50 per page."""
    for n in range(60):
        simulator.store.create_list(f"List {n}")
    feed = await get_xml(sim_session, "lists")
    ids = [e.findtext(f"{ATOM}id", "").rsplit("/", 1)[1] for e in feed.iter(f"{ATOM}entry")]
    assert ids[:4] == ["active", "do-not-mail", "removed", "1"]
    assert len(ids) == 50
    next_href = next(
        link.get("href") for link in feed.findall(f"{ATOM}link") if link.get("rel") == "next"
    )
    assert next_href is not None
    feed = await get_xml(sim_session, next_href.split("/ws/customers/demo/", 1)[1])
    ids = [e.findtext(f"{ATOM}id", "").rsplit("/", 1)[1] for e in feed.iter(f"{ATOM}entry")]
    assert ids == [str(n) for n in range(48, 61)]
    sort_orders = [int(e.text or "") for e in feed.iter(f"{CTCT}SortOrder")]
    assert sort_orders != [int(i) for i in ids]


async def test_post_list_created_and_duplicate(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """POST lists gives 201 with the entry and Location; a duplicate name gives 409."""
    body = (
        '<entry xmlns="http://www.w3.org/2005/Atom"><id>data:,</id><title/><author/>'
        '<updated>2008-04-16T15:28:09.757Z</updated><content type="application/vnd.ctct+xml">'
        '<ContactList xmlns="http://ws.constantcontact.com/ns/1.0/"><OptInDefault>false'
        "</OptInDefault><Name>Spring Promo</Name><SortOrder>99</SortOrder></ContactList>"
        "</content></entry>"
    )
    async with sim_session.post("lists", data=body, headers=ATOM_CT) as response:
        assert response.status == 201
        entry = ET.fromstring(await response.read())
        assert response.headers["Location"] == f"{ID_BASE}lists/1"
    assert entry.findtext(f"{ATOM}id") == f"{ID_BASE}lists/1"
    stored = simulator.store.list_by_name("Spring Promo")
    assert stored is not None
    assert stored.sort_order == 99
    async with sim_session.post("lists", data=body, headers=ATOM_CT) as response:
        assert response.status == 409


async def test_list_entry_members_and_unknown(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """GET lists/{id} and its members feed work for user and system lists; unknown ids 404."""
    store = simulator.store
    a = store.create_list("A")
    first = store.add_contact("one@x.com", lists=[a])
    second = store.add_contact("two@x.com", lists=[a])
    store.opt_out(store.add_contact("three@x.com", lists=[a]))
    entry = await get_xml(sim_session, f"lists/{a}")
    assert entry.findtext(f".//{CTCT}ContactCount") == "2"
    members = await get_xml(sim_session, f"lists/{a}/members")
    ids = [e.findtext(f"{ATOM}id", "").rsplit("/", 1)[1] for e in members.iter(f"{ATOM}entry")]
    assert ids == [str(second), str(first)]
    dnm = await get_xml(sim_session, "lists/do-not-mail/members")
    assert [e.text for e in dnm.iter(f"{CTCT}EmailAddress")] == ["three@x.com"]
    await get_xml(sim_session, "lists/removed")
    for path in ("lists/99", "lists/nope", "lists/99/members"):
        async with sim_session.get(path) as response:
            assert response.status == 404
    async with sim_session.delete("lists/active") as response:
        assert response.status == 403


async def test_put_and_delete_list(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """PUT lists/{id} renames (204; 409 on a taken name); DELETE lists/{id} is 204."""
    store = simulator.store
    a, b = store.create_list("A"), store.create_list("B")

    def body(name: str) -> str:
        return (
            '<entry xmlns="http://www.w3.org/2005/Atom"><content><ContactList '
            f'xmlns="http://ws.constantcontact.com/ns/1.0/"><Name>{name}</Name>'
            "<SortOrder>7</SortOrder></ContactList></content></entry>"
        )

    async with sim_session.put(f"lists/{a}", data=body("Renamed"), headers=ATOM_CT) as r:
        assert r.status == 204
    assert store.get_list(a).name == "Renamed"
    assert store.get_list(a).sort_order == 7
    async with sim_session.put(f"lists/{a}", data=body("B"), headers=ATOM_CT) as r:
        assert r.status == 409
    async with sim_session.delete(f"lists/{b}") as r:
        assert r.status == 204
    assert store.list_ids() == [a]


# -- activities ------------------------------------------------------------------------------


async def test_bulk_add_appends_memberships(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """An ADD_CONTACTS activity adds the target list and keeps every other membership; the
    activity goes PENDING -> COMPLETE with line errors for Do Not Mail rows."""
    store = simulator.store
    a, b = store.create_list("A"), store.create_list("B")
    kept = store.add_contact("kept@x.com", lists=[a])
    store.opt_out(store.add_contact("dnm@x.com", lists=[a]))
    data = (
        "Email Address,First Name,City\r\n"
        'kept@x.com, Kept, "Boston, MA"\r\n'
        "new@x.com,New,\r\n"
        "dnm@x.com,D,\r\n"
    )
    form = [("activityType", "SV_ADD"), ("data", data), ("lists", f"{ID_BASE}lists/{b}")]
    async with sim_session.post("activities", data=form) as response:
        assert response.status == 201
        entry = ET.fromstring(await response.read())
        location = response.headers["Location"]
    activity_id = location.rsplit("/", 1)[1]
    assert re.fullmatch(r"a07e1[a-z0-9]{14}", activity_id)
    assert entry.findtext(f".//{CTCT}Status") == "PENDING"
    assert entry.find(f".//{CTCT}RunStartTime") is None
    done = await wait_for_activity(sim_session, activity_id)
    assert done.findtext(f".//{CTCT}Status") == "COMPLETE"
    assert done.findtext(f".//{CTCT}Type") == "ADD_CONTACT_DETAIL"
    assert done.findtext(f".//{CTCT}TransactionCount") == "2"
    assert done.findtext(f".//{CTCT}LineNumber") == "4"
    assert done.findtext(f".//{CTCT}Message") == "Contact is on the Do Not Mail list"
    assert done.find(f".//{CTCT}RunFinishTime") is not None
    assert store.get_contact(kept).lists == {a, b}
    assert store.get_contact(kept).fields["City"] == "Boston, MA"
    new = store.contact_by_email("new@x.com")
    assert new is not None
    assert new.lists == {b}


async def test_bulk_multipart_and_replace_semantics(start_simulator: SimulatorStarter) -> None:
    """Multipart forms work; `bulk_semantics="replace"` makes the add replace memberships."""
    async with start_simulator(bulk_semantics="replace") as (sim, session):
        a, b = sim.store.create_list("A"), sim.store.create_list("B")
        contact_id = sim.store.add_contact("p@x.com", lists=[a])
        form = aiohttp.FormData()
        form.add_field("activityType", "ADD_CONTACTS")
        form.add_field("lists", f"{ID_BASE}lists/{b}")
        form.add_field("data", b"Email Address\np@x.com\n", filename="data.csv")
        async with session.post("activities", data=form) as response:
            assert response.status == 201
            activity_id = response.headers["Location"].rsplit("/", 1)[1]
        await wait_for_activity(session, activity_id)
        assert sim.store.get_contact(contact_id).lists == {b}


async def test_bulk_request_errors(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """Unknown type, unknown list, missing lists, or an unknown column give 400."""
    a = simulator.store.create_list("A")
    forms = [
        [
            ("activityType", "EXPORT_EVERYTHING"),
            ("data", "Email Address\na@x.com"),
            ("lists", f"{ID_BASE}lists/{a}"),
        ],
        [
            ("activityType", "SV_ADD"),
            ("data", "Email Address\na@x.com"),
            ("lists", f"{ID_BASE}lists/9"),
        ],
        [("activityType", "SV_ADD"), ("data", "Email Address\na@x.com")],
        [
            ("activityType", "SV_ADD"),
            ("data", "Email Address,Hat\na@x.com,x"),
            ("lists", f"{ID_BASE}lists/{a}"),
        ],
    ]
    for form in forms:
        async with sim_session.post("activities", data=form) as response:
            assert response.status == 400, form
    assert simulator.store.activities_desc() == []


async def test_failed_activity_applies_nothing(start_simulator: SimulatorStarter) -> None:
    """With `activity_error_rate=1` the activity ends in ERROR and no contact is created."""
    async with start_simulator(activity_error_rate=1.0) as (sim, session):
        a = sim.store.create_list("A")
        activity_id = await post_activity(session, "SV_ADD", "Email Address\nn@x.com", [a])
        done = await wait_for_activity(session, activity_id)
        assert done.findtext(f".//{CTCT}Status") == "ERROR"
        assert sim.store.contact_by_email("n@x.com") is None


async def test_activities_finish_out_of_order(start_simulator: SimulatorStarter) -> None:
    """Jittered delays make later activities finish before earlier ones; the feed lists the
    newest first."""
    async with start_simulator(activity_delay=0.1, activity_jitter=1.0) as (sim, session):
        a = sim.store.create_list("A")
        ids = [
            await post_activity(session, "SV_ADD", f"Email Address\np{n}@x.com", [a])
            for n in range(8)
        ]
        finish: list[str] = []
        for activity_id in ids:
            done = await wait_for_activity(session, activity_id)
            finish.append(done.findtext(f".//{CTCT}RunFinishTime", ""))
        assert finish != sorted(finish)
        feed = await get_xml(session, "activities")
        listed = [e.findtext(f"{ATOM}id", "").rsplit("/", 1)[1] for e in feed.iter(f"{ATOM}entry")]
        assert listed == ids[::-1]


async def left_pending(
    config: SimulatorConfig, session_for: SessionOpener
) -> tuple[AccountStore, str]:
    """A store and the id of an activity an app posted to it and left pending as it stopped."""
    store = AccountStore(config)
    a = store.create_list("A")
    slow = dataclasses.replace(config, activity_delay=1000.0)
    async with serve(slow, store) as sim, session_for(sim) as session:
        activity_id = await post_activity(session, "SV_ADD", "Email Address\nn@x.com", [a])
    assert store.get_activity(activity_id).status == "PENDING"  # the app stopped
    return store, activity_id


async def test_an_app_started_on_a_store_runs_the_activities_another_app_left(
    simulator_config: SimulatorConfig, session_for: SessionOpener
) -> None:
    """Activities queued by an app that stopped are run to the end by the next app on the store."""
    store, activity_id = await left_pending(simulator_config, session_for)
    quick = dataclasses.replace(simulator_config, activity_delay=0.05)
    async with serve(quick, store) as sim, session_for(sim) as session:
        done = await wait_for_activity(session, activity_id)
    assert done.findtext(f".//{CTCT}Status") == "COMPLETE"
    assert store.contact_by_email("n@x.com") is not None


async def test_an_app_can_mark_the_activities_it_inherits_as_error(
    simulator_config: SimulatorConfig, session_for: SessionOpener
) -> None:
    """With unfinished_activities='error', inherited activities end in ERROR, unapplied."""
    store, activity_id = await left_pending(simulator_config, session_for)
    config = dataclasses.replace(simulator_config, unfinished_activities="error")
    async with serve(config, store) as sim, session_for(sim) as session:
        done = await wait_for_activity(session, activity_id)
    assert done.findtext(f".//{CTCT}Status") == "ERROR"
    assert store.contact_by_email("n@x.com") is None


async def test_an_activity_whose_list_was_deleted_ends_in_error_and_the_runner_goes_on(
    start_simulator: SimulatorStarter,
) -> None:
    """Deleting a list a queued activity targets fails that activity; the next one completes."""
    async with start_simulator(activity_delay=0.2, activity_jitter=0.0) as (sim, session):
        a, b = sim.store.create_list("A"), sim.store.create_list("B")
        doomed = await post_activity(session, "SV_ADD", "Email Address\nd@x.com", [a])
        async with session.delete(f"lists/{a}") as response:
            assert response.status == 204, await response.text()
        later = await post_activity(session, "SV_ADD", "Email Address\nl@x.com", [b])
        assert (await wait_for_activity(session, doomed)).findtext(f".//{CTCT}Status") == "ERROR"
        done = await wait_for_activity(session, later)
        assert done.findtext(f".//{CTCT}Status") == "COMPLETE"


# -- throttling, faults, stats ---------------------------------------------------------------


async def test_rate_limit_refuses_with_403_text(start_simulator: SimulatorStarter) -> None:
    """Over the rate limit: 403 with "requests are currently being refused", no Retry-After."""
    async with start_simulator(rate_limit=1.0, rate_burst=2) as (_sim, session):
        statuses = []
        for _ in range(3):
            async with session.get("lists") as response:
                statuses.append(response.status)
                text = await response.text()
        assert statuses == [200, 200, 403]
        assert "requests are currently being refused" in text
        assert "Retry-After" not in response.headers


async def test_rate_limit_429_with_retry_after(start_simulator: SimulatorStarter) -> None:
    """With `throttle_status=429` and `retry_after`, refusals are 429 with Retry-After."""
    async with (
        start_simulator(rate_limit=1.0, rate_burst=1, throttle_status=429, retry_after=2) as (
            _sim,
            session,
        ),
        session.get("lists") as first,
        session.get("lists") as second,
    ):
        assert (first.status, second.status) == (200, 429)
        assert second.headers["Retry-After"] == "2"


async def test_daily_quota(start_simulator: SimulatorStarter) -> None:
    """Past the daily quota: 403 with "over its daily quota"."""
    async with start_simulator(daily_quota=2) as (_sim, session):
        for expected in (200, 200, 403):
            async with session.get("lists") as response:
                assert response.status == expected
                text = await response.text()
        assert "over its daily quota" in text


async def test_error_faults_have_no_effect(start_simulator: SimulatorStarter) -> None:
    """With `error_rate=1` every /ws/ request gets 500 or 503 and changes nothing; stats and
    other non-/ws/ routes are not faulted."""
    async with start_simulator(error_rate=1.0) as (sim, session):
        a = sim.store.create_list("A")
        statuses = set()
        for n in range(6):
            async with session.post(
                "contacts", data=contact_body(f"p{n}@x.com", [a]), headers=ATOM_CT
            ) as r:
                statuses.add(r.status)
        assert statuses <= {500, 503}
        assert sim.store.contact_count() == 0
        async with session.get(sim.stats_url) as response:
            assert response.status == 200


async def test_reset_faults_drop_the_connection(start_simulator: SimulatorStarter) -> None:
    """With `reset_rate=1` the connection is dropped without an answer and nothing changes."""
    async with start_simulator(reset_rate=1.0) as (sim, session):
        a = sim.store.create_list("A")
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.post("contacts", data=contact_body("p@x.com", [a]), headers=ATOM_CT):
                pass
        assert sim.store.contact_count() == 0
        async with session.get(sim.stats_url) as response:
            stats = await response.json()
        assert stats["by_status"] == {"reset": stats["total"]}


@pytest.mark.parametrize("lognormal", [False, True])
async def test_latency_is_added(start_simulator: SimulatorStarter, lognormal: bool) -> None:
    """`latency_ms` (plus jitter, uniform or log-normal) delays each /ws/ answer."""
    started_sim = start_simulator(latency_ms=150, latency_jitter_ms=5, latency_lognormal=lognormal)
    async with started_sim as (_sim, session):
        started = time.perf_counter()
        await get_xml(session, "lists")
        assert time.perf_counter() - started >= 0.15


async def test_stats_count_by_route_pattern_and_reset(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """`/_sim/stats` counts by route pattern and status; DELETE resets the counts."""
    a = simulator.store.create_list("A")
    contact_id = simulator.store.add_contact("p@x.com", lists=[a])
    await get_xml(sim_session, f"contacts/{contact_id}")
    await get_xml(sim_session, "contacts?email=p%40x.com")
    async with sim_session.put(
        f"contacts/{contact_id}", data=contact_body("p@x.com", [a]), headers=ATOM_CT
    ):
        pass
    async with sim_session.get("contacts/999"):
        pass
    async with sim_session.get(simulator.stats_url) as response:
        stats = await response.json()
    assert stats == {
        "total": 4,
        "by_route": {"GET contacts/{id}": 2, "GET contacts?email": 1, "PUT contacts/{id}": 1},
        "by_status": {"200": 2, "204": 1, "404": 1},
        "by_route_status": {
            "GET contacts/{id} 200": 1,
            "GET contacts/{id} 404": 1,
            "GET contacts?email 200": 1,
            "PUT contacts/{id} 204": 1,
        },
    }
    async with sim_session.delete(simulator.stats_url) as response:
        assert response.status == 204
    async with sim_session.get(simulator.stats_url) as response:
        assert (await response.json())["total"] == 0


async def test_shutdown_leaves_no_tasks(
    simulator_config: SimulatorConfig, session_for: SessionOpener
) -> None:
    """Leaving `serve` cancels the activity runner and every other task it started."""
    async with serve(simulator_config) as sim, session_for(sim) as session:
        a = sim.store.create_list("A")
        await post_activity(session, "SV_ADD", "Email Address\np@x.com", [a])
    current = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not current] == []


async def test_a_simulator_started_again_with_its_ca_dir_keeps_its_ca(
    simulator_config: SimulatorConfig, tmp_path: Path
) -> None:
    """With --ca-dir, a restart serves a certificate of the same CA: a client keeps working."""
    config = dataclasses.replace(simulator_config, ca_dir=tmp_path)
    async with serve(config) as first:
        assert first.ca_path is not None
        pem = first.ca_path.read_bytes()
    assert oct((tmp_path / "ctct-simulator-ca.key").stat().st_mode & 0o777) == "0o600"
    context = ssl.create_default_context(cafile=str(tmp_path / "ctct-simulator-ca.pem"))
    async with serve(config) as second:
        assert second.ca_path is not None
        assert second.ca_path.read_bytes() == pem
        connector = aiohttp.TCPConnector(ssl=context)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(second.stats_url) as response,
        ):
            assert response.status == 200
