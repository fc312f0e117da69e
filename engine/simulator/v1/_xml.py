"""The simulator's own XML: a string-template writer and an ElementTree reader.

Kept apart from the client's parser (`engine/api/`) on purpose: one bug must not hide in both.

The writer builds documents from string templates rather than a tree or `xmltodict.unparse`:
every GET and PUT goes through it, and templates are several times faster. The output copies
the captured server responses (`tests/fixtures/ctct-v1-captured/`) down to the indentation,
the single-quoted XML declaration, the link order and the trailing `<source>` of single-entry
documents.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .store import (
    CONTACT_FIELDS,
    SYSTEM_LISTS,
    ContactInput,
    StoredActivity,
    StoredContact,
    StoredList,
)

__all__ = [
    "FeedLinks",
    "ListInput",
    "Renderer",
    "XmlBodyError",
    "escape",
    "read_contact",
    "read_list",
]

XML_DECLARATION = "<?xml version='1.0' encoding='UTF-8'?>\n"
ATOM_NS = "http://www.w3.org/2005/Atom"
CTCT_NS = "http://ws.constantcontact.com/ns/1.0/"
_CONTENT_2 = '  <content type="application/vnd.ctct+xml">\n'
_CONTENT_4 = '    <content type="application/vnd.ctct+xml">\n'
_AUTHOR_2 = "  <author>\n    <name>Constant Contact</name>\n  </author>\n"
_AUTHOR_4 = "    <author>\n      <name>Constant Contact</name>\n    </author>\n"

# Characters that need an entity, plus the C0 controls XML 1.0 cannot carry at all (they can
# arrive through bulk `data`); those are dropped rather than producing a document no client
# could parse.
_NEEDS_ESCAPE = re.compile(r"[&<>\"\x00-\x08\x0b\x0c\x0e-\x1f]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_ENTITIES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})


def escape(text: str) -> str:
    """Escape text for an element or a double-quoted attribute (fast path when clean)."""
    if _NEEDS_ESCAPE.search(text) is None:
        return text
    return _CONTROL.sub("", text).translate(_ENTITIES)


_FIELD_TAGS = tuple((f"      <{name}>", f"</{name}>\n") for name in CONTACT_FIELDS)


@dataclass(frozen=True, slots=True)
class FeedLinks:
    """The paging links of a feed, as server-relative hrefs.

    Attributes:
        first: `rel="first"`.
        current: `rel="current"` (the request itself).
        next: `rel="next"`, or `None` on the last page.
    """

    first: str
    current: str
    next: str | None = None


class Renderer:
    """Writes every document of one account.

    Args:
        username: The account name used in every path and id.
        id_host: Host of the http-scheme ids (§1.2).
        raw_ampersand_in_links: Leave `&` unescaped in `rel="current"` hrefs, as the real
            server did (not well-formed; see `SimulatorConfig.raw_ampersand_in_links`).
        bare_list_entry: Answer `GET lists/{id}` with a `ContactList` without namespace or
            id, as one captured response has it (see `SimulatorConfig.bare_list_entry`).
    """

    def __init__(
        self,
        username: str,
        id_host: str,
        *,
        raw_ampersand_in_links: bool = False,
        bare_list_entry: bool = False,
    ) -> None:
        self.username = username
        self._raw_current = raw_ampersand_in_links
        self._bare_list_entry = bare_list_entry
        self.base_path = f"/ws/customers/{username}/"
        self.base_id = f"http://{id_host}/ws/customers/{username}/"
        u = escape(username)
        self._source_contacts = (
            "  <source>\n"
            f"    <id>{escape(self.base_id)}contacts</id>\n"
            f'    <title type="text">Contacts for Customer: {u}</title>\n'
            '    <link href="contacts" />\n'
            '    <link href="contacts" rel="self" />\n'
            f"    <author>\n      <name>{u}</name>\n    </author>\n"
        )

    # -- shared pieces ---------------------------------------------------------------------------

    def _feed_head(
        self, feed_id: str, title: str, href: str, updated: str, links: FeedLinks, empty: bool
    ) -> list[str]:
        parts = [
            XML_DECLARATION,
            f'<feed xmlns="{ATOM_NS}">\n',
            f"  <id>{escape(feed_id)}</id>\n",
            f'  <title type="text">{escape(title)}</title>\n',
            f'  <link href="{escape(href)}" />\n',
            f'  <link href="{escape(href)}" rel="self" />\n',
            f"  <author>\n    <name>{escape(self.username)}</name>\n  </author>\n",
            f"  <updated>{updated}</updated>\n",
        ]
        # Link order (unnamed), self, [next], first, current: two real clients take the third
        # <link> as the next page (§1.3). An empty feed has only "first" (nocontent.xml).
        if links.next is not None:
            parts.append(f'  <link href="{escape(links.next)}" rel="next" />\n')
        parts.append(f'  <link href="{escape(links.first)}" rel="first" />\n')
        if not empty:
            current = links.current if self._raw_current else escape(links.current)
            parts.append(f'  <link href="{current}" rel="current" />\n')
        return parts

    def _source(self, feed_id: str, title: str, href: str, updated: str) -> str:
        return (
            "  <source>\n"
            f"    <id>{escape(feed_id)}</id>\n"
            f'    <title type="text">{escape(title)}</title>\n'
            f'    <link href="{escape(href)}" />\n'
            f'    <link href="{escape(href)}" rel="self" />\n'
            f"    <author>\n      <name>{escape(self.username)}</name>\n    </author>\n"
            f"    <updated>{updated}</updated>\n"
            "  </source>\n"
        )

    def contact_uri(self, contact_id: int) -> str:
        """The http-scheme id of a contact."""
        return f"{self.base_id}contacts/{contact_id}"

    def list_uri(self, list_ref: int | str) -> str:
        """The http-scheme id of a list (`int` id or system list name)."""
        return f"{self.base_id}lists/{list_ref}"

    def activity_uri(self, activity_id: str) -> str:
        """The http-scheme id of an activity."""
        return f"{self.base_id}activities/{activity_id}"

    # -- service document ------------------------------------------------------------------------

    def service_document(self) -> bytes:
        """`GET /ws/customers/{u}/` (capture `service_document.xml`)."""
        base = escape(self.base_path)
        return (
            XML_DECLARATION
            + '<service xmlns="http://www.w3.org/2007/app" xmlns:atom="http://www.w3.org/2005/Atom">\n'
            "  <workspace>\n"
            '    <atom:title type="text">Constant Contact Web Services Customer Workspace'
            "</atom:title>\n"
            f'    <collection href="{base}lists">\n'
            '      <atom:title type="text">Contact Lists</atom:title>\n'
            "      <accept>application/atom+xml; type=entry</accept>\n"
            "    </collection>\n"
            f'    <collection href="{base}activities">\n'
            '      <atom:title type="text">Bulk Activity</atom:title>\n'
            "      <accept>application/x-www-form-urlencoded</accept>\n"
            "      <accept>multipart/form-data</accept>\n"
            "    </collection>\n"
            "  </workspace>\n"
            "</service>\n"
        ).encode()

    # -- contacts --------------------------------------------------------------------------------

    def _contact_entry_head(self, contact: StoredContact, updated: str, indent: str) -> str:
        cid = contact.id
        return (
            f'{indent}<link href="{self.base_path}contacts/{cid}" rel="edit" />\n'
            f"{indent}<id>{self.base_id}contacts/{cid}</id>\n"
            f'{indent}<title type="text">Contact: {escape(contact.email)}</title>\n'
            f"{indent}<updated>{updated}</updated>\n"
        )

    def _summary_entry(self, contact: StoredContact, updated: str) -> str:
        parts = [
            "  <entry>\n",
            self._contact_entry_head(contact, updated, "    "),
            _AUTHOR_4,
            _CONTENT_4,
            f'      <Contact xmlns="{CTCT_NS}" id="{self.base_id}contacts/{contact.id}">\n',
            f"        <Status>{contact.status}</Status>\n",
            f"        <EmailAddress>{escape(contact.email)}</EmailAddress>\n",
            f"        <EmailType>{contact.email_type}</EmailType>\n",
            f"        <Name>{escape(contact.summary_name)}</Name>\n",
        ]
        if contact.opt_in_time:
            parts.append(f"        <OptInTime>{contact.opt_in_time}</OptInTime>\n")
            parts.append(f"        <OptInSource>{contact.opt_in_source}</OptInSource>\n")
        if contact.opt_out_time:
            parts.append(f"        <OptOutTime>{contact.opt_out_time}</OptOutTime>\n")
            parts.append(f"        <OptOutSource>{contact.opt_out_source}</OptOutSource>\n")
        parts.append(f"        <Confirmed>{'true' if contact.confirmed else 'false'}</Confirmed>\n")
        parts.append(f"        <InsertTime>{contact.insert_time}</InsertTime>\n")
        parts.append("      </Contact>\n    </content>\n  </entry>\n")
        return "".join(parts)

    def contacts_feed(self, contacts: Iterable[StoredContact], links: FeedLinks, now: str) -> bytes:
        """`GET contacts` and `?email=` searches: summary entries without lists (§4.1, §4.2)."""
        entries = [self._summary_entry(c, now) for c in contacts]
        parts = self._feed_head(
            self.base_id + "contacts",
            f"Contacts for Customer: {self.username}",
            "contacts",
            now,
            links,
            not entries,
        )
        parts.extend(entries)
        parts.append("</feed>\n")
        return "".join(parts).encode()

    def contact_entry(self, contact: StoredContact, now: str) -> bytes:
        """`GET contacts/{id}`: the full entry with `ContactLists` and `<source>` (§4.4)."""
        fields = contact.fields
        parts = [
            XML_DECLARATION,
            f'<entry xmlns="{ATOM_NS}">\n',
            self._contact_entry_head(contact, contact.last_update_time, "  "),
            _AUTHOR_2,
            _CONTENT_2,
            f'    <Contact xmlns="{CTCT_NS}" id="{self.base_id}contacts/{contact.id}">\n',
            f"      <Status>{contact.status}</Status>\n",
            f"      <EmailAddress>{escape(contact.email)}</EmailAddress>\n",
            f"      <EmailType>{contact.email_type}</EmailType>\n",
            f"      <Name>{escape(contact.display_name)}</Name>\n",
        ]
        if fields:
            for (open_tag, close_tag), name in zip(_FIELD_TAGS, CONTACT_FIELDS, strict=True):
                value = fields.get(name)
                parts.append(
                    open_tag + escape(value) + close_tag if value else open_tag + close_tag
                )
        else:
            parts.extend(open_tag + close_tag for open_tag, close_tag in _FIELD_TAGS)
        if contact.memberships:
            parts.append("      <ContactLists>\n")
            list_id_prefix = self.base_id + "lists/"
            list_path_prefix = self.base_path + "lists/"
            for list_id, membership in sorted(contact.memberships.items()):
                parts.append(
                    f'        <ContactList id="{list_id_prefix}{list_id}">\n'
                    f'          <link xmlns="{ATOM_NS}" href="{list_path_prefix}{list_id}"'
                    ' rel="self" />\n'
                    f"          <OptInSource>{membership.source}</OptInSource>\n"
                    f"          <OptInTime>{membership.time}</OptInTime>\n"
                    "        </ContactList>\n"
                )
            parts.append("      </ContactLists>\n")
        else:
            parts.append("      <ContactLists></ContactLists>\n")
        parts.append(f"      <Confirmed>{'true' if contact.confirmed else 'false'}</Confirmed>\n")
        parts.append(f"      <InsertTime>{contact.insert_time}</InsertTime>\n")
        parts.append(f"      <LastUpdateTime>{contact.last_update_time}</LastUpdateTime>\n")
        if contact.opt_in_time:
            parts.append(f"      <OptInTime>{contact.opt_in_time}</OptInTime>\n")
            parts.append(f"      <OptInSource>{contact.opt_in_source}</OptInSource>\n")
        if contact.opt_out_time:
            parts.append(f"      <OptOutTime>{contact.opt_out_time}</OptOutTime>\n")
            parts.append(f"      <OptOutSource>{contact.opt_out_source}</OptOutSource>\n")
            if contact.opt_out_reason:
                reason = escape(contact.opt_out_reason)
                parts.append(f"      <OptOutReason>{reason}</OptOutReason>\n")
        parts.append("    </Contact>\n  </content>\n")
        parts.append(self._source_contacts)
        parts.append(f"    <updated>{now}</updated>\n  </source>\n</entry>\n")
        return "".join(parts).encode()

    # -- lists -----------------------------------------------------------------------------------

    def _list_payload(
        self, item: StoredList | str, member_count: int | None, indent: str, bare: bool = False
    ) -> str:
        if isinstance(item, str):
            name = SYSTEM_LISTS[item]
            body = f"{indent}  <Name>{name}</Name>\n{indent}  <ShortName>{name}</ShortName>\n"
            list_ref: int | str = item
        else:
            name = escape(item.name)
            body = (
                f"{indent}  <OptInDefault>{'true' if item.opt_in_default else 'false'}"
                "</OptInDefault>\n"
                f"{indent}  <Name>{name}</Name>\n"
                f"{indent}  <ShortName>{name}</ShortName>\n"
                f"{indent}  <DisplayOnSignup>{'Yes' if item.display_on_signup else 'No'}"
                "</DisplayOnSignup>\n"
                f"{indent}  <SortOrder>{item.sort_order}</SortOrder>\n"
                f'{indent}  <Members id="{self.base_id}lists/{item.id}/members"></Members>\n'
            )
            if member_count is not None:
                body += f"{indent}  <ContactCount>{member_count}</ContactCount>\n"
            list_ref = item.id
        # By default the single-list GET carries the namespace and id, as the lists feed
        # does and as clients written against the real server read it; one captured
        # response (contactlistsindividuallist.xml) has a bare <ContactList>: a setting.
        open_tag = (
            f"{indent}<ContactList>\n"
            if bare
            else f'{indent}<ContactList xmlns="{CTCT_NS}" id="{self.base_id}lists/{list_ref}">\n'
        )
        return open_tag + body + f"{indent}</ContactList>\n"

    def _list_entry(
        self, item: StoredList | str, member_count: int | None, updated: str, indent: str
    ) -> str:
        list_ref = item if isinstance(item, str) else item.id
        title = SYSTEM_LISTS[item] if isinstance(item, str) else escape(item.name)
        i2 = indent + "  "
        return (
            f'{indent}<link href="{self.base_path}lists/{list_ref}" rel="edit" />\n'
            f"{indent}<id>{self.base_id}lists/{list_ref}</id>\n"
            f'{indent}<title type="text">{title}</title>\n'
            f"{indent}<updated>{updated}</updated>\n"
            f"{indent}<author>\n{i2}<name>Constant Contact</name>\n{indent}</author>\n"
            f'{indent}<content type="application/vnd.ctct+xml">\n'
            + self._list_payload(
                item, member_count, i2, bare=indent == "  " and self._bare_list_entry
            )
            + f"{indent}</content>\n"
        )

    def lists_feed(
        self, items: Sequence[tuple[StoredList | str, int | None]], links: FeedLinks, now: str
    ) -> bytes:
        """`GET lists`: system lists first, then user lists (capture
        `contactlistscollection.xml`, §5.1). Items are (list or system name, member count)."""
        feed_id = self.base_id + "lists"
        parts = self._feed_head(
            feed_id, f"Contact Lists for Customer: {self.username}", feed_id, now, links, not items
        )
        for item, count in items:
            parts.append(
                "  <entry>\n" + self._list_entry(item, count, now, "    ") + "  </entry>\n"
            )
        parts.append("</feed>\n")
        return "".join(parts).encode()

    def list_entry(self, item: StoredList | str, member_count: int | None, now: str) -> bytes:
        """`GET lists/{id}` (capture `contactlistsindividuallist.xml`)."""
        feed_id = self.base_id + "lists"
        return (
            XML_DECLARATION
            + f'<entry xmlns="{ATOM_NS}">\n'
            + self._list_entry(item, member_count, now, "  ")
            + self._source(feed_id, f"Contact Lists for Customer: {self.username}", feed_id, now)
            + "</entry>\n"
        ).encode()

    def created_list(self, item: StoredList, now: str) -> bytes:
        """The 201 body of `POST lists` (capture `new_list.xml`)."""
        name = escape(item.name)
        return (
            XML_DECLARATION + f'<entry xmlns="{ATOM_NS}">\n'
            f"  <id>{self.base_id}lists/{item.id}</id>\n"
            f'  <title type="text">{name}</title>\n'
            "  <author />\n"
            f"  <updated>{now}</updated>\n"
            + _CONTENT_2
            + f'    <ContactList xmlns="{CTCT_NS}" id="{self.base_id}lists/{item.id}">\n'
            f"      <OptInDefault>{'true' if item.opt_in_default else 'false'}</OptInDefault>\n"
            f"      <Name>{name}</Name>\n"
            f"      <SortOrder>{item.sort_order}</SortOrder>\n"
            f"      <ShortName>{name}</ShortName>\n"
            "    </ContactList>\n"
            "  </content>\n"
            f'  <link href="{self.base_path}lists/{item.id}" rel="edit" />\n'
            "</entry>\n"
        ).encode()

    def members_feed(
        self, list_ref: int | str, contacts: Iterable[StoredContact], links: FeedLinks, now: str
    ) -> bytes:
        """`GET lists/{id}/members` (capture `memberscollection.xml`, §5.3)."""
        feed_id = f"{self.base_id}lists/{list_ref}/members"
        entries = [
            "  <entry>\n"
            f'    <link href="{self.base_path}lists/{list_ref}/members/{c.id}" rel="edit" />\n'
            f"    <id>{self.base_id}contacts/{c.id}</id>\n"
            f'    <title type="text">Contact: {escape(c.email)}</title>\n'
            f"    <updated>{now}</updated>\n"
            + _AUTHOR_4
            + _CONTENT_4
            + f'      <ContactListMember xmlns="{CTCT_NS}"'
            f' id="{self.base_id}contacts/{c.id}">\n'
            f"        <EmailAddress>{escape(c.email)}</EmailAddress>\n"
            f"        <Name>{escape(c.summary_name)}</Name>\n"
            "      </ContactListMember>\n    </content>\n  </entry>\n"
            for c in contacts
        ]
        parts = self._feed_head(
            feed_id, f"Contacts for Customer: {self.username}", feed_id, now, links, not entries
        )
        parts.extend(entries)
        parts.append("</feed>\n")
        return "".join(parts).encode()

    # -- activities ------------------------------------------------------------------------------

    def _activity_entry(self, activity: StoredActivity, now: str, indent: str) -> str:
        i2, i3, i4 = indent + "  ", indent + "    ", indent + "      "
        parts = [
            f'{indent}<link href="{self.base_path}activities/{activity.id}" rel="edit" />\n',
            f"{indent}<id>{self.base_id}activities/{activity.id}</id>\n",
            f'{indent}<title type="text"></title>\n',
            f"{indent}<updated>{activity.run_finish_time or now}</updated>\n",
            f"{indent}<author>\n{i2}<name>Constant Contact</name>\n{indent}</author>\n",
            f'{indent}<content type="application/vnd.ctct+xml">\n',
            f'{i2}<Activity xmlns="{CTCT_NS}" id="{self.base_id}activities/{activity.id}">\n',
            f"{i3}<Type>{activity.type}</Type>\n",
            f"{i3}<Status>{activity.status}</Status>\n",
        ]
        if activity.errors:
            parts.append(f"{i3}<Errors>\n")
            for error in activity.errors:
                parts.append(
                    f"{i4}<Error>\n"
                    f"{i4}  <LineNumber>{error.line}</LineNumber>\n"
                    f"{i4}  <EmailAddress>{escape(error.email)}</EmailAddress>\n"
                    f"{i4}  <Message>{escape(error.message)}</Message>\n"
                    f"{i4}</Error>\n"
                )
            parts.append(f"{i3}</Errors>\n")
        else:
            parts.append(f"{i3}<Errors></Errors>\n")
        parts.append(f"{i3}<FileName>{escape(activity.file_name)}</FileName>\n")
        parts.append(f"{i3}<TransactionCount>{activity.transaction_count}</TransactionCount>\n")
        if activity.run_start_time:
            parts.append(f"{i3}<RunStartTime>{activity.run_start_time}</RunStartTime>\n")
        if activity.run_finish_time:
            parts.append(f"{i3}<RunFinishTime>{activity.run_finish_time}</RunFinishTime>\n")
        parts.append(f"{i3}<InsertTime>{activity.insert_time}</InsertTime>\n")
        parts.append(f"{i2}</Activity>\n{indent}</content>\n")
        return "".join(parts)

    def activity_entry(self, activity: StoredActivity, now: str) -> bytes:
        """`GET activities/{id}` and the 201 body of `POST activities` (§6.5)."""
        feed_id = self.base_id + "activities"
        return (
            XML_DECLARATION
            + f'<entry xmlns="{ATOM_NS}">\n'
            + self._activity_entry(activity, now, "  ")
            + self._source(feed_id, "Bulk Activity", feed_id, now)
            + "</entry>\n"
        ).encode()

    def activities_feed(
        self, activities: Iterable[StoredActivity], links: FeedLinks, now: str
    ) -> bytes:
        """`GET activities`: newest first, titled "Bulk Activity" (§6.5)."""
        entries = [
            "  <entry>\n" + self._activity_entry(a, now, "    ") + "  </entry>\n"
            for a in activities
        ]
        feed_id = self.base_id + "activities"
        parts = self._feed_head(feed_id, "Bulk Activity", feed_id, now, links, not entries)
        parts.extend(entries)
        parts.append("</feed>\n")
        return "".join(parts).encode()


# ---------------------------------------------------------------------------------------------
# Reader.


class XmlBodyError(ValueError):
    """A request body that is not a well-formed, acceptable Atom entry (answered with 400)."""


@dataclass(frozen=True, slots=True)
class ListInput:
    """What a `ContactList` body says.

    Attributes:
        name: `Name`, or `None`.
        sort_order: `SortOrder`, or `None`.
        opt_in_default: `OptInDefault`, or `None`.
        entry_id: The entry `<id>`, or `None`.
    """

    name: str | None
    sort_order: int | None
    opt_in_default: bool | None
    entry_id: str | None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _parse(body: bytes) -> ET.Element:
    # The stdlib parser (expat) expands internal entities and reads DTDs, so a body could carry
    # an entity-expansion bomb. Real payloads never contain a DTD: refuse any body that has one
    # before parsing (and refuse NUL bytes, which would be UTF-16/32 that could hide it).
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body or b"\x00" in body:
        raise XmlBodyError("DTDs and entity declarations are not accepted")
    if not body.strip():
        raise XmlBodyError("The request body is empty")
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise XmlBodyError(f"The request body is not well-formed XML: {exc}") from None


def _find(root: ET.Element, name: str) -> ET.Element | None:
    for element in root.iter():
        if _local(element.tag) == name:
            return element
    return None


def _entry_id(root: ET.Element) -> str | None:
    for child in root:
        if _local(child.tag) == "id":
            return (child.text or "").strip() or None
    return None


def read_contact(body: bytes) -> ContactInput:
    """Read an Atom entry holding a `Contact` (POST and PUT contacts; bare or full
    `ContactList` forms, any namespace prefixes).

    Raises:
        XmlBodyError: Not XML, a DTD, no `Contact` element, or a `ContactList` without id.
    """
    root = _parse(body)
    contact = root if _local(root.tag) == "Contact" else _find(root, "Contact")
    if contact is None:
        raise XmlBodyError("The entry has no Contact element")
    email: str | None = None
    email_type: str | None = None
    source: str | None = None
    lists: list[str] | None = None
    fields: dict[str, str] = {}
    known = _KNOWN_FIELDS
    for child in contact:
        name = _local(child.tag)
        if name in known:
            fields[name] = (child.text or "").strip()
        elif name == "EmailAddress":
            email = child.text or ""
        elif name == "EmailType":
            email_type = child.text
        elif name == "OptInSource":
            source = child.text
        elif name == "ContactLists":
            lists = []
            for item in child:
                if _local(item.tag) != "ContactList":
                    continue
                list_id = item.get("id")
                if not list_id:
                    raise XmlBodyError("A ContactList has no id attribute")
                lists.append(list_id)
    entry_id = contact.get("id") or (_entry_id(root) if root is not contact else None)
    return ContactInput(email, email_type, fields, lists, source, entry_id)


_KNOWN_FIELDS = frozenset(CONTACT_FIELDS)


def read_list(body: bytes) -> ListInput:
    """Read an Atom entry holding a `ContactList` (POST and PUT lists).

    Raises:
        XmlBodyError: Not XML, a DTD, no `ContactList`, or a non-numeric `SortOrder`.
    """
    root = _parse(body)
    payload = root if _local(root.tag) == "ContactList" else _find(root, "ContactList")
    if payload is None:
        raise XmlBodyError("The entry has no ContactList element")
    values = {_local(child.tag): (child.text or "").strip() for child in payload}
    sort_order: int | None = None
    if values.get("SortOrder"):
        try:
            sort_order = int(values["SortOrder"])
        except ValueError:
            raise XmlBodyError("SortOrder must be an integer") from None
    opt_in = values.get("OptInDefault")
    return ListInput(
        values.get("Name"),
        sort_order,
        None if not opt_in else opt_in.lower() == "true",
        _entry_id(root),
    )
