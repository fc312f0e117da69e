"""The simulator's XML has the shape of the real server's captured responses.

Shape means: the XML declaration, element names and namespaces in order, attribute names, link
`rel` values and the form of hrefs and ids (absolute http, server-relative or relative), and
timestamps in the API's format. Repeated siblings of identical structure (the entries of a feed)
count once; a few elements the captures predate (`ContactCount`, the summary's `Confirmed` and
`InsertTime`, contact-level opt-in/opt-out times) may be added by the simulator.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.simulator import RunningSimulator

#: Responses of the real v1 server (the gem's MIT fixtures; provenance in their README).
CAPTURED = Path(__file__).resolve().parents[1] / "fixtures" / "ctct-v1-captured"
DECLARATION = "<?xml version='1.0' encoding='UTF-8'?>"
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
ADDED_BY_SIMULATOR = frozenset(
    {"ContactCount", "Confirmed", "InsertTime", "OptInTime", "OptInSource", "OptOutTime"}
)

Fetch = Callable[[aiohttp.ClientSession], Awaitable[str]]


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _form(value: str) -> str:
    if value.startswith("http://api.constantcontact.com/"):
        return "http-id"
    if value.startswith("/"):
        return "server-relative"
    if value.startswith(("http:", "https:")):
        return "other-absolute"
    return "relative"


def _signature(element: ET.Element) -> tuple[Any, ...]:
    return (element.tag, tuple(_signature(child) for child in element))


def _collapse(children: list[ET.Element]) -> list[ET.Element]:
    """Keep one of each run of consecutive siblings with the same structure."""
    kept: list[ET.Element] = []
    for child in children:
        if not kept or _signature(kept[-1]) != _signature(child):
            kept.append(child)
    return kept


def assert_same_shape(captured: ET.Element, ours: ET.Element, where: str = "") -> None:
    """Compare two trees' shapes (see the module docstring); fail with the path on mismatch."""
    where = f"{where}/{_local(captured.tag)}"
    assert ours.tag == captured.tag, f"{where}: {ours.tag} != {captured.tag}"
    assert set(ours.attrib) == set(captured.attrib), f"{where}: attributes {ours.attrib}"
    for name in ("href", "id"):
        if name in captured.attrib:
            assert _form(ours.attrib[name]) == _form(captured.attrib[name]), f"{where}@{name}"
    assert ours.get("rel") == captured.get("rel"), f"{where}: rel {ours.get('rel')}"
    text = (captured.text or "").strip()
    if ISO_TIME.fullmatch(text):
        assert ISO_TIME.fullmatch((ours.text or "").strip()), f"{where}: time {ours.text!r}"
    elif text.startswith("http://"):
        assert _form((ours.text or "").strip()) == _form(text), f"{where}: {ours.text!r}"
    expected = _collapse(list(captured))
    matched = 0
    for child in _collapse(list(ours)):
        if matched < len(expected) and child.tag == expected[matched].tag:
            assert_same_shape(expected[matched], child, where)
            matched += 1
        else:
            assert _local(child.tag) in ADDED_BY_SIMULATOR, f"{where}: unexpected {child.tag}"
    missing = [e.tag for e in expected[matched:]]
    assert not missing, f"{where}: missing {missing}"


BARE_AMPERSAND = re.compile(r"&(?!(?:[a-zA-Z]+|#[0-9]+|#x[0-9a-fA-F]+);)")


def read_captured(name: str) -> str:
    """A capture as well-formed XML.

    Two captures end with a stray '"' after the root element, and the real server left `&`
    unescaped in one href (`raw_ampersand_in_links` reproduces that); neither is shape.
    """
    text = (CAPTURED / name).read_text(encoding="utf-8").rstrip().rstrip('"')
    return BARE_AMPERSAND.sub("&amp;", text)


def seed(sim: RunningSimulator) -> None:
    """An account like the captures': two lists, two contacts on lists, one on none."""
    store = sim.store
    general = store.create_list("General Interest", opt_in_default=True)
    clients = store.create_list("Clients")
    store.add_contact(
        "jon@example.com", lists=[general], fields={"FirstName": "jon", "LastName": "smith"}
    )
    store.add_contact(
        "my@example.com",
        lists=[general, clients],
        fields={"FirstName": "Marvin", "LastName": "Doe"},
    )
    store.add_contact("nolists@example.com", fields={"FirstName": "jon", "LastName": "smith"})


def getter(path: str) -> Fetch:
    async def fetch(session: aiohttp.ClientSession) -> str:
        async with session.get(path) as response:
            assert response.status == 200, await response.text()
            return await response.text()

    return fetch


async def post_new_list(session: aiohttp.ClientSession) -> str:
    body = (
        '<entry xmlns="http://www.w3.org/2005/Atom"><id>data:,</id><title/><author/>'
        '<updated>2008-04-16T15:28:09.757Z</updated><content type="application/vnd.ctct+xml">'
        '<ContactList xmlns="http://ws.constantcontact.com/ns/1.0/">'
        "<OptInDefault>false</OptInDefault><Name>Test list 5</Name><SortOrder>1</SortOrder>"
        "</ContactList></content></entry>"
    )
    headers = {"Content-Type": "application/atom+xml"}
    async with session.post("lists", data=body, headers=headers) as response:
        assert response.status == 201, await response.text()
        return await response.text()


CASES = [
    pytest.param("service_document.xml", getter(""), id="service-document"),
    pytest.param("contactlistscollection.xml", getter("lists"), id="lists-feed"),
    pytest.param("contactlistsindividuallist.xml", getter("lists/1"), id="list-entry"),
    pytest.param("new_list.xml", post_new_list, id="new-list"),
    pytest.param("memberscollection.xml", getter("lists/1/members"), id="members-feed"),
    pytest.param("all_contacts.xml", getter("contacts"), id="contacts-feed"),
    pytest.param(
        "single_contact_by_email.xml", getter("contacts?email=jon%40example.com"), id="search-one"
    ),
    pytest.param(
        "multiple_contacts_by_emails.xml",
        getter("contacts?email=jon%40example.com&email=my%40example.com"),
        id="search-two",
    ),
    pytest.param("single_contact_by_id.xml", getter("contacts/1"), id="contact-entry"),
    pytest.param(
        "single_contact_by_id_with_no_contactlists.xml",
        getter("contacts/3"),
        id="contact-entry-no-lists",
    ),
    pytest.param("nocontent.xml", getter("activities"), id="empty-feed"),
]


@pytest.mark.parametrize(("captured_name", "fetch"), CASES)
async def test_shape_matches_capture(
    start_simulator: Any, captured_name: str, fetch: Fetch
) -> None:
    """The simulator's answer has the shape of the captured real response (the bare single
    list entry is a setting, `bare_list_entry`)."""
    async with start_simulator(bare_list_entry=True) as (simulator, sim_session):
        seed(simulator)
        captured = read_captured(captured_name)
        ours = await fetch(sim_session)
    assert ours.startswith(DECLARATION + "\n")
    if captured.startswith("<?xml"):
        assert captured.startswith(DECLARATION)
    assert_same_shape(ET.fromstring(captured), ET.fromstring(ours))


async def test_a_single_list_entry_carries_the_namespace_and_id_by_default(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """`GET lists/{id}` answers `atom:content/ns:ContactList` with the v1 namespace and the id,
    as the lists feed does; the engine's parser reads it."""
    from engine.backend.v1.codec import parse_list_entry

    list_id = simulator.store.create_list("News")
    text = await getter(f"lists/{list_id}")(sim_session)
    root = ET.fromstring(text)
    ns = "http://ws.constantcontact.com/ns/1.0/"
    element = root.find(f"{{http://www.w3.org/2005/Atom}}content/{{{ns}}}ContactList")
    assert element is not None
    assert element.get("id", "").endswith(f"/lists/{list_id}")
    assert parse_list_entry(text.encode()).name == "News"


async def test_next_link_is_the_third_link(
    simulator: RunningSimulator, sim_session: aiohttp.ClientSession
) -> None:
    """On a page with more to come, the third <link> of the feed is rel="next" (two real
    clients relied on the position)."""
    list_id = simulator.store.create_list("Big")
    for n in range(51):
        simulator.store.add_contact(f"m{n}@example.com", lists=[list_id])
    for path in ("contacts", f"lists/{list_id}/members"):
        feed = ET.fromstring(await getter(path)(sim_session))
        links = feed.findall("{http://www.w3.org/2005/Atom}link")
        assert [link.get("rel") for link in links] == [None, "self", "next", "first", "current"]


async def test_raw_ampersand_quirk(start_simulator: Any) -> None:
    """With `raw_ampersand_in_links`, the current link of a multi-email search keeps the bare
    `&` exactly as the real server sent it."""
    async with start_simulator(raw_ampersand_in_links=True) as (sim, session):
        seed(sim)
        text = await getter("contacts?email=jon%40example.com&email=my%40example.com")(session)
    assert '?email=jon@example.com&email=my@example.com" rel="current"' in text
    with pytest.raises(ET.ParseError):
        ET.fromstring(text)


def test_every_capture_is_compared() -> None:
    """Every captured file has a shape test."""
    compared = {case.values[0] for case in CASES}
    assert compared == {p.name for p in CAPTURED.glob("*.xml")}
