"""Typed records parsed from the v1 API's XML: what the API has, as the engine sees it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = [
    "SYSTEM_LISTS",
    "Activity",
    "ActivityError",
    "ContactEntry",
    "ContactList",
    "ContactSummary",
    "ListMember",
    "Page",
    "uri_key",
]

#: The three system lists the feed shows first; never membership targets.
SYSTEM_LISTS = frozenset({"active", "do-not-mail", "removed"})

#: Activity statuses after which polling stops (v2 vocabulary; v1 is [U], see the API doc §6.5).
TERMINAL_ACTIVITY_STATUSES = frozenset({"COMPLETE", "ERROR", "CANCELLED", "FAILED"})


def uri_key(uri: str) -> str:
    """The last path segment of an id URI: how ids compare, whatever scheme or host.

    `http://api.constantcontact.com/ws/customers/acme/lists/7`, its https twin, and
    `/ws/customers/acme/lists/7/` all give "7".
    """
    return uri.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a feed.

    Attributes:
        items: the entries of this page, parsed.
        next_href: the `rel="next"` link as the server wrote it, or None on the last page.
    """

    items: tuple[T, ...]
    next_href: str | None


@dataclass(frozen=True, slots=True)
class ContactList:
    """A contact list of the account.

    Attributes:
        id: the list's id URI as the server wrote it (http scheme); what the API wants.
        key: the last path segment of the id ("7", or "active" for a system list).
        name: the list's Name.
        sort_order: the display position; NOT the id (the classic trap).
        contact_count: ContactCount when the server reports it.
        opt_in_default: OptInDefault, None for system lists.
    """

    id: str
    key: str
    name: str
    sort_order: int | None = None
    contact_count: int | None = None
    opt_in_default: bool | None = None

    @property
    def is_system(self) -> bool:
        """True for the Active, Do Not Mail and Removed system lists."""
        return self.key in SYSTEM_LISTS


@dataclass(frozen=True, slots=True)
class ContactSummary:
    """A search or collection entry: who the contact is, without its lists.

    Attributes:
        id: the contact's id URI (http scheme).
        key: the numeric contact id, the last path segment of `id`.
        email: EmailAddress as stored (lower-case).
        status: Active, Unconfirmed, Removed or Do Not Mail.
    """

    id: str
    key: str
    email: str
    status: str


@dataclass(frozen=True, slots=True)
class ContactEntry:
    """A full contact entry exactly as the server sent it, with what the merge needs.

    Attributes:
        id: the contact's id URI (http scheme).
        key: the numeric contact id.
        email: EmailAddress.
        status: the contact's Status.
        lists: the ContactList id URIs, in the server's order.
        raw: the document bytes as received (trailing junk after the root removed); the
            PUT body is built from these so every other element goes back unchanged.
        fields: the contact's writable fields (v1 element name -> text), empty ones included.
    """

    id: str
    key: str
    email: str
    status: str
    lists: tuple[str, ...]
    raw: bytes
    fields: tuple[tuple[str, str], ...] = ()

    def changed_fields(self, wanted: Mapping[str, str]) -> dict[str, str]:
        """The fields of `wanted` whose text differs from the contact's (empty values of
        `wanted` are left out: an empty cell never clears a field)."""
        have = dict(self.fields)
        return {name: text for name, text in wanted.items() if text and have.get(name) != text}

    @property
    def list_keys(self) -> frozenset[str]:
        """The list ids (last path segments) the contact is on."""
        return frozenset(uri_key(uri) for uri in self.lists)


@dataclass(frozen=True, slots=True)
class ListMember:
    """An entry of a list's members feed.

    Attributes:
        id: the contact's id URI.
        key: the numeric contact id.
        email: EmailAddress.
    """

    id: str
    key: str
    email: str


@dataclass(frozen=True, slots=True)
class ActivityError:
    """One line the activity could not process.

    Attributes:
        line_number: line of the `data` text, the header being line 1.
        email: EmailAddress of that line as the server echoed it.
        message: the server's explanation.
    """

    line_number: int
    email: str
    message: str


@dataclass(frozen=True, slots=True)
class Activity:
    """A bulk activity and its progress.

    Attributes:
        id: the activity's id URI.
        key: the opaque activity id (e.g. `a07e1…`).
        type: Type as stored (may differ from the type sent).
        status: Status; `COMPLETE` and `ERROR` end polling, anything else keeps it going.
        transaction_count: TransactionCount, when present.
        errors: the line errors.
        insert_time: InsertTime, when present: with the id, what tells this activity from
            another that a server which lost its state gave the same id.
    """

    id: str
    key: str
    type: str
    status: str
    transaction_count: int | None
    errors: tuple[ActivityError, ...]
    insert_time: str = ""

    @property
    def finished(self) -> bool:
        """True once the status is terminal."""
        return self.status.upper() in TERMINAL_ACTIVITY_STATUSES
