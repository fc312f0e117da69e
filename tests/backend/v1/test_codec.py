"""The XML codec against every captured real-server response, the merge, and the guards."""

from __future__ import annotations

from collections.abc import Callable
from xml.etree import ElementTree

import pytest

from engine.backend.v1 import codec
from engine.backend.v1.codec import (
    CTCT_NS,
    UnsafeMergeError,
    build_contact_entry,
    check_document,
    merge_contact_lists,
    parse_activity,
    parse_contact_entry,
    parse_contacts_page,
    parse_created_id,
    parse_list_entry,
    parse_lists_page,
    parse_members_page,
    parse_service_document,
)
from engine.backend.v1.records import Page
from engine.errors import MalformedResponseError

Captured = Callable[[str], bytes]

JOE = "http://api.constantcontact.com/ws/customers/joesflowers"
KICK = "http://api.constantcontact.com/ws/customers/recordkick"
FULL_ENTRIES = [
    pytest.param("single_contact_by_id.xml", (f"{JOE}/lists/1",), id="with-lists"),
    pytest.param("single_contact_by_id_with_no_contactlists.xml", (), id="no-lists"),
]


def _ctct(name: str) -> str:
    return f"{{{CTCT_NS}}}{name}"


# --- feeds and entries of the real server -------------------------------------------------


def test_lists_feed_system_lists_first(captured: Captured) -> None:
    """The lists feed parses to the three system lists, then the user lists, in order."""
    page = parse_lists_page(captured("contactlistscollection.xml"))
    assert [(item.key, item.name) for item in page.items] == [
        ("active", "Active"),
        ("do-not-mail", "Do Not Mail"),
        ("removed", "Removed"),
        ("1", "General Interest"),
        ("2", "Clients"),
    ]
    assert [item.is_system for item in page.items] == [True, True, True, False, False]
    assert page.next_href is None


def test_lists_feed_user_list_fields(captured: Captured) -> None:
    """User lists carry their http id URI, SortOrder and OptInDefault; system lists have none."""
    items = parse_lists_page(captured("contactlistscollection.xml")).items
    general, clients = items[3], items[4]
    assert general.id == f"{KICK}/lists/1"
    assert (general.sort_order, general.opt_in_default) == (1, True)
    assert (clients.sort_order, clients.opt_in_default) == (2, False)
    assert all(i.sort_order is None and i.opt_in_default is None for i in items[:3])
    assert all(i.contact_count is None for i in items)


def test_lists_feed_key_comes_from_id_not_sort_order(captured: Captured) -> None:
    """A list's key is its id's last segment, whatever its SortOrder says."""
    body = (
        captured("contactlistscollection.xml")
        .replace(b"<SortOrder>1</SortOrder>", b"<SortOrder>25</SortOrder>")
        .replace(b"<SortOrder>2</SortOrder>", b"<SortOrder>1</SortOrder>")
    )
    by_name = {item.name: item for item in parse_lists_page(body).items}
    assert (by_name["General Interest"].key, by_name["General Interest"].sort_order) == ("1", 25)
    assert (by_name["Clients"].key, by_name["Clients"].sort_order) == ("2", 1)


def test_single_list_entry_without_namespace_or_id(captured: Captured) -> None:
    """A list entry whose ContactList has no namespace and no id takes the entry's <id>."""
    item = parse_list_entry(captured("contactlistsindividuallist.xml"))
    assert item.id == f"{KICK}/lists/1"
    assert item.key == "1"
    assert item.name == "General Interest"
    assert (item.sort_order, item.opt_in_default, item.is_system) == (1, True, False)


def test_new_list_entry_without_xml_declaration(captured: Captured) -> None:
    """The 201 body of POST lists (no XML declaration, link last) gives id 15, SortOrder 1."""
    body = captured("new_list.xml")
    assert not body.startswith(b"<?xml")
    item = parse_list_entry(body)
    assert item.id == f"{JOE}/lists/15"
    assert (item.key, item.name, item.sort_order, item.opt_in_default) == (
        "15",
        "Test list 5",
        1,
        False,
    )


def test_members_feed(captured: Captured) -> None:
    """The members feed gives 50 members keyed by contact id, with their emails."""
    page = parse_members_page(captured("memberscollection.xml"))
    assert len(page.items) == 50
    first, last = page.items[0], page.items[-1]
    assert (first.id, first.key, first.email) == (
        f"{KICK}/contacts/51",
        "51",
        "winston_stiedemann@mcdermottrobel.uk",
    )
    assert (last.key, last.email) == ("2", "bertrand_hoppe@stroman.ca")
    assert len({member.key for member in page.items}) == 50
    # The capture has no rel="next" link: it is the only page.
    assert page.next_href is None


def test_contacts_feed(captured: Captured) -> None:
    """The contacts feed gives summaries from Contact/@id and EmailAddress, not the title."""
    page = parse_contacts_page(captured("all_contacts.xml"))
    assert [(c.key, c.email, c.status) for c in page.items] == [
        ("2", "jon@example.com", "Active"),
        # The entry's title says webdeveloper@fullsteam.com; EmailAddress is what counts.
        ("1", "my@example.com", "Active"),
    ]
    assert page.items[0].id == f"{JOE}/contacts/2"
    assert page.next_href is None


def test_search_feed_single(captured: Captured) -> None:
    """A one-email search feed gives one summary."""
    page = parse_contacts_page(captured("single_contact_by_email.xml"))
    assert [(c.id, c.email) for c in page.items] == [(f"{JOE}/contacts/2", "jon@example.com")]


def test_search_feed_with_bare_ampersand(captured: Captured) -> None:
    """The two-email search feed parses despite the bare `&` the server left in a link."""
    body = captured("multiple_contacts_by_emails.xml")
    assert b"%40example.com&email=" in body  # the quirk is really there
    page = parse_contacts_page(body)
    # The second entry's edit link names contact 2; its Contact/@id (1) is the truth.
    assert [(c.key, c.email) for c in page.items] == [
        ("2", "jon@example.com"),
        ("1", "my@example.com"),
    ]


@pytest.mark.parametrize(
    "parse",
    [
        pytest.param(parse_contacts_page, id="contacts"),
        pytest.param(parse_lists_page, id="lists"),
        pytest.param(parse_members_page, id="members"),
    ],
)
def test_empty_feed(captured: Captured, parse: Callable[[bytes], Page[object]]) -> None:
    """The empty feed parses to no items and no next page with every feed parser."""
    page = parse(captured("nocontent.xml"))
    assert page.items == ()
    assert page.next_href is None


def test_service_document(captured: Captured) -> None:
    """The service document gives the hrefs of the lists and activities collections."""
    assert parse_service_document(captured("service_document.xml")) == (
        "/ws/customers/joesflowers/lists",
        "/ws/customers/joesflowers/activities",
    )


@pytest.mark.parametrize(("name", "lists"), FULL_ENTRIES)
def test_full_contact_entry(captured: Captured, name: str, lists: tuple[str, ...]) -> None:
    """A full contact entry parses, and its raw bytes lose the stray `"` after the root."""
    body = captured(name)
    assert body.rstrip().endswith(b'</entry>"')
    entry = parse_contact_entry(body)
    assert (entry.id, entry.key, entry.email, entry.status) == (
        f"{JOE}/contacts/2",
        "2",
        "jon@example.com",
        "Active",
    )
    assert entry.lists == lists
    assert entry.raw == body.rstrip()[:-1]
    assert entry.raw.endswith(b"</entry>")


def test_next_link_found_by_rel_wherever_it_sits(captured: Captured) -> None:
    """The next link is found by rel, whether it is the third link or the last one."""
    feed = captured("all_contacts.xml")
    last = feed.replace(
        b'rel="current" />', b'rel="current" />\n  <link href="contacts?next=z9" rel="next" />'
    )
    third = feed.replace(
        b'<link href="contacts" rel="self" />',
        b'<link href="contacts" rel="self" /><link href="/ws/x/contacts?next=y8" rel="next" />',
    )
    assert parse_contacts_page(last).next_href == "contacts?next=z9"
    assert parse_contacts_page(third).next_href == "/ws/x/contacts?next=y8"


def test_activity_entry() -> None:
    """An activity entry gives type, status, transaction count and its line errors."""
    body = ACTIVITY.encode()
    activity = parse_activity(body)
    assert activity.key == "a07e1zzqk3x9p0abcde"
    assert (activity.type, activity.status, activity.transaction_count) == (
        "ADD_CONTACT_DETAIL",
        "COMPLETE",
        2,
    )
    assert activity.finished
    assert [(e.line_number, e.email, e.message) for e in activity.errors] == [
        (3, "bad@@example", "Invalid email address")
    ]


ACTIVITY = f"""<?xml version='1.0' encoding='UTF-8'?>
<entry xmlns="http://www.w3.org/2005/Atom">
  <link href="/ws/customers/acme/activities/a07e1zzqk3x9p0abcde" rel="edit" />
  <id>http://api.constantcontact.com/ws/customers/acme/activities/a07e1zzqk3x9p0abcde</id>
  <title type="text"></title>
  <updated>2011-03-01T10:07:12.331Z</updated>
  <content type="application/vnd.ctct+xml">
    <Activity xmlns="{CTCT_NS}"
        id="http://api.constantcontact.com/ws/customers/acme/activities/a07e1zzqk3x9p0abcde">
      <Type>ADD_CONTACT_DETAIL</Type>
      <Status>COMPLETE</Status>
      <Errors>
        <Error>
          <LineNumber>3</LineNumber>
          <EmailAddress>bad@@example</EmailAddress>
          <Message>Invalid email address</Message>
        </Error>
      </Errors>
      <FileName></FileName>
      <TransactionCount>2</TransactionCount>
    </Activity>
  </content>
</entry>"""


# --- untrusted XML ------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<feed xmlns="http://www.w3.org/2005/Atom"><title>&lol3;</title></feed>"""

PARSERS = [
    pytest.param(parse_contacts_page, id="contacts-feed"),
    pytest.param(parse_lists_page, id="lists-feed"),
    pytest.param(parse_members_page, id="members-feed"),
    pytest.param(parse_list_entry, id="list-entry"),
    pytest.param(parse_contact_entry, id="contact-entry"),
    pytest.param(parse_created_id, id="created-entry"),
    pytest.param(parse_activity, id="activity"),
    pytest.param(parse_service_document, id="service-document"),
]


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(BILLION_LAUGHS, id="billion-laughs"),
        pytest.param(
            b'<!DOCTYPE x SYSTEM "file:///etc/passwd"><entry xmlns="x"/>', id="external-doctype"
        ),
        pytest.param(b'<!ENTITY x "y"><feed/>', id="bare-entity"),
        pytest.param(b"", id="empty"),
        pytest.param(b"not XML at all", id="text"),
        pytest.param(b'{"error_key": "throttled"}', id="json"),
        pytest.param(b"<html><body><p>403 Forbidden<hr></body></html>", id="html"),
    ],
)
def test_hostile_or_non_xml_refused(parse: Callable[[bytes], object], body: bytes) -> None:
    """DOCTYPE/ENTITY declarations and non-XML bodies raise MalformedResponseError."""
    with pytest.raises(MalformedResponseError):
        parse(body)


@pytest.mark.parametrize(
    ("name", "parse"),
    [
        pytest.param("contactlistscollection.xml", parse_lists_page, id="lists-feed"),
        pytest.param("all_contacts.xml", parse_contacts_page, id="contacts-feed"),
        pytest.param("single_contact_by_id.xml", parse_contact_entry, id="contact-entry"),
        pytest.param("new_list.xml", parse_list_entry, id="list-entry"),
    ],
)
def test_small_entity_in_valid_document_refused(
    captured: Captured, name: str, parse: Callable[[bytes], object]
) -> None:
    """Even a harmless-looking internal entity in a valid document is refused: no expansion."""
    body = captured(name).replace(b"<?xml version='1.0' encoding='UTF-8'?>", b"")
    root = body.split(b"<", 2)[1].split(b" ", 1)[0].decode()
    body = f'<!DOCTYPE {root} [<!ENTITY who "jon">]>'.encode() + body.replace(b"jon", b"&who;")
    with pytest.raises(MalformedResponseError, match="DOCTYPE or ENTITY"):
        parse(body)


@pytest.mark.parametrize(
    ("name", "parse"),
    [
        pytest.param("contactlistscollection.xml", parse_lists_page, id="lists-feed"),
        pytest.param("memberscollection.xml", parse_members_page, id="members-feed"),
        pytest.param("all_contacts.xml", parse_contacts_page, id="contacts-feed"),
        pytest.param("new_list.xml", parse_list_entry, id="list-entry"),
        pytest.param("single_contact_by_id.xml", parse_contact_entry, id="contact-entry"),
        pytest.param("service_document.xml", parse_service_document, id="service-document"),
    ],
)
@pytest.mark.parametrize("fraction", [pytest.param(0.3, id="30%"), pytest.param(0.9, id="90%")])
def test_truncated_xml_refused(
    captured: Captured, name: str, parse: Callable[[bytes], object], fraction: float
) -> None:
    """A captured document cut short raises MalformedResponseError, never a partial result."""
    body = captured(name)
    with pytest.raises(MalformedResponseError):
        parse(body[: int(len(body) * fraction)])


@pytest.mark.parametrize(
    ("name", "parse"),
    [
        pytest.param("all_contacts.xml", parse_list_entry, id="feed-as-entry"),
        pytest.param("all_contacts.xml", parse_contact_entry, id="feed-as-contact"),
        pytest.param("contactlistsindividuallist.xml", parse_contacts_page, id="entry-as-feed"),
        pytest.param("service_document.xml", parse_lists_page, id="service-as-feed"),
        pytest.param("new_list.xml", parse_contact_entry, id="list-as-contact"),
    ],
)
def test_wrong_document_kind_refused(
    captured: Captured, name: str, parse: Callable[[bytes], object]
) -> None:
    """A well-formed document of the wrong kind raises MalformedResponseError."""
    with pytest.raises(MalformedResponseError):
        parse(captured(name))


def test_check_document_drops_trailing_junk_and_escapes_bare_ampersand() -> None:
    """check_document cuts bytes after the root and escapes only bare ampersands."""
    assert check_document(b'  <a href="x?p=1&q=2&amp;r=&#38;">t</a>"\n') == (
        b'<a href="x?p=1&amp;q=2&amp;r=&#38;">t</a>'
    )


# --- the merge ----------------------------------------------------------------------------


def _outside_contact_lists(raw: bytes) -> tuple[bytes, bytes]:
    """The bytes before `<ContactLists` and after `</ContactLists>`."""
    start = raw.index(b"<ContactLists")
    end = raw.index(b"</ContactLists>") + len(b"</ContactLists>")
    return raw[:start], raw[end:]


@pytest.mark.parametrize(("name", "lists"), FULL_ENTRIES)
def test_merge_nothing_new_is_none(captured: Captured, name: str, lists: tuple[str, ...]) -> None:
    """Targets the contact is already on (in either scheme) give None: nothing to send."""
    entry = parse_contact_entry(captured(name))
    targets = {"1": lists[0].replace("http:", "https:")} if lists else {}
    assert merge_contact_lists(entry, targets) is None


@pytest.mark.parametrize(("name", "lists"), FULL_ENTRIES)
@pytest.mark.parametrize(
    "targets",
    [
        pytest.param({"7": f"{JOE}/lists/7"}, id="one-new"),
        pytest.param({"1": f"{JOE}/lists/1", "7": f"{JOE}/lists/7"}, id="old-and-new"),
        pytest.param({"7": f"{JOE}/lists/7", "9": f"{JOE}/lists/9"}, id="two-new"),
    ],
)
def test_merge_adds_lists_and_keeps_every_other_byte(
    captured: Captured, name: str, lists: tuple[str, ...], targets: dict[str, str]
) -> None:
    """The merged body parses to old ∪ new lists and is byte-identical outside ContactLists."""
    before = parse_contact_entry(captured(name))
    body = merge_contact_lists(before, targets)
    assert body is not None
    after = parse_contact_entry(body)
    expected = [*lists, *(uri for key, uri in targets.items() if key not in before.list_keys)]
    assert list(after.lists) == expected
    assert after.list_keys == before.list_keys | set(targets)
    assert (after.id, after.email, after.status) == (before.id, before.email, before.status)

    head, tail = _outside_contact_lists(before.raw)
    assert body.startswith(head)
    assert body.endswith(tail)
    element = ElementTree.fromstring(body[len(head) : len(body) - len(tail)])
    assert element.tag == "ContactLists"  # no namespace of its own: inherits the Contact's
    assert [child.get("id") for child in element] == expected


def test_merge_rewrites_action_by_contact(captured: Captured) -> None:
    """A contact-level ACTION_BY_CONTACT becomes ACTION_BY_CUSTOMER; none remains (I2)."""
    original = captured("single_contact_by_id.xml")
    body = original.replace(
        b"</LastUpdateTime>",
        b"</LastUpdateTime>\n      <OptInTime>2010-04-21T18:35:34.066Z</OptInTime>"
        b"\n      <OptInSource>ACTION_BY_CONTACT</OptInSource>",
    ).replace(b"<OptInSource>ACTION_BY_CUSTOMER", b"<OptInSource>ACTION_BY_CONTACT")
    assert body.count(b"ACTION_BY_CONTACT") == 2  # contact level and the list membership
    entry = parse_contact_entry(body)

    merged = merge_contact_lists(entry, {"7": f"{JOE}/lists/7"})

    assert merged is not None
    assert b"ACTION_BY_CONTACT" not in merged
    assert b"<OptInSource>ACTION_BY_CUSTOMER</OptInSource>" in merged
    contact = ElementTree.fromstring(merged).find(f".//{_ctct('Contact')}")
    assert contact is not None
    assert contact.findtext(_ctct("OptInSource")) == "ACTION_BY_CUSTOMER"
    # Only that value changed outside ContactLists.
    head, tail = _outside_contact_lists(entry.raw)
    assert merged.startswith(head)
    assert merged.endswith(tail.replace(b"ACTION_BY_CONTACT", b"ACTION_BY_CUSTOMER"))


@pytest.mark.parametrize(("name", "lists"), FULL_ENTRIES)
@pytest.mark.parametrize(
    "drop",
    [
        pytest.param(lambda uris: uris[1:], id="drop-first"),
        pytest.param(lambda uris: uris[:-1], id="drop-last"),
        pytest.param(lambda uris: [], id="drop-all"),
    ],
)
def test_merge_refuses_a_result_that_is_not_a_superset(
    captured: Captured,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    lists: tuple[str, ...],
    drop: Callable[[list[str]], list[str]],
) -> None:
    """If the element builder lost a list, the superset guard raises UnsafeMergeError."""
    build = codec._contact_lists_element
    monkeypatch.setattr(
        codec, "_contact_lists_element", lambda prefix, uris: build(prefix, drop(list(uris)))
    )
    entry = parse_contact_entry(captured(name))
    with pytest.raises(UnsafeMergeError, match="drop lists"):
        merge_contact_lists(entry, {"7": f"{JOE}/lists/7"})


def test_merge_refuses_a_result_that_does_not_parse(
    captured: Captured, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the spliced element broke the document, the guard raises UnsafeMergeError."""
    monkeypatch.setattr(codec, "_contact_lists_element", lambda prefix, uris: b"<ContactLists>")
    entry = parse_contact_entry(captured("single_contact_by_id.xml"))
    with pytest.raises(UnsafeMergeError, match="no single well-formed ContactLists"):
        merge_contact_lists(entry, {"7": f"{JOE}/lists/7"})


def test_merge_inserts_contact_lists_when_the_element_is_missing(captured: Captured) -> None:
    """An entry without any ContactLists element gets one just before </Contact>."""
    body = captured("single_contact_by_id_with_no_contactlists.xml").replace(
        b"<ContactLists></ContactLists>", b""
    )
    entry = parse_contact_entry(body)
    merged = merge_contact_lists(entry, {"7": f"{JOE}/lists/7"})
    assert merged is not None
    assert parse_contact_entry(merged).lists == (f"{JOE}/lists/7",)
    head, _, tail = entry.raw.partition(b"</Contact>")
    assert merged.startswith(head)
    assert merged.endswith(b"</Contact>" + tail)


# --- the POST body of a new contact -------------------------------------------------------


def _contact_of(body: bytes) -> ElementTree.Element:
    contact = ElementTree.fromstring(body).find(f".//{_ctct('Contact')}")
    assert contact is not None
    return contact


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="no-fields"),
        pytest.param({"FirstName": "Ann", "LastName": ""}, id="some-fields"),
        pytest.param({"Note": "ACTION_BY_CUSTOMER please"}, id="text-lookalike"),
    ],
)
def test_new_contact_is_always_action_by_customer(fields: dict[str, str]) -> None:
    """The POST body has exactly one contact-level OptInSource: ACTION_BY_CUSTOMER (I2)."""
    body = build_contact_entry("ann@example.com", [f"{JOE}/lists/1"], fields)
    assert b"ACTION_BY_CONTACT" not in body
    assert [e.text for e in _contact_of(body).iter(_ctct("OptInSource"))] == ["ACTION_BY_CUSTOMER"]


def test_new_contact_body_escapes_values() -> None:
    """Values with `<`, `&` and `"` survive a parse of the POST body unchanged."""
    nasty = 'Smith & <Sons> "Ltd"'
    uri = f'{JOE}/lists/1?a=1&b="2"'
    body = build_contact_entry("o'brien&co@example.com", [uri], {"CompanyName": nasty})
    contact = _contact_of(body)
    assert contact.findtext(_ctct("EmailAddress")) == "o'brien&co@example.com"
    assert contact.findtext(_ctct("CompanyName")) == nasty
    assert [cl.get("id") for cl in contact.iter(_ctct("ContactList"))] == [uri]


def test_new_contact_body_fields_and_lists() -> None:
    """The POST body carries the email, the non-empty fields and one ContactList per list."""
    body = build_contact_entry(
        "ann@example.com",
        [f"{JOE}/lists/1", f"{JOE}/lists/7"],
        {"FirstName": "Ann", "LastName": ""},
    )
    contact = _contact_of(body)
    assert contact.findtext(_ctct("FirstName")) == "Ann"
    assert contact.find(_ctct("LastName")) is None
    assert [cl.get("id") for cl in contact.iter(_ctct("ContactList"))] == [
        f"{JOE}/lists/1",
        f"{JOE}/lists/7",
    ]


def test_new_contact_needs_a_list() -> None:
    """A new contact on zero lists is refused before anything is built (the API says 400)."""
    with pytest.raises(ValueError, match="at least one list"):
        build_contact_entry("ann@example.com", [], {})


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("OptInSource", id="opt-in-source"),
        pytest.param("ContactLists", id="contact-lists"),
        pytest.param("EmailAddress", id="email"),
        pytest.param("First Name", id="not-an-element-name"),
        pytest.param("x><OptInSource", id="markup"),
    ],
)
def test_new_contact_refuses_reserved_or_invalid_field_names(name: str) -> None:
    """Field names that would override consent or lists, or add markup, raise ValueError."""
    with pytest.raises(ValueError, match="field"):
        build_contact_entry("ann@example.com", [f"{JOE}/lists/1"], {name: "ACTION_BY_CONTACT"})


def test_a_created_entrys_id_is_its_contacts_id(captured: Captured) -> None:
    """The id a create's answer gives is the `Contact` id `parse_contact_entry` reads, with
    the namespace written as a prefix too; a well-formed answer without a `Contact`, or a
    `Contact` without an id, or a broken one, is refused."""
    body = captured("single_contact_by_id.xml")
    assert parse_created_id(body) == parse_contact_entry(body).id
    assert parse_created_id(body).endswith("/contacts/2")
    prefixed = (
        b'<entry xmlns="http://www.w3.org/2005/Atom"><content>'
        b'<c:Contact xmlns:c="http://ws.constantcontact.com/ns/1.0/" id="x/contacts/7">'
        b"<c:Status>Active</c:Status></c:Contact></content></entry>"
    )
    assert parse_created_id(prefixed) == "x/contacts/7"
    for broken, message in [
        (b"<entry><content/></entry>", "no <Contact>"),
        (b"<entry><content><Contact><Status/></Contact></content></entry>", "no id"),
        (b'<entry><content><Contact id="a"></content></entry>', "not well-formed"),
    ]:
        with pytest.raises(MalformedResponseError, match=message):
            parse_created_id(broken)
