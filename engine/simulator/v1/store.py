"""In-memory state of one simulated account, and every v1 API rule that changes it.

Pure: no aiohttp, no clock of its own (the clock is injected), no randomness but the
activity ids (drawn from the system's generator, so that no id ever comes back). The web
layer (`app.py`) only parses, calls one method here and renders; the HTTP status of each
refusal is carried by the `StoreError` it raises.

Sections of `ctct-v1-api.md` are cited where a rule comes from; `[U]` points read their variant
from `self.config` (a `SimulatorConfig`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from .._shared import save_json
from .config import SimulatorConfig

__all__ = [
    "ACTION_BY_CONTACT",
    "ACTION_BY_CUSTOMER",
    "ACTIVITY_TYPES",
    "CONTACT_FIELDS",
    "SYSTEM_LISTS",
    "AccountStore",
    "BadRequest",
    "Conflict",
    "ContactInput",
    "Forbidden",
    "LineError",
    "Membership",
    "NotFound",
    "StoreError",
    "StoredActivity",
    "StoredContact",
    "StoredList",
    "iso_time",
]

ACTIVE = "Active"
UNCONFIRMED = "Unconfirmed"
REMOVED = "Removed"
DO_NOT_MAIL = "Do Not Mail"
STATUSES = (ACTIVE, UNCONFIRMED, REMOVED, DO_NOT_MAIL)

ACTION_BY_CUSTOMER = "ACTION_BY_CUSTOMER"
ACTION_BY_CONTACT = "ACTION_BY_CONTACT"
_OPT_IN_SOURCES = (ACTION_BY_CUSTOMER, ACTION_BY_CONTACT)

#: The detail elements of a contact, in the order of the full entry (§4.4).
CONTACT_FIELDS: tuple[str, ...] = (
    "FirstName",
    "MiddleName",
    "LastName",
    "JobTitle",
    "CompanyName",
    "HomePhone",
    "WorkPhone",
    "Addr1",
    "Addr2",
    "Addr3",
    "City",
    "StateCode",
    "StateName",
    "CountryCode",
    "CountryName",
    "PostalCode",
    "SubPostalCode",
    "Note",
    *(f"CustomField{n}" for n in range(1, 16)),
)
_FIELD_SET = frozenset(CONTACT_FIELDS)

#: System lists, in feed order: path segment -> Name, and the statuses whose contacts they hold.
SYSTEM_LISTS: dict[str, str] = {
    "active": "Active",
    "do-not-mail": "Do Not Mail",
    "removed": "Removed",
}
_SYSTEM_LIST_STATUSES = {"active": (ACTIVE,), "do-not-mail": (DO_NOT_MAIL,), "removed": (REMOVED,)}

ADD_CONTACTS = "ADD_CONTACTS"
ADD_CONTACT_DETAIL = "ADD_CONTACT_DETAIL"
REMOVE_CONTACTS_FROM_LISTS = "REMOVE_CONTACTS_FROM_LISTS"
CLEAR_CONTACTS_FROM_LISTS = "CLEAR_CONTACTS_FROM_LISTS"
#: Activity types the simulator runs (§6.2); EXPORT_CONTACTS is not simulated.
ACTIVITY_TYPES = frozenset(
    {
        "SV_ADD",
        ADD_CONTACTS,
        ADD_CONTACT_DETAIL,
        REMOVE_CONTACTS_FROM_LISTS,
        CLEAR_CONTACTS_FROM_LISTS,
    }
)
_ADD_TYPES = frozenset({"SV_ADD", ADD_CONTACTS, ADD_CONTACT_DETAIL})

#: `data` column names of the import vocabulary (§6.2), lower-cased, -> contact field.
_COLUMNS: dict[str, str] = {
    "email address": "EmailAddress",
    "email": "EmailAddress",
    "first name": "FirstName",
    "middle name": "MiddleName",
    "last name": "LastName",
    "job title": "JobTitle",
    "company name": "CompanyName",
    "home phone": "HomePhone",
    "work phone": "WorkPhone",
    "address line 1": "Addr1",
    "address line 2": "Addr2",
    "address line 3": "Addr3",
    "city": "City",
    "state": "StateName",
    "us state/ca province": "StateCode",
    "state/province (us/canada)": "StateCode",
    "other state/province": "StateName",
    "country": "CountryName",
    "zip/postal code": "PostalCode",
    "sub zip/postal code": "SubPostalCode",
    "notes": "Note",
    "note": "Note",
    **{f"custom field {n}": f"CustomField{n}" for n in range(1, 16)},
}
_US_CA_TEXT = (
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ "
    "NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY AS GU MP PR VI AA AE AP "
    "AB BC MB NB NL NS NT NU ON PE QC SK YT"
)
_US_CA_CODES = frozenset(_US_CA_TEXT.split())

_EMAIL_RE = re.compile(r"[^@\s\"<>,;]+@[^@\s\"<>,;]+\.[^@\s\"<>,;.]+")
_ACTIVITY_ID_ALPHABET = string.ascii_lowercase + string.digits
_ID_RANDOM = random.SystemRandom()
_STATE_FORMAT = "ctct-v1-simulator-state"


def iso_time(t: float) -> str:
    """Format epoch seconds as the API does: ISO-8601 UTC with milliseconds (§1.3)."""
    total_ms = int(t * 1000)
    seconds, ms = divmod(total_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


# ---------------------------------------------------------------------------------------------
# Errors: each carries the HTTP status the API answers with.


class StoreError(Exception):
    """A request the API refuses; `status` is the HTTP status, the message the body text."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(StoreError):
    """400: malformed or invalid request content."""

    status = 400


class Forbidden(StoreError):
    """403: the owner may not do this (Do Not Mail re-subscribe, system lists)."""

    status = 403


class NotFound(StoreError):
    """404: unknown id."""

    status = 404


class Conflict(StoreError):
    """409: the email or list name exists already."""

    status = 409


# ---------------------------------------------------------------------------------------------
# Records.


class Membership(NamedTuple):
    """One list membership: how and when the contact joined that list."""

    source: str
    time: str


class LineError(NamedTuple):
    """One `Error` of an activity: the line (header is line 1), the address and the message."""

    line: int
    email: str
    message: str


@dataclass(slots=True, eq=False)
class StoredList:
    """A user list. System lists are not stored; they are views over contact status.

    Attributes:
        id: Numeric id, the last segment of the list URI.
        name: `Name` (and `ShortName`, which the API derives from it).
        sort_order: `SortOrder`, a display rank unrelated to the id (§5.1).
        opt_in_default: `OptInDefault`.
        display_on_signup: `DisplayOnSignup` (lists created through the API say No).
        updated: Last change, ISO time.
    """

    id: int
    name: str
    sort_order: int
    opt_in_default: bool = False
    display_on_signup: bool = False
    updated: str = ""


@dataclass(slots=True, eq=False)
class StoredContact:
    """A contact as the account holds it. Emails are stored lower-cased (§3).

    Attributes:
        id: Numeric id.
        email: Lower-case address, unique in the account.
        status: `Active`, `Unconfirmed`, `Removed` or `Do Not Mail`.
        fields: Non-empty detail fields by element name (`FirstName`, `CustomField3`, …).
        memberships: List id -> `Membership`; never holds a system list.
        email_type: `HTML` or `Text`.
        confirmed: `Confirmed`.
        insert_time: `InsertTime`.
        last_update_time: `LastUpdateTime`, moved only by a real change (§4.3).
        opt_in_time: Contact-level `OptInTime` (empty when never opted in).
        opt_in_source: Contact-level `OptInSource`.
        opt_out_time: `OptOutTime` (empty unless opted out).
        opt_out_source: `OptOutSource`.
        opt_out_reason: `OptOutReason`.
    """

    id: int
    email: str
    status: str
    fields: dict[str, str]
    memberships: dict[int, Membership]
    insert_time: str
    last_update_time: str
    email_type: str = "HTML"
    confirmed: bool = False
    opt_in_time: str = ""
    opt_in_source: str = ""
    opt_out_time: str = ""
    opt_out_source: str = ""
    opt_out_reason: str = ""

    @property
    def lists(self) -> set[int]:
        """Ids of the user lists the contact is on."""
        return set(self.memberships)

    def field(self, name: str) -> str:
        """One detail field, `""` when unset."""
        return self.fields.get(name, "")

    @property
    def display_name(self) -> str:
        """`Name` of the full entry: "First Last" (capture `single_contact_by_id.xml`)."""
        first, last = self.fields.get("FirstName", ""), self.fields.get("LastName", "")
        return f"{first} {last}" if first and last else first or last

    @property
    def summary_name(self) -> str:
        """`Name` of summary and member entries: "Last, First" (captures `all_contacts.xml`)."""
        first, last = self.fields.get("FirstName", ""), self.fields.get("LastName", "")
        return f"{last}, {first}" if first and last else last or first


@dataclass(frozen=True, slots=True)
class ContactInput:
    """What an Atom `Contact` body says, before any validation.

    Attributes:
        email: `EmailAddress` as sent, or `None` when absent.
        email_type: `EmailType`, or `None`.
        fields: Detail elements present in the body (empty string for empty elements).
        lists: `ContactList/@id` values, or `None` when `ContactLists` is absent.
        opt_in_source: Contact-level `OptInSource`, or `None`.
        entry_id: The entry's `<id>` (or `Contact/@id`), or `None`.
    """

    email: str | None
    email_type: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    lists: Sequence[str] | None = None
    opt_in_source: str | None = None
    entry_id: str | None = None


class _Row(NamedTuple):
    line: int
    email: str
    fields: dict[str, str]


@dataclass(slots=True, eq=False)
class StoredActivity:
    """A bulk activity and its progress (§6.5).

    Attributes:
        id: Opaque id, `a07e1` + 14 characters.
        seq: Submission order (feeds list the newest first).
        type: Stored `Type` (`ADD_CONTACT_DETAIL` when detail columns were sent, §6.3).
        status: `PENDING`, `RUNNING`, `COMPLETE` or `ERROR`.
        insert_time: `InsertTime`.
        list_ids: Target lists.
        run_start_time: `RunStartTime`, empty until started.
        run_finish_time: `RunFinishTime`, empty until finished.
        transaction_count: Rows that succeeded.
        errors: Line errors.
        file_name: `FileName` (always empty: exports are not simulated).
        fail: Decided at submission: the run ends in `ERROR` with nothing applied.
    """

    id: str
    seq: int
    type: str
    status: str
    insert_time: str
    list_ids: tuple[int, ...]
    run_start_time: str = ""
    run_finish_time: str = ""
    transaction_count: int = 0
    errors: list[LineError] = field(default_factory=list)
    file_name: str = ""
    fail: bool = False
    _rows: list[_Row] = field(default_factory=list, repr=False)
    _cursor: int = 0

    @property
    def done(self) -> bool:
        """Whether the activity reached a terminal status."""
        return self.status in ("COMPLETE", "ERROR")


# ---------------------------------------------------------------------------------------------
# The account.


class AccountStore:
    """Lists, contacts and activities of one account, with the v1 API's rules.

    Args:
        config: The semantic settings to play (field limits, Do Not Mail rule, bulk
            semantics…). `create_app` rebinds it to the app's config.
        clock: Epoch seconds, for every timestamp; inject a fake for deterministic tests.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config or SimulatorConfig()
        self.clock = clock
        self._lists: dict[int, StoredList] = {}
        self._list_names: dict[str, int] = {}
        self._members: dict[int, set[int]] = {}
        self._contacts: dict[int, StoredContact] = {}
        self._by_email: dict[str, int] = {}
        self._activities: dict[str, StoredActivity] = {}
        #: Activities a running app has queued (not saved): an app started on this store
        #: adopts the unfinished activities that are not in it.
        self.claimed_activities: set[str] = set()
        #: Bumped by the web layer on every applied write and activity step (not saved): a
        #: saver compares it to know whether the state changed since it last saved.
        self.revision = 0
        self._next_list_id = 1
        self._next_contact_id = 1
        self._next_activity_seq = 1

    @property
    def config(self) -> SimulatorConfig:
        """The settings in force."""
        return self._config

    @config.setter
    def config(self, config: SimulatorConfig) -> None:
        self._config = config
        name, postal, custom = (
            config.max_name_length,
            config.max_postal_length,
            config.max_custom_field_length,
        )
        limits = dict.fromkeys(CONTACT_FIELDS, name)
        limits.update(PostalCode=postal, SubPostalCode=postal, Note=config.max_note_length)
        limits.update({f"CustomField{n}": custom for n in range(1, 16)})
        self._limits = limits

    def now(self) -> str:
        """The clock's time, formatted as the API does."""
        return iso_time(self.clock())

    # -- lists ---------------------------------------------------------------------------------

    def create_list(
        self,
        name: str,
        *,
        sort_order: int | None = None,
        opt_in_default: bool = False,
        display_on_signup: bool = False,
    ) -> int:
        """Add a user list (`POST lists`, §5.2).

        Args:
            name: Unique list name.
            sort_order: `SortOrder`; by default a value that differs from the id, since
                clients must never confuse the two (§5.1).
            opt_in_default: `OptInDefault`.
            display_on_signup: `DisplayOnSignup`.

        Returns:
            The new list's id.

        Raises:
            BadRequest: Empty or over-long name.
            Conflict: A list with that name exists (case-insensitively).
        """
        name = name.strip()
        self._check_list_name(name, None)
        list_id = self._next_list_id
        self._next_list_id += 1
        if sort_order is None:
            sort_order = 100 + (list_id * 37) % 89
        self._lists[list_id] = StoredList(
            list_id, name, sort_order, opt_in_default, display_on_signup, self.now()
        )
        self._list_names[name.casefold()] = list_id
        self._members[list_id] = set()
        return list_id

    def update_list(
        self, list_id: int, *, name: str, sort_order: int | None, opt_in_default: bool | None
    ) -> None:
        """Rename or re-rank a list (`PUT lists/{id}`, §5.2); `None` keeps a value.

        Raises:
            NotFound: Unknown list.
            BadRequest: Invalid name.
            Conflict: Another list has that name.
        """
        stored = self.get_list(list_id)
        name = name.strip()
        self._check_list_name(name, list_id)
        del self._list_names[stored.name.casefold()]
        stored.name = name
        self._list_names[name.casefold()] = list_id
        if sort_order is not None:
            stored.sort_order = sort_order
        if opt_in_default is not None:
            stored.opt_in_default = opt_in_default
        stored.updated = self.now()

    def delete_list(self, list_id: int) -> None:
        """Delete a list; its members lose that membership, and become Removed when left on no
        list ([U] §5.2, question 13: the doc's presumption).

        Raises:
            NotFound: Unknown list.
        """
        stored = self.get_list(list_id)
        now = self.now()
        for contact_id in sorted(self._members[list_id]):
            contact = self._contacts[contact_id]
            del contact.memberships[list_id]
            if not contact.memberships and contact.status != DO_NOT_MAIL:
                contact.status = REMOVED
            contact.last_update_time = now
        del self._members[list_id], self._lists[list_id]
        del self._list_names[stored.name.casefold()]

    def _check_list_name(self, name: str, own_id: int | None) -> None:
        if not name:
            raise BadRequest("The list must have a Name")
        if len(name) > self.config.max_list_name_length:
            raise BadRequest(f"List name is longer than {self.config.max_list_name_length}")
        existing = self._list_names.get(name.casefold())
        if existing is not None and existing != own_id:
            raise Conflict(f"List with name '{name}' already exists")

    def get_list(self, list_id: int) -> StoredList:
        """One user list.

        Raises:
            NotFound: Unknown list.
        """
        try:
            return self._lists[list_id]
        except KeyError:
            raise NotFound(f"List {list_id} does not exist") from None

    def list_by_name(self, name: str) -> StoredList | None:
        """The user list with this exact name (case-insensitively), or `None`."""
        list_id = self._list_names.get(name.strip().casefold())
        return None if list_id is None else self._lists[list_id]

    def list_ids(self) -> list[int]:
        """Ids of the user lists, ascending."""
        return list(self._lists)

    def lists(self) -> list[StoredList]:
        """User lists, by ascending id."""
        return list(self._lists.values())

    def members(self, list_id: int) -> set[int]:
        """Ids of the contacts on a user list (a copy).

        Raises:
            NotFound: Unknown list.
        """
        self.get_list(list_id)
        return set(self._members[list_id])

    def member_count(self, list_id: int) -> int:
        """Number of contacts on a user list (`ContactCount`)."""
        self.get_list(list_id)
        return len(self._members[list_id])

    def member_ids_desc(self, list_ref: int | str) -> list[int]:
        """Member contact ids of a user or system list, newest first (the feed order of
        `memberscollection.xml`).

        Raises:
            NotFound: Unknown list.
        """
        if isinstance(list_ref, str):
            statuses = _SYSTEM_LIST_STATUSES.get(list_ref)
            if statuses is None:
                raise NotFound(f"List {list_ref} does not exist")
            return [c.id for c in reversed(self._contacts.values()) if c.status in statuses]
        self.get_list(list_ref)
        return sorted(self._members[list_ref], reverse=True)

    def resolve_list_uri(self, uri: str) -> int:
        """The id of the user list a URI names.

        Accepts http or https with any host, and bare server-relative paths (§1.2).

        Raises:
            BadRequest: Not a list URI of this account, a system list, or an unknown list.
        """
        parts = urlsplit(uri.strip())
        segments = [s for s in parts.path.split("/") if s]
        if (
            parts.scheme not in ("", "http", "https")
            or len(segments) != 5
            or segments[:2] != ["ws", "customers"]
            or segments[3] != "lists"
            or not self._same_user(segments[2])
            or not segments[4].isdigit()
        ):
            raise BadRequest(f"Invalid ContactList id: {uri}")
        list_part = segments[4]
        list_id = int(list_part)
        if list_id not in self._lists:
            raise BadRequest(f"ContactList does not exist: {uri}")
        return list_id

    def _same_user(self, username: str) -> bool:
        if self.config.username_case_insensitive:
            return username.casefold() == self.config.username.casefold()
        return username == self.config.username

    # -- contacts: seeding and inspection --------------------------------------------------------

    def add_contact(
        self,
        email: str,
        *,
        lists: Iterable[int] = (),
        status: str = ACTIVE,
        fields: Mapping[str, str] | None = None,
        opt_in_source: str = ACTION_BY_CUSTOMER,
    ) -> int:
        """Seed a contact directly (no API rules beyond uniqueness); fast enough for 10^5 calls.

        Args:
            email: Address; stored lower-cased.
            lists: User list ids.
            status: Any of the four statuses; `Removed` and `Do Not Mail` take no lists.
            fields: Detail fields by element name (`FirstName`, …).
            opt_in_source: Contact and membership `OptInSource`.

        Returns:
            The new contact's id.

        Raises:
            Conflict: The email exists.
            ValueError: Unknown status, field or list, or lists given to a Removed or Do Not
                Mail contact.
        """
        key = email.strip().lower()
        if key in self._by_email:
            raise Conflict(f"Contact {key} already exists")
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        list_ids = tuple(lists)
        if list_ids and status in (REMOVED, DO_NOT_MAIL):
            raise ValueError(f"a {status} contact is on no list")
        for list_id in list_ids:
            if list_id not in self._lists:
                raise ValueError(f"unknown list {list_id}")
        values = {k: v for k, v in (fields or {}).items() if v}
        if not _FIELD_SET.issuperset(values):
            raise ValueError(f"unknown fields {sorted(set(values) - _FIELD_SET)}")
        now = self.now()
        contact_id = self._next_contact_id
        self._next_contact_id += 1
        membership = Membership(opt_in_source, now)
        contact = StoredContact(
            contact_id,
            key,
            status,
            values,
            dict.fromkeys(list_ids, membership),
            now,
            now,
            opt_in_time=now,
            opt_in_source=opt_in_source,
        )
        if status == DO_NOT_MAIL:
            contact.opt_out_time, contact.opt_out_source = now, ACTION_BY_CUSTOMER
        self._contacts[contact_id] = contact
        self._by_email[key] = contact_id
        for list_id in list_ids:
            self._members[list_id].add(contact_id)
        return contact_id

    def get_contact(self, contact_id: int) -> StoredContact:
        """One contact (the live record; do not mutate it).

        Raises:
            NotFound: Unknown id.
        """
        try:
            return self._contacts[contact_id]
        except KeyError:
            raise NotFound(f"Contact with Id {contact_id} does not exist") from None

    def contact_by_email(self, email: str) -> StoredContact | None:
        """The contact with this address (compared lower-cased), or `None`."""
        contact_id = self._by_email.get(email.strip().lower())
        return None if contact_id is None else self._contacts[contact_id]

    def contacts(self) -> Iterator[StoredContact]:
        """All contacts, by ascending id."""
        return iter(list(self._contacts.values()))

    def contact_count(self) -> int:
        """Number of contacts in the account, in any status."""
        return len(self._contacts)

    def contact_ids_desc(self, below: int | None = None) -> Iterator[int]:
        """Contact ids, newest first (the order of `all_contacts.xml`), below `below`."""
        start = (
            self._next_contact_id - 1
            if below is None
            else min(below - 1, self._next_contact_id - 1)
        )
        contacts = self._contacts
        for contact_id in range(start, 0, -1):
            if contact_id in contacts:
                yield contact_id

    def search(self, emails: Sequence[str]) -> list[StoredContact]:
        """`GET contacts?email=…` (§4.2): exact, case-sensitive match against the stored
        lower-case address, misses skipped, in query order, any status.
        """
        found: list[StoredContact] = []
        seen: set[int] = set()
        for email in emails:
            contact_id = self._by_email.get(email)
            if contact_id is not None and contact_id not in seen:
                seen.add(contact_id)
                found.append(self._contacts[contact_id])
        return found

    def updated_since(
        self, since: str, *, list_id: int | None = None, list_type: str | None = None
    ) -> list[int]:
        """Ids of contacts changed after `since` (ISO time), newest first (§4.3).

        Raises:
            BadRequest: Unknown `list_type`.
            NotFound: Unknown `list_id`.
        """
        if list_type is not None and list_type not in _SYSTEM_LIST_STATUSES:
            raise BadRequest(f"Invalid listtype: {list_type}")
        ref = list_type if list_type is not None else list_id
        ids = self.member_ids_desc(ref) if ref is not None else list(self.contact_ids_desc())
        return [i for i in ids if self._contacts[i].last_update_time > since]

    # -- contacts: API operations ----------------------------------------------------------------

    def create_contact(self, body: ContactInput) -> StoredContact:
        """`POST contacts` (§4.5).

        Raises:
            BadRequest: No list (`…at least on valid ContactList`, sic), unknown list, invalid
                or over-long values.
            Conflict: The address exists in any status.
        """
        if not body.lists:
            raise BadRequest("The new contact must contain at least on valid ContactList")
        email = self._valid_email(body.email)
        list_ids = [self.resolve_list_uri(uri) for uri in body.lists]
        source = self._valid_source(body.opt_in_source)
        email_type = self._valid_email_type(body.email_type) or "HTML"
        self._check_lengths(body.fields)
        if email in self._by_email:
            raise Conflict(f"Contact {email} already exists")
        now = self.now()
        contact_id = self._next_contact_id
        self._next_contact_id += 1
        membership = Membership(source, now)
        contact = StoredContact(
            contact_id,
            email,
            ACTIVE,
            _known_nonempty(body.fields),
            dict.fromkeys(list_ids, membership),
            now,
            now,
            email_type=email_type,
            opt_in_time=now,
            opt_in_source=source,
        )
        self._contacts[contact_id] = contact
        self._by_email[email] = contact_id
        for list_id in contact.memberships:
            self._members[list_id].add(contact_id)
        return contact

    def update_contact(self, contact_id: int, body: ContactInput) -> StoredContact:
        """`PUT contacts/{id}` (§4.6): the body replaces the contact, lists included.

        The `ContactLists` in the body **replace** the memberships: lists missing from it are
        left. Lists already held keep their `OptInTime`/`OptInSource`; new ones are stamped
        now. No list (or no `ContactLists` at all) -> `Removed`; lists given to a `Removed`
        contact -> `Active`. `Status` in
        the body is ignored (read-only). `LastUpdateTime` moves only on a real change.

        Raises:
            NotFound: Unknown id.
            BadRequest: Wrong `<id>`, missing or invalid address, unknown list, over-long value.
            Forbidden: A customer PUT on a Do Not Mail contact that adds lists (or any
                customer PUT, with `dnm_put_rule="any"`).
            Conflict: The new address belongs to another contact ([U] §4.6, question 12).
        """
        contact = self.get_contact(contact_id)
        if body.entry_id is not None:
            self._check_entry_id(body.entry_id, contact_id)
        email = self._valid_email(body.email)
        list_ids = [self.resolve_list_uri(uri) for uri in body.lists or ()]
        source = self._valid_source(body.opt_in_source)
        email_type = self._valid_email_type(body.email_type) or contact.email_type
        self._check_lengths(body.fields)
        owner = self._by_email.get(email)
        if owner is not None and owner != contact_id:
            raise Conflict(f"Contact {email} already exists")
        new_lists = dict.fromkeys(list_ids)
        if contact.status == DO_NOT_MAIL and source == ACTION_BY_CUSTOMER:
            adds = any(list_id not in contact.memberships for list_id in new_lists)
            if adds or self.config.dnm_put_rule == "any":
                raise Forbidden("Contact cannot be updated. It belongs to the Do-Not-Mail list.")

        now = self.now()
        if self.config.put_clears_absent_fields:
            fields = _known_nonempty(body.fields)
        else:
            fields = _known_nonempty({**contact.fields, **body.fields})
        memberships = {
            list_id: contact.memberships.get(list_id) or Membership(source, now)
            for list_id in new_lists
        }
        status = contact.status
        if status == DO_NOT_MAIL:
            if memberships:  # only ACTION_BY_CONTACT gets here with lists: a re-subscribe
                status = ACTIVE
        elif not memberships:
            status = REMOVED
        elif status == REMOVED:
            status = ACTIVE

        changed = (
            email != contact.email
            or email_type != contact.email_type
            or fields != contact.fields
            or memberships.keys() != contact.memberships.keys()
            or status != contact.status
        )
        if not changed:
            return contact
        if email != contact.email:
            del self._by_email[contact.email]
            self._by_email[email] = contact_id
            contact.email = email
        if contact.status == DO_NOT_MAIL and status == ACTIVE:
            contact.opt_in_time, contact.opt_in_source = now, source
            contact.opt_out_time = contact.opt_out_source = contact.opt_out_reason = ""
        contact.email_type = email_type
        contact.fields = fields
        contact.status = status
        self._set_memberships(contact, memberships)
        contact.last_update_time = now
        return contact

    def opt_out(self, contact_id: int, *, source: str = ACTION_BY_CUSTOMER) -> None:
        """`DELETE contacts/{id}` (§4.7): Do Not Mail, off every list; the record stays.

        Raises:
            NotFound: Unknown id.
        """
        contact = self.get_contact(contact_id)
        if contact.status == DO_NOT_MAIL:
            return
        now = self.now()
        contact.status = DO_NOT_MAIL
        contact.opt_out_time, contact.opt_out_source = now, source
        self._set_memberships(contact, {})
        contact.last_update_time = now

    def _set_memberships(self, contact: StoredContact, memberships: dict[int, Membership]) -> None:
        for list_id in contact.memberships.keys() - memberships.keys():
            self._members[list_id].discard(contact.id)
        for list_id in memberships.keys() - contact.memberships.keys():
            self._members[list_id].add(contact.id)
        contact.memberships = memberships

    def _check_entry_id(self, entry_id: str, contact_id: int) -> None:
        # A PUT body's <id> must be the contact's own URI (§4.6; any scheme or host accepted).
        segments = [s for s in urlsplit(entry_id.strip()).path.split("/") if s]
        if segments[-2:-1] == ["contacts"] and segments[-1] != str(contact_id):
            raise BadRequest(f"Entry id {entry_id} does not match contact {contact_id}")

    def _valid_email(self, email: str | None) -> str:
        if email is None or not email.strip():
            raise BadRequest("EmailAddress is required")
        email = email.strip().lower()
        if len(email) > self.config.max_email_length:
            raise BadRequest(f"EmailAddress is longer than {self.config.max_email_length}")
        if not _EMAIL_RE.fullmatch(email):
            raise BadRequest(f"Invalid email address: {email}")
        return email

    @staticmethod
    def _valid_source(source: str | None) -> str:
        if source is None or not source.strip():
            return ACTION_BY_CUSTOMER
        source = source.strip()
        if source not in _OPT_IN_SOURCES:
            raise BadRequest(f"Invalid OptInSource: {source}")
        return source

    @staticmethod
    def _valid_email_type(email_type: str | None) -> str | None:
        if email_type is None or not email_type.strip():
            return None
        value = email_type.strip()
        for known in ("HTML", "Text"):
            if value.casefold() == known.casefold():
                return known
        raise BadRequest(f"Invalid EmailType: {value}")

    def _check_lengths(self, fields: Mapping[str, str]) -> None:
        for name, value in fields.items():
            limit = self._limits.get(name)
            if limit is not None and len(value) > limit:
                raise BadRequest(f"{name} is longer than {limit} characters")

    # -- activities ------------------------------------------------------------------------------

    def submit_activity(
        self,
        activity_type: str,
        data: str | None,
        list_uris: Sequence[str],
        *,
        fail: bool = False,
    ) -> StoredActivity:
        """`POST activities` (§6.2): validate the request and queue the activity as `PENDING`.

        Whole-request problems raise; row problems become line errors when the activity runs.

        Args:
            activity_type: `activityType`.
            data: `data` (CSV-like; header line first), or `None`.
            list_uris: The `lists` values.
            fail: End the run in `ERROR` with nothing applied (fault injection).

        Raises:
            BadRequest: Unknown type, no or unknown list, missing data or email column, unknown
                column (unless ignored), over a row or byte cap (unless truncating).
        """
        activity_type = activity_type.strip()
        if activity_type not in ACTIVITY_TYPES:
            raise BadRequest(f"Unsupported activityType: {activity_type or '(missing)'}")
        if not list_uris:
            raise BadRequest("At least one list is required")
        list_ids = tuple(dict.fromkeys(self.resolve_list_uri(uri) for uri in list_uris))
        rows: list[_Row] = []
        errors: list[LineError] = []
        stored_type = activity_type
        if activity_type != CLEAR_CONTACTS_FROM_LISTS:
            if not data or not data.strip():
                raise BadRequest("The data parameter is required")
            rows, errors, has_detail = self._parse_data(data)
            if activity_type in _ADD_TYPES:
                stored_type = ADD_CONTACT_DETAIL if has_detail else ADD_CONTACTS
        activity = StoredActivity(
            self._new_activity_id(),
            self._next_activity_seq,
            stored_type,
            "PENDING",
            self.now(),
            list_ids,
            errors=errors,
            fail=fail,
            _rows=rows,
        )
        self._next_activity_seq += 1
        self._activities[activity.id] = activity
        return activity

    def _new_activity_id(self) -> str:
        # Not from the seeded generator: a server restarted with the same seed (or an
        # account loaded again from an older state file) must never give an id twice, or a
        # client would take someone else's activity for the one it submitted.
        while True:
            suffix = "".join(_ID_RANDOM.choices(_ACTIVITY_ID_ALPHABET, k=14))
            activity_id = "a07e1" + suffix
            if activity_id not in self._activities:
                return activity_id

    def _parse_data(self, data: str) -> tuple[list[_Row], list[LineError], bool]:
        # The stdlib csv reader does the quoting ("Boston, MA") and LF/CRLF; skipinitialspace
        # covers the ", " that clients write, and cells are trimmed on both sides (§6.2).
        config = self.config
        errors: list[LineError] = []
        encoded_size = len(data.encode("utf-8", "surrogatepass"))
        byte_cut: int | None = None
        if encoded_size > config.bulk_max_bytes:
            if not config.bulk_truncate:
                raise BadRequest(f"The data is larger than {config.bulk_max_bytes} bytes")
            cut = data.encode("utf-8", "surrogatepass")[: config.bulk_max_bytes]
            data = cut[: cut.rfind(b"\n") + 1].decode("utf-8", "ignore")
            byte_cut = data.count("\n") + 1
        reader = csv.reader(io.StringIO(data, newline=""), skipinitialspace=True)
        header = next(reader, None)
        if header is None:
            raise BadRequest("The data has no header line")
        columns: list[str | None] = []
        for name in header:
            column = _COLUMNS.get(" ".join(name.split()).lower())
            if column is None and name.strip() and not config.bulk_ignore_unknown_columns:
                raise BadRequest(f"Unknown column: {name.strip()}")
            columns.append(column)
        if "EmailAddress" not in columns:
            raise BadRequest("The data has no Email Address column")
        has_detail = any(c is not None and c != "EmailAddress" for c in columns)
        rows: list[_Row] = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            if len(rows) >= config.bulk_max_rows:
                if not config.bulk_truncate:
                    raise BadRequest(f"The data has more than {config.bulk_max_rows} rows")
                message = f"Row limit of {config.bulk_max_rows} exceeded; not processed"
                errors.append(LineError(reader.line_num, "", message))
                break
            values = {
                column: cell.strip()
                for column, cell in zip(columns, cells, strict=False)
                if column is not None
            }
            email = values.pop("EmailAddress", "")
            rows.append(_Row(reader.line_num, email, values))
        else:
            if byte_cut is not None:
                message = f"Data size limit of {config.bulk_max_bytes} bytes exceeded"
                errors.append(LineError(byte_cut, "", message))
        return rows, errors, has_detail

    def get_activity(self, activity_id: str) -> StoredActivity:
        """One activity.

        Raises:
            NotFound: Unknown id.
        """
        try:
            return self._activities[activity_id]
        except KeyError:
            raise NotFound(f"Activity {activity_id} does not exist") from None

    def activities_desc(self) -> list[StoredActivity]:
        """All activities, newest first (the feed order, §6.5)."""
        return sorted(self._activities.values(), key=lambda a: a.seq, reverse=True)

    def unfinished_activities(self) -> list[str]:
        """Ids of the activities not yet `COMPLETE` or `ERROR`, oldest first."""
        return [a.id for a in sorted(self._activities.values(), key=lambda a: a.seq) if not a.done]

    def fail_activity(self, activity_id: str) -> None:
        """End an activity in `ERROR` now, applying nothing more (a lost queue, a run that
        could not go on)."""
        activity = self.get_activity(activity_id)
        if activity.done:
            return
        now = self.now()
        activity.status = "ERROR"
        activity.run_start_time = activity.run_start_time or now
        activity.run_finish_time = now
        activity._rows = []

    def start_activity(self, activity_id: str) -> None:
        """`PENDING` -> `RUNNING`, stamping `RunStartTime`."""
        activity = self.get_activity(activity_id)
        if activity.status == "PENDING":
            activity.status = "RUNNING"
            activity.run_start_time = self.now()

    def process_activity(self, activity_id: str, max_rows: int | None = None) -> bool:
        """Apply up to `max_rows` more rows of a running activity (all when `None`); after
        the last, `finish_activity` ends it.

        Returns:
            Whether the activity is finished (`COMPLETE` or `ERROR`).
        """
        activity = self.get_activity(activity_id)
        if activity.done:
            return True
        if not activity.fail:  # a failing run ends in ERROR with nothing applied
            if activity.type == CLEAR_CONTACTS_FROM_LISTS:
                self._clear_lists(activity)
            elif not self._apply_rows(activity, max_rows):
                return False
        self.finish_activity(activity_id)
        return True

    def _apply_rows(self, activity: StoredActivity, max_rows: int | None) -> bool:
        """Apply up to `max_rows` more rows (all when `None`): whether every row is applied."""
        rows = activity._rows
        stop = len(rows) if max_rows is None else min(len(rows), activity._cursor + max_rows)
        now = self.now()
        apply = self._remove_row if activity.type == REMOVE_CONTACTS_FROM_LISTS else self._add_row
        for row in rows[activity._cursor : stop]:
            message = apply(row, activity.list_ids, now)
            if message is None:
                activity.transaction_count += 1
            elif message:
                activity.errors.append(LineError(row.line, row.email, message))
        activity._cursor = stop
        return stop >= len(rows)

    def finish_activity(self, activity_id: str) -> None:
        """`RUNNING` -> `COMPLETE` (or `ERROR` for a failed run), stamping `RunFinishTime`."""
        activity = self.get_activity(activity_id)
        if activity.done:
            return
        if not activity.run_start_time:
            activity.run_start_time = self.now()
        activity.status = "ERROR" if activity.fail else "COMPLETE"
        activity.run_finish_time = self.now()
        activity._rows = []

    def run_activity(self, activity_id: str) -> StoredActivity:
        """Run an activity to its end at once (the synchronous mode for unit tests, §11)."""
        self.start_activity(activity_id)
        self.process_activity(activity_id)
        return self.get_activity(activity_id)

    def _row_email(self, row: _Row) -> str | None:
        email = row.email.lower()
        if len(email) > self.config.max_email_length or not _EMAIL_RE.fullmatch(email):
            return None
        return email

    def _add_row(self, row: _Row, list_ids: tuple[int, ...], now: str) -> str | None:
        """Apply one add row (§6.3); returns a line-error message, `""` to skip silently, or
        `None` on success."""
        email = self._row_email(row)
        if email is None:
            return "Invalid email address"
        state = row.fields.get("StateCode")
        if state and state.upper() not in _US_CA_CODES:
            return f'Unknown US/Canadian state/prov "{state}"'
        for name, value in row.fields.items():
            if len(value) > self._limits[name]:
                return f"{name} is longer than {self._limits[name]} characters"
        if state:
            row.fields["StateCode"] = state.upper()
        contact_id = self._by_email.get(email)
        if contact_id is None:
            contact = StoredContact(
                self._next_contact_id,
                email,
                ACTIVE,
                _known_nonempty(row.fields),
                dict.fromkeys(list_ids, Membership(ACTION_BY_CUSTOMER, now)),
                now,
                now,
                opt_in_time=now,
                opt_in_source=ACTION_BY_CUSTOMER,
            )
            self._next_contact_id += 1
            self._contacts[contact.id] = contact
            self._by_email[email] = contact.id
            for list_id in list_ids:
                self._members[list_id].add(contact.id)
            return None
        contact = self._contacts[contact_id]
        if contact.status == DO_NOT_MAIL:
            return "" if self.config.bulk_skip_dnm_rows else "Contact is on the Do Not Mail list"
        if self.config.bulk_empty_cells_clear:
            fields = _known_nonempty({**contact.fields, **row.fields})
        else:
            fields = {**contact.fields, **_known_nonempty(row.fields)}
        membership = Membership(ACTION_BY_CUSTOMER, now)
        if self.config.bulk_semantics == "replace":
            memberships = {i: contact.memberships.get(i) or membership for i in list_ids}
        else:
            memberships = dict(contact.memberships)
            for list_id in list_ids:
                memberships.setdefault(list_id, membership)
        status = ACTIVE if contact.status == REMOVED and memberships else contact.status
        if (
            fields != contact.fields
            or memberships.keys() != contact.memberships.keys()
            or status != contact.status
        ):
            contact.fields = fields
            contact.status = status
            self._set_memberships(contact, memberships)
            contact.last_update_time = now
        return None

    def _remove_row(self, row: _Row, list_ids: tuple[int, ...], now: str) -> str | None:
        email = self._row_email(row)
        if email is None:
            return "Invalid email address"
        contact_id = self._by_email.get(email)
        if contact_id is None:
            return "Contact does not exist"
        contact = self._contacts[contact_id]
        self._drop_lists(contact, list_ids, now)
        return None

    def _drop_lists(self, contact: StoredContact, list_ids: Iterable[int], now: str) -> None:
        memberships = {k: v for k, v in contact.memberships.items() if k not in list_ids}
        if len(memberships) == len(contact.memberships):
            return
        self._set_memberships(contact, memberships)
        if not memberships and contact.status != DO_NOT_MAIL:
            contact.status = REMOVED
        contact.last_update_time = now

    def _clear_lists(self, activity: StoredActivity) -> None:
        now = self.now()
        targets = set(activity.list_ids)
        affected = sorted(set().union(*(self._members[i] for i in targets if i in self._members)))
        for contact_id in affected:
            self._drop_lists(self._contacts[contact_id], targets, now)
        activity.transaction_count = len(affected)

    # -- persistence -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The whole state as JSON-compatible data (see `from_json`)."""
        return {
            "format": _STATE_FORMAT,
            "version": 1,
            "next_list_id": self._next_list_id,
            "next_contact_id": self._next_contact_id,
            "next_activity_seq": self._next_activity_seq,
            "lists": [
                {
                    "id": s.id,
                    "name": s.name,
                    "sort_order": s.sort_order,
                    "opt_in_default": s.opt_in_default,
                    "display_on_signup": s.display_on_signup,
                    "updated": s.updated,
                }
                for s in self._lists.values()
            ],
            "contacts": [
                {
                    "id": c.id,
                    "email": c.email,
                    "status": c.status,
                    "email_type": c.email_type,
                    "confirmed": c.confirmed,
                    "fields": c.fields,
                    "lists": [
                        {"id": i, "opt_in_source": m.source, "opt_in_time": m.time}
                        for i, m in sorted(c.memberships.items())
                    ],
                    "insert_time": c.insert_time,
                    "last_update_time": c.last_update_time,
                    "opt_in_time": c.opt_in_time,
                    "opt_in_source": c.opt_in_source,
                    "opt_out_time": c.opt_out_time,
                    "opt_out_source": c.opt_out_source,
                    "opt_out_reason": c.opt_out_reason,
                }
                for c in self._contacts.values()
            ],
            "activities": [
                {
                    "id": a.id,
                    "seq": a.seq,
                    "type": a.type,
                    "status": a.status,
                    "insert_time": a.insert_time,
                    "list_ids": list(a.list_ids),
                    "run_start_time": a.run_start_time,
                    "run_finish_time": a.run_finish_time,
                    "transaction_count": a.transaction_count,
                    "errors": [list(e) for e in a.errors],
                    "file_name": a.file_name,
                    # What an unfinished activity still has to do, so that a server started
                    # on this state runs it to the end.
                    **(
                        {}
                        if a.done
                        else {
                            "fail": a.fail,
                            "cursor": a._cursor,
                            "rows": [[r.line, r.email, r.fields] for r in a._rows],
                        }
                    ),
                }
                for a in self._activities.values()
            ],
        }

    @classmethod
    def from_json(
        cls,
        data: Mapping[str, Any],
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> AccountStore:
        """Rebuild a store from `to_json` output.

        Activities that had not finished when the state was saved keep their status and
        their remaining rows, so an app started on the store runs them to the end; with
        `config.unfinished_activities == "error"` (or from a state file that did not keep
        their rows) they end in `ERROR` at once, with nothing more applied.

        Raises:
            ValueError: Not a simulator state document.
        """
        if data.get("format") != _STATE_FORMAT or data.get("version") != 1:
            raise ValueError("not a ctct v1 simulator state (format/version mismatch)")
        store = cls(config, clock=clock)
        try:
            for item in data["lists"]:
                stored = StoredList(
                    int(item["id"]),
                    str(item["name"]),
                    int(item["sort_order"]),
                    bool(item["opt_in_default"]),
                    bool(item["display_on_signup"]),
                    str(item["updated"]),
                )
                store._lists[stored.id] = stored
                store._list_names[stored.name.casefold()] = stored.id
                store._members[stored.id] = set()
            for item in data["contacts"]:
                contact = StoredContact(
                    int(item["id"]),
                    str(item["email"]),
                    str(item["status"]),
                    {str(k): str(v) for k, v in item["fields"].items()},
                    {
                        int(m["id"]): Membership(str(m["opt_in_source"]), str(m["opt_in_time"]))
                        for m in item["lists"]
                    },
                    str(item["insert_time"]),
                    str(item["last_update_time"]),
                    email_type=str(item["email_type"]),
                    confirmed=bool(item["confirmed"]),
                    opt_in_time=str(item["opt_in_time"]),
                    opt_in_source=str(item["opt_in_source"]),
                    opt_out_time=str(item["opt_out_time"]),
                    opt_out_source=str(item["opt_out_source"]),
                    opt_out_reason=str(item["opt_out_reason"]),
                )
                store._contacts[contact.id] = contact
                store._by_email[contact.email] = contact.id
                for list_id in contact.memberships:
                    store._members[list_id].add(contact.id)
            for item in data["activities"]:
                activity = StoredActivity(
                    str(item["id"]),
                    int(item["seq"]),
                    str(item["type"]),
                    str(item["status"]),
                    str(item["insert_time"]),
                    tuple(int(i) for i in item["list_ids"]),
                    run_start_time=str(item["run_start_time"]),
                    run_finish_time=str(item["run_finish_time"]),
                    transaction_count=int(item["transaction_count"]),
                    errors=[LineError(int(e[0]), str(e[1]), str(e[2])) for e in item["errors"]],
                    file_name=str(item["file_name"]),
                )
                store._activities[activity.id] = activity
                if activity.done:
                    continue
                if "rows" in item and store.config.unfinished_activities == "run":
                    activity.fail = bool(item["fail"])
                    activity._cursor = int(item["cursor"])
                    activity._rows = [
                        _Row(int(line), str(email), {str(k): str(v) for k, v in fields.items()})
                        for line, email, fields in item["rows"]
                    ]
                else:
                    store.fail_activity(activity.id)
            store._next_list_id = int(data["next_list_id"])
            store._next_contact_id = int(data["next_contact_id"])
            store._next_activity_seq = int(data["next_activity_seq"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"invalid simulator state: {exc!r}") from exc
        contacts = store._contacts
        if store._next_contact_id <= max(contacts, default=0):
            raise ValueError("invalid simulator state: next_contact_id too small")
        return store

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state as JSON, atomically (temporary file in the same folder + rename)."""
        self.save_json(self.to_json(), path)

    @staticmethod
    def save_json(data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
        """Write `to_json` output atomically and durably (see `.._shared.save_json`)."""
        save_json(data, path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> AccountStore:
        """Read a state file written by `save`.

        Raises:
            OSError: The file cannot be read.
            ValueError: It is not a valid state document.
        """
        with open(path, encoding="utf-8") as handle:
            return cls.from_json(json.load(handle), config, clock=clock)


def _known_nonempty(fields: Mapping[str, str]) -> dict[str, str]:
    """Detail fields worth storing: known element names with a non-empty value."""
    return {k: v for k, v in fields.items() if v and k in _FIELD_SET}
