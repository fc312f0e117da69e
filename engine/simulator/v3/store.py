"""In-memory state of one simulated V3 account, and every V3 API rule that changes it.

Pure: no aiohttp, no clock of its own (`clock` is injected and drives every timestamp, the
daily quota, token expiry and activity retention), no randomness but ids and tokens. The web
layer (`app.py`) parses JSON, calls one method here and renders with `render.py`; a refusal
is an `ApiError` carrying its HTTP status and body.

Sections of `ctct-v3-api.md` are cited where a rule comes from; the [U] points read their
variant from `self.config` (a v3 `SimulatorConfig`). The account also holds its
authorization server's grants (`auth`), so that one state file restores both.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import os
import random
import re
import time
import uuid
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple

from .._shared import save_json
from ._json import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    TooManyRequests,
    id_list,
    is_email,
    is_uuid,
    iso_time,
    opt_bool,
    opt_int,
    opt_list,
    opt_str,
)
from .config import SimulatorConfig
from .oauth import AuthServer

__all__ = [
    "ACTIVITY_KINDS",
    "CORE_FIELDS",
    "DESTRUCTIVE_ENDPOINTS",
    "SUBRESOURCES",
    "TERMINAL_STATES",
    "AccountStore",
    "ContactPage",
    "StoredActivity",
    "StoredContact",
    "StoredList",
    "WriteRecord",
]

#: Core properties: a PUT nulls those it does not receive (§3.5).
CORE_FIELDS: tuple[str, ...] = (
    "first_name",
    "last_name",
    "job_title",
    "company_name",
    "birthday_month",
    "birthday_day",
    "anniversary",
)
_CORE_STRINGS = ("first_name", "last_name", "job_title", "company_name")
#: Subresources: returned only with `include=`, kept by a PUT that omits them (§3.1, §3.5).
SUBRESOURCES: tuple[str, ...] = (
    "custom_fields",
    "list_memberships",
    "phone_numbers",
    "street_addresses",
    "taggings",
    "notes",
    "sms_channel",
)
PERMISSIONS = (
    "explicit",
    "implicit",
    "not_set",
    "pending_confirmation",
    "temp_hold",
    "unsubscribed",
)
CONTACT_STATUSES = ("all", "active", "deleted", *PERMISSIONS[2:])
SOURCES = ("Account", "Contact")
TERMINAL_STATES = frozenset({"completed", "cancelled", "failed", "timed_out"})
ACTIVITY_KINDS = (
    "contacts_json_import",
    "add_list_memberships",
    "remove_list_memberships",
    "contact_delete",
    "list_delete",
    "contact_exports",
)
#: Endpoints (as `WriteRecord.endpoint` names them) that remove memberships, contacts or
#: lists, or assert consent: a list-safe migration never calls them (§5.6, §3.6).
DESTRUCTIVE_ENDPOINTS = frozenset(
    {
        "contacts.sign_up_form",
        "contacts.delete",
        "contact_lists.delete",
        "activities.remove_list_memberships",
        "activities.contact_delete",
        "activities.list_delete",
    }
)
#: Fields of a contact export (the contract names the `email_opt*` ones; the rest are [I]).
EXPORT_FIELDS: tuple[str, ...] = (
    "contact_id",
    "email_address",
    "permission_to_send",
    "first_name",
    "last_name",
    "job_title",
    "company_name",
    "birthday_month",
    "birthday_day",
    "anniversary",
    "email_optin_source",
    "email_optin_date",
    "email_optout_source",
    "email_optout_date",
    "email_optout_reason",
    "list_memberships",
    "created_at",
    "updated_at",
)
_ANNIVERSARY_RE = re.compile(
    r"\d{1,2}/\d{1,2}/\d{4}|\d{4}/\d{1,2}/\d{1,2}|\d{4}-\d{1,2}-\d{1,2}|\d{1,2}-\d{1,2}-\d{4}"
)
_PHONE_KINDS = ("home", "work", "mobile", "other")
_ADDRESS_KINDS = ("home", "work", "other")
_ADDRESS_PARTS = {"street": 255, "city": 50, "state": 50, "postal_code": 50, "country": 50}
#: JSON import phone columns -> kind (§5.2: `phone` is kind `other`).
_IMPORT_PHONES = {
    "phone": "other",
    "home_phone": "home",
    "work_phone": "work",
    "mobile_phone": "mobile",
    "other_phone": "other",
}
_IMPORT_ADDRESS_PARTS = {
    "street": "street",
    "street2": "street2",
    "city": "city",
    "state": "state",
    "zip": "postal_code",
    "country": "country",
}
#: Import columns of addresses, by the prefix of each kind (the contract spells the home
#: country `home country`).
_IMPORT_ADDRESS_KINDS = (("", "home"), ("home_", "home"), ("work_", "work"), ("other_", "other"))
_IMPORT_ADDRESS_COLUMNS = tuple(
    (
        "home country" if prefix == "home_" and column == "country" else f"{prefix}{column}",
        kind,
        part,
        255 if column.startswith("street") else 50,
    )
    for prefix, kind in _IMPORT_ADDRESS_KINDS
    for column, part in _IMPORT_ADDRESS_PARTS.items()
)
#: Every column of a phone or an address: a row with none of them skips their checks.
_IMPORT_SUBRESOURCE_COLUMNS = frozenset(
    [*_IMPORT_PHONES, *(name for name, _, _, _ in _IMPORT_ADDRESS_COLUMNS)]
)
_STATE_FORMAT = "ctct-v3-simulator-state"
_ID_RANDOM = random.SystemRandom()

#: Queries whose first page's sorted rows are kept for their next pages (`_next_page`).
PAGED_QUERIES = 16


def new_id() -> str:
    """A time-based (version 1) UUID on a `fa163e…` node, the form of real ids (§2.1)."""
    return str(uuid.uuid1(node=0xFA163E000000 | _ID_RANDOM.getrandbits(24)))


# ---------------------------------------------------------------------------------------------
# Records.


@dataclass(slots=True, eq=False)
class StoredList:
    """A contact list (§4.1); times are epoch seconds."""

    id: str
    seq: int
    name: str
    favorite: bool
    description: str | None
    created_at: float
    updated_at: float
    deleted_at: float | None = None


@dataclass(slots=True, eq=False)
class StoredContact:
    """A contact as the account holds it (§3.1); times are epoch seconds.

    Attributes:
        email: The address as last written (`None` once a PUT nulled it); unique in the
            account, compared case-insensitively with `email_case_insensitive`.
        core: The core properties present (`CORE_FIELDS`); absent = null.
        permission: `permission_to_send`.
        deleted_at: Set by DELETE, cleared by a revival.
        lists: `list_memberships`, in the order they were added.
        subresources: The other subresources (`custom_fields`, `phone_numbers`,
            `street_addresses`, `notes`, `taggings`, `sms_channel`), as rendered except that
            their times are epoch seconds.
    """

    id: str
    seq: int
    email: str | None
    core: dict[str, Any]
    permission: str
    created_at: float
    updated_at: float
    email_created_at: float
    email_updated_at: float
    create_source: str
    update_source: str | None = None
    opt_in_source: str | None = None
    opt_in_date: float | None = None
    opt_out_source: str | None = None
    opt_out_date: float | None = None
    opt_out_reason: str | None = None
    confirm_status: str = "off"
    deleted_at: float | None = None
    lists: list[str] = field(default_factory=list)
    subresources: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """The `status` filter value this contact matches (`active` for explicit/implicit)."""
        if self.deleted_at is not None:
            return "deleted"
        return "active" if self.permission in ("explicit", "implicit") else self.permission


@dataclass(slots=True, eq=False)
class StoredActivity:
    """A bulk activity and its progress (§5.5).

    Attributes:
        kind: One of `ACTIVITY_KINDS`.
        state: `initialized`, `processing`, or a terminal state.
        outcome: The terminal state it will reach, drawn at submission from the fault rates.
        counts: The `status` counters.
        errors: `activity_errors` strings.
        params: What the kind needs beyond its items (`list_ids`, `fields`…).
        items: The work: import rows `[line, row]`, or contact or list ids.
        cursor: Items done so far.
        result: The CSV of a completed export.
    """

    id: str
    seq: int
    kind: str
    state: str
    outcome: str
    created_at: float
    updated_at: float
    started_at: float | None = None
    completed_at: float | None = None
    percent_done: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    items: list[Any] = field(default_factory=list, repr=False)
    cursor: int = 0
    result: str | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        """Whether the activity reached a terminal state."""
        return self.state in TERMINAL_STATES


class WriteRecord(NamedTuple):
    """One write request the API received (any outcome), for tests to assert on."""

    method: str
    path: str
    endpoint: str
    status: int


class ContactPage(NamedTuple):
    """One page of `GET /contacts`."""

    contacts: list[StoredContact]
    next_key: str | None
    total: int


# ---------------------------------------------------------------------------------------------
# The account.


class AccountStore:
    """Lists, contacts, custom fields, activities and grants of one V3 account.

    Args:
        config: The semantic settings to play; `create_app` rebinds it to the app's config.
        clock: Epoch seconds, for every timestamp and expiry; inject a fake in tests.
    """

    def __init__(
        self, config: SimulatorConfig | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        config = config or SimulatorConfig()
        self.clock = clock
        self.auth = AuthServer(config, clock)
        self.config = config
        self.account_id = "a07e1" + uuid.uuid4().hex[:8]
        self._lists: dict[str, StoredList] = {}
        self._members: dict[str, set[str]] = {}
        #: query -> the order keys and rows its first page sorted (`_next_page`).
        self._pages: OrderedDict[
            tuple[tuple[Any, ...], ...], tuple[list[str], list[StoredContact]]
        ] = OrderedDict()
        self._contacts: dict[str, StoredContact] = {}
        self._updated = _UpdateIndex()
        self._by_email: dict[str, str] = {}
        self._custom_fields: dict[str, str] = {}
        self._activities: dict[str, StoredActivity] = {}
        self._seq = 0
        #: Every write request received (method, path, endpoint, status); not saved.
        self.writes: list[WriteRecord] = []
        #: Activities a running app has queued (not saved): an app started on this store
        #: adopts the unfinished activities that are not in it.
        self.claimed_activities: set[str] = set()
        #: Bumped on every applied write and activity step (not saved), for a saver.
        self.revision = 0

    @property
    def config(self) -> SimulatorConfig:
        """The settings in force."""
        return self._config

    @config.setter
    def config(self, config: SimulatorConfig) -> None:
        self._config = config
        self.auth.config = config

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _key(self, email: str) -> str:
        return email.casefold() if self.config.email_case_insensitive else email

    # -- the write log ---------------------------------------------------------------------------

    def log_write(self, method: str, path: str, endpoint: str, status: int) -> None:
        """Record one write request (the app calls it for every POST, PUT, PATCH, DELETE)."""
        self.writes.append(WriteRecord(method, path, endpoint, status))

    def calls(self, endpoint: str) -> list[WriteRecord]:
        """The write requests received for one endpoint name (e.g. `contacts.sign_up_form`)."""
        return [w for w in self.writes if w.endpoint == endpoint]

    def destructive_calls(self) -> list[WriteRecord]:
        """Write requests to any of `DESTRUCTIVE_ENDPOINTS`."""
        return [w for w in self.writes if w.endpoint in DESTRUCTIVE_ENDPOINTS]

    # -- custom fields ---------------------------------------------------------------------------

    def create_custom_field(self, name: str) -> str:
        """Define a custom field (seeding only); returns its id. JSON import columns name it
        `cf:<name>`."""
        for field_id, existing in self._custom_fields.items():
            if existing == name:
                return field_id
        field_id = new_id()
        self._custom_fields[field_id] = name
        return field_id

    def custom_field_id(self, name: str) -> str | None:
        """The id of the custom field called `name`."""
        return next((i for i, n in self._custom_fields.items() if n == name), None)

    # -- lists -----------------------------------------------------------------------------------

    def _name_key(self, name: str) -> str:
        return name.casefold() if self.config.list_names_case_insensitive else name

    def _check_list_name(self, name: str, own_id: str | None) -> None:
        key = self._name_key(name)
        for stored in self._lists.values():
            if stored.id == own_id or self._name_key(stored.name) != key:
                continue
            if stored.deleted_at is None or self.config.deleted_list_names_block:
                raise Conflict(
                    f"The list name {name!r} is already in use; each list name must be unique",
                    "contact_lists.api.conflict",
                )

    def _list_input(self, body: Mapping[str, Any]) -> tuple[str, bool, str | None]:
        name = opt_str(body, "name", 255)
        if name is None or not name.strip():
            raise BadRequest("name is required", "contact_lists.api.validation.error")
        favorite = opt_bool(body, "favorite") or False
        description = opt_str(body, "description", 255)
        return name, favorite, description

    def create_list(self, body: Mapping[str, Any]) -> StoredList:
        """`POST /contact_lists` (§4.1): 409 on a duplicate name, the account cap (§4.2).

        Raises:
            BadRequest: No or an over-long name; the cap with `list_cap_status` 400.
            Conflict: The name is taken; the cap with `list_cap_status` 409.
        """
        name, favorite, description = self._list_input(body)
        self._check_list_name(name, None)
        active = sum(1 for s in self._lists.values() if s.deleted_at is None)
        if active >= self.config.list_cap:
            message = f"The account already has the maximum of {self.config.list_cap} lists"
            error: ApiError = (
                BadRequest(message, "contact_lists.api.limit")
                if self.config.list_cap_status == 400
                else Conflict(message, "contact_lists.api.limit")
            )
            raise error
        now = self.clock()
        stored = StoredList(new_id(), self._next_seq(), name, favorite, description, now, now)
        self._lists[stored.id] = stored
        self._members[stored.id] = set()
        return stored

    def add_list(self, name: str, *, favorite: bool = False) -> str:
        """Seed a list (as `POST /contact_lists` would); returns its id."""
        return self.create_list({"name": name, "favorite": favorite}).id

    def update_list(self, list_id: str, body: Mapping[str, Any]) -> StoredList:
        """`PUT /contact_lists/{id}`: rename; a taken name is 409 [I].

        Raises:
            NotFound: Unknown or deleted list.
            BadRequest: Invalid body.
            Conflict: Another list has that name.
        """
        stored = self.get_list(list_id)
        name, favorite, description = self._list_input(body)
        self._check_list_name(name, list_id)
        stored.name, stored.favorite = name, favorite
        if "description" in body:
            stored.description = description
        stored.updated_at = self.clock()
        return stored

    def get_list(self, list_id: str, *, deleted: bool = False) -> StoredList:
        """A list by id (a deleted one only with `deleted`).

        Raises:
            NotFound: Unknown (or deleted) list.
        """
        stored = self._lists.get(list_id)
        if stored is None or (stored.deleted_at is not None and not deleted):
            raise NotFound(f"List {list_id} not found", "contact_lists.api.not_found")
        return stored

    def lists(self, status: str = "active") -> list[StoredList]:
        """Lists in creation order: `active`, `deleted` or `all`."""
        return [
            s
            for s in sorted(self._lists.values(), key=lambda s: s.seq)
            if status == "all" or (s.deleted_at is None) == (status == "active")
        ]

    def list_by_name(self, name: str) -> StoredList | None:
        """The active list with exactly this name (`GET /contact_lists?name=`, §4.1)."""
        return next((s for s in self.lists() if s.name == name), None)

    def members(self, list_id: str) -> set[str]:
        """Ids of the contacts on a list."""
        return set(self._members.get(list_id, ()))

    def member_count(self, list_id: str, which: str = "all") -> int:
        """`membership_count`: every member (`all`) or only the active ones (`active`)."""
        ids = self._members.get(list_id, set())
        if which == "all":
            return len(ids)
        return sum(1 for i in ids if self._contacts[i].status == "active")

    def delete_list(self, list_id: str) -> StoredActivity:
        """`DELETE /contact_lists/{id}`: the list is gone at once, its memberships are removed
        by the activity returned (§4.1)."""
        stored = self.get_list(list_id)
        stored.deleted_at = self.clock()
        return self._new_activity("list_delete", [stored.id], {"list_count": 1})

    def _check_lists_exist(self, list_ids: Iterable[str], where: str = "list_memberships") -> None:
        for list_id in list_ids:
            stored = self._lists.get(list_id)
            if stored is None or stored.deleted_at is not None:
                raise BadRequest(f"{where}: list {list_id} does not exist")

    def _touch(self, contact: StoredContact, now: float) -> None:
        """Stamp the contact's `updated_at` (every write does, §10.6.33, and a creation),
        and index it."""
        contact.updated_at = now
        self._updated.add(now, contact.id, self._contacts)

    def _set_lists(self, contact: StoredContact, lists: Sequence[str]) -> None:
        new = list(dict.fromkeys(lists))
        for list_id in set(contact.lists) - set(new):
            self._members[list_id].discard(contact.id)
        for list_id in new:
            self._members[list_id].add(contact.id)
        contact.lists = new

    # -- contacts: reads -------------------------------------------------------------------------

    def get_contact(self, contact_id: str) -> StoredContact:
        """A contact by id; deleted contacts too (§3.3).

        Raises:
            NotFound: Unknown id, or not a UUID.
        """
        if not is_uuid(contact_id):
            raise NotFound("contact_id is in an invalid format.")
        contact = self._contacts.get(contact_id)
        if contact is None:
            raise NotFound(f"Contact {contact_id} not found")
        return contact

    def contact_by_email(self, email: str) -> StoredContact | None:
        """The contact with this address, deleted or not."""
        contact_id = self._by_email.get(self._key(email))
        return None if contact_id is None else self._contacts[contact_id]

    def contacts(self) -> Iterator[StoredContact]:
        """Every contact, deleted ones included, in creation order."""
        return iter(sorted(self._contacts.values(), key=lambda c: c.seq))

    def contact_count(self) -> int:
        """How many contacts the account holds, deleted ones included."""
        return len(self._contacts)

    def _order_key(self, contact: StoredContact) -> str:
        if self.config.contacts_order == "email":
            return f"{self._key(contact.email or '')}\x00{contact.seq:012d}"
        return f"{contact.seq:012d}"

    def search_contacts(
        self,
        *,
        email: str | None = None,
        statuses: Sequence[str] = (),
        lists: Sequence[str] = (),
        tags: Sequence[str] = (),
        ranges: Mapping[str, float] | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> ContactPage:
        """`GET /contacts` (§3.2): exact `email`, `status` (by default every contact that is
        not deleted: the deleted-contact trap), `lists` (any of them), the date ranges
        (`created_after`… as epoch seconds), `tags` (any of them), and cursor paging after
        an order key."""
        query = (tuple(statuses), tuple(lists), tuple(tags), tuple(sorted((ranges or {}).items())))
        if email is None and after is not None and query in self._pages:
            return self._next_page(query, after, limit)
        if email is not None:
            found = self.contact_by_email(email)
            candidates = [] if found is None else [found]
        elif (
            changed := self._updated.after(
                (ranges or {}).get("updated_after"), (ranges or {}).get("updated_before")
            )
        ) is not None:
            # The contacts written within the range: a read-back of an import's few
            # thousand among a million members, without a scan of all of them for every
            # read, nor of every contact written since (the imports that ran after it).
            candidates = [self._contacts[i] for i in changed]
            if lists:
                on = set(lists)
                candidates = [c for c in candidates if not on.isdisjoint(c.lists)]
        elif len(lists) == 1:  # the usual read of a list: its members, not a copy of them
            members = self._members.get(lists[0], set())
            candidates = [self._contacts[i] for i in members]
        elif lists:
            ids = set().union(*(self._members.get(i, set()) for i in lists))
            candidates = [self._contacts[i] for i in ids]
        else:
            candidates = list(self._contacts.values())
        wanted = set(statuses)
        if email is not None and lists:
            candidates = [c for c in candidates if set(c.lists) & set(lists)]
        if tags:
            candidates = [
                c for c in candidates if set(tags) & set(c.subresources.get("taggings", ()))
            ]
        in_ranges = _range_test(ranges)
        rows = [c for c in candidates if _matches_status(c, wanted) and in_ranges(c)]
        rows.sort(key=self._order_key)
        total = len(rows)
        if email is None:  # the next pages of this query start from these rows
            self._pages[query] = ([self._order_key(c) for c in rows], rows)
            self._pages.move_to_end(query)
            while len(self._pages) > PAGED_QUERIES:
                self._pages.popitem(last=False)
        if after is not None:
            rows = rows[bisect.bisect_right([self._order_key(c) for c in rows], after) :]
        page = rows[:limit]
        next_key = self._order_key(page[-1]) if len(rows) > limit else None
        return ContactPage(page, next_key, total)

    def _next_page(self, query: tuple[tuple[Any, ...], ...], after: str, limit: int) -> ContactPage:
        """A page after the first of a query, from the rows its first page sorted (which
        would otherwise be sorted again for every page: a read of a million contacts, 500
        a page, would take hours). Each row is checked again as it is now (a contact that
        no longer matches is left out); one added since the first page is not seen, as a
        cursor over a snapshot would not see it."""
        statuses, lists, tags, ranges = query
        wanted, on, tagged = set(statuses), set(lists), set(tags)
        keys, rows = self._pages[query]
        in_ranges = _range_test(dict(ranges))
        page: list[StoredContact] = []
        more = False
        for contact in rows[bisect.bisect_right(keys, after) :]:
            if not (_matches_status(contact, wanted) and in_ranges(contact)):
                continue
            if on and not on & set(contact.lists):
                continue
            if tagged and not tagged & set(contact.subresources.get("taggings", ())):
                continue
            if len(page) == limit:
                more = True
                break
            page.append(contact)
        next_key = self._order_key(page[-1]) if more else None
        return ContactPage(page, next_key, len(rows))

    def counts(self) -> dict[str, int]:
        """`GET /contacts/counts` (§3.7): consent counts of the contacts that are not deleted."""
        live = [c for c in self._contacts.values() if c.deleted_at is None]
        day = 30 * 86400
        now = self.clock()
        return {
            "total": len(live),
            "explicit": sum(1 for c in live if c.permission == "explicit"),
            "implicit": sum(1 for c in live if c.permission == "implicit"),
            "pending": sum(1 for c in live if c.permission == "pending_confirmation"),
            "unsubscribed": sum(1 for c in live if c.permission == "unsubscribed"),
            "new_subscriber": sum(
                1 for c in live if c.status == "active" and now - c.created_at <= day
            ),
        }

    # -- contacts: writes ------------------------------------------------------------------------

    def _core_input(self, body: Mapping[str, Any]) -> dict[str, Any]:
        core: dict[str, Any] = {}
        for name in _CORE_STRINGS:
            value = opt_str(body, name, 50)
            if value is not None:
                core[name] = value
        month = opt_int(body, "birthday_month", 1, 12)
        day = opt_int(body, "birthday_day", 1, 31)
        if (month is None) != (day is None):
            raise BadRequest("birthday_month and birthday_day must be given together")
        if month is not None:
            core.update(birthday_month=month, birthday_day=day)
        anniversary = opt_str(body, "anniversary", 10)
        if anniversary is not None and anniversary != "":
            if not _ANNIVERSARY_RE.fullmatch(anniversary):
                raise BadRequest("anniversary is not in a supported date format")
            core["anniversary"] = anniversary
        return core

    def _source(self, body: Mapping[str, Any], name: str) -> str:
        value = body.get(name)
        if value not in SOURCES:
            raise BadRequest(f"{name} is missing, {name} does not have a valid value")
        return str(value)

    def _email_input(self, body: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
        """(address, permission_to_send, opt_out_reason) of an `email_address` object."""
        raw = body.get("email_address")
        if raw is None:
            return None, None, None
        if not isinstance(raw, dict):
            raise BadRequest("email_address must be an object")
        address = opt_str(raw, "address", 80, "email_address.")
        if address is None or not is_email(address):
            raise BadRequest("email_address.address is missing or not a valid email address")
        permission = raw.get("permission_to_send")
        if permission is not None and permission not in PERMISSIONS:
            raise BadRequest("email_address.permission_to_send does not have a valid value")
        reason = opt_str(raw, "opt_out_reason", 255, "email_address.")
        return address, permission, reason

    def _subresource_input(
        self, body: Mapping[str, Any], now: float, source: str
    ) -> dict[str, Any]:
        """The subresources present in a POST or PUT body, validated (§3.1 limits)."""
        out: dict[str, Any] = {}
        lists = id_list(body, "list_memberships", self.config.max_lists_per_contact)
        if lists is not None:
            self._check_lists_exist(lists)
            out["list_memberships"] = lists
        tags = id_list(body, "taggings", 50)
        if tags is not None:
            out["taggings"] = tags
        fields = opt_list(body, "custom_fields", 25)
        if fields is not None:
            out["custom_fields"] = [self._custom_field_input(f) for f in fields]
        phones = opt_list(body, "phone_numbers", 3)
        if phones is not None:
            out["phone_numbers"] = [_phone_input(p, now, source) for p in phones]
        addresses = opt_list(body, "street_addresses", 3)
        if addresses is not None:
            out["street_addresses"] = [_address_input(a, now) for a in addresses]
        notes = opt_list(body, "notes", 150)
        if notes is not None:
            out["notes"] = [_note_input(n, now) for n in notes]
        sms = body.get("sms_channel")
        if sms is not None:
            if not isinstance(sms, dict) or not isinstance(sms.get("full_sms_address"), str):
                raise BadRequest("sms_channel.full_sms_address is required")
            out["sms_channel"] = {
                "sms_channel_id": new_id(),
                "sms_address": sms["full_sms_address"],
                "dial_code": "1",
                "country_code": "US",
                "create_source": source,
                "update_source": source,
            }
        return out

    def _custom_field_input(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, dict):
            raise BadRequest("custom_fields items must be objects")
        field_id = item.get("custom_field_id")
        if not isinstance(field_id, str) or field_id not in self._custom_fields:
            raise BadRequest(f"custom field {field_id!r} does not exist")
        value = opt_str(item, "value", 255, "custom_fields.") or ""
        return {"custom_field_id": field_id, "value": value}

    def _claim_email(self, contact: StoredContact, address: str | None) -> None:
        """Point the email index at `contact` for `address`.

        Raises:
            Conflict: Another contact (of any status) has the address (§3.4).
        """
        if address is not None:
            other = self.contact_by_email(address)
            if other is not None and other is not contact:
                raise Conflict(f"Validation failed: Email already exists for contact {other.id}")
        if contact.email is not None:
            self._by_email.pop(self._key(contact.email), None)
        contact.email = address
        if address is not None:
            self._by_email[self._key(address)] = contact.id

    def create_contact(self, body: Mapping[str, Any]) -> StoredContact:
        """`POST /contacts` (§3.4): `create_source` required; 409 for any existing email,
        deleted and unsubscribed contacts included.

        Raises:
            BadRequest: Invalid body.
            Conflict: The email exists.
        """
        source = self._source(body, "create_source")
        address, permission, reason = self._email_input(body)
        core = self._core_input(body)
        if (
            address is None
            and not core.keys() & {"first_name", "last_name"}
            and not body.get("sms_channel")
        ):
            raise BadRequest(
                "A contact needs at least one of first_name, last_name, email_address or "
                "sms_channel"
            )
        if address is not None:
            existing = self.contact_by_email(address)
            if existing is not None:
                raise Conflict(f"Validation failed: Email already exists for contact {existing.id}")
        now = self.clock()
        subresources = self._subresource_input(body, now, source)
        permission = permission or "implicit"
        contact = StoredContact(
            new_id(),
            self._next_seq(),
            None,
            core,
            permission,
            now,
            now,
            now,
            now,
            source,
            update_source=source,
        )
        if permission == "unsubscribed":
            contact.opt_out_source, contact.opt_out_date = source, now
            contact.opt_out_reason = reason
        else:
            contact.opt_in_source, contact.opt_in_date = source, now  # [I] §10.3.17
        self._contacts[contact.id] = contact
        self._touch(contact, contact.updated_at)  # indexed with the stamp it was created with
        self._claim_email(contact, address)
        self._set_lists(contact, subresources.pop("list_memberships", []))
        contact.subresources.update(subresources)
        return contact

    def update_contact(
        self, contact_id: str, body: Mapping[str, Any], *, interleave: bool = False
    ) -> StoredContact:
        """`PUT /contacts/{id}` (§3.5): a full replace of the core properties (those not sent
        become null), omitted subresources kept, included ones replaced (`list_memberships:
        []` clears every list), and a deleted contact revived (`update_source` `Account`).

        Args:
            contact_id: The contact.
            body: The PUT body.
            interleave: First let a foreign sign-up add the contact to
                `interleave_list_name` (the lost-update window, §9.1).

        Raises:
            NotFound: Unknown id.
            BadRequest: Invalid body (no `update_source`, more than 50 lists…).
            Conflict: The new address belongs to another contact.
        """
        contact = self.get_contact(contact_id)
        source = self._source(body, "update_source")
        address, permission, reason = self._email_input(body)
        if address is None and self.config.missing_email_on_put == "reject_400":
            raise BadRequest("email_address is required")
        core = self._core_input(body)
        now = self.clock()
        subresources = self._subresource_input(body, now, source)
        if contact.deleted_at is not None and source != "Account":
            raise BadRequest("To restore a deleted contact, update_source must be Account")
        if address is not None:
            other = self.contact_by_email(address)
            if other is not None and other is not contact:
                raise Conflict(f"Validation failed: Email already exists for contact {other.id}")
        if interleave:
            self._foreign_signup(contact)
        new_lists = subresources.pop("list_memberships", None)
        if new_lists is not None and contact.permission == "unsubscribed":
            new_lists = self._unsubscribed_lists(contact, new_lists)
        # Everything is validated: apply.
        if address != contact.email:
            contact.email_updated_at = now
        self._claim_email(contact, address)
        contact.core = core
        if contact.deleted_at is not None:
            contact.deleted_at = None
            if contact.permission != "unsubscribed":
                contact.opt_out_source = contact.opt_out_date = None
        if permission == "unsubscribed" and contact.permission != "unsubscribed":
            contact.permission = "unsubscribed"
            contact.opt_out_source, contact.opt_out_date = source, now
            contact.opt_out_reason = reason
            contact.email_updated_at = now
        elif permission is not None and contact.permission != "unsubscribed":
            # Re-subscribing an opted-out contact takes the contact's own action (§3.5): a
            # PUT never does it, so an unsubscribed contact keeps its permission.
            contact.permission = permission
        if new_lists is not None:
            self._set_lists(contact, new_lists)
        for name, value in subresources.items():
            if self.config.put_subresources == "merge" and name in contact.subresources:
                contact.subresources[name] = _merge(name, contact.subresources[name], value)
            else:
                contact.subresources[name] = value
        contact.update_source = source
        self._touch(contact, now)
        return contact

    def _unsubscribed_lists(self, contact: StoredContact, lists: list[str]) -> list[str]:
        """The lists a PUT may leave on an unsubscribed contact ([U] §3.5, §12.6)."""
        added = [i for i in lists if i not in contact.lists]
        if not added:
            return lists
        rule = self.config.unsubscribed_list_add
        if rule == "allow_if_account_optout" and contact.opt_out_source == "Account":
            return lists
        if rule == "reject_400":
            raise BadRequest("Lists cannot be added to an unsubscribed contact")
        return [i for i in lists if i in contact.lists]

    def _foreign_signup(self, contact: StoredContact) -> None:
        name = self.config.interleave_list_name
        stored = self.list_by_name(name) or self.create_list({"name": name})
        if (
            stored.id not in contact.lists
            and len(contact.lists) < self.config.max_lists_per_contact
        ):
            self._set_lists(contact, [*contact.lists, stored.id])
            self._touch(contact, self.clock())

    def delete_contact(self, contact_id: str) -> None:
        """`DELETE /contacts/{id}` (§3.7): deleted status, opt-out fields, memberships stripped.

        Raises:
            NotFound: Unknown id, or already deleted.
        """
        contact = self.get_contact(contact_id)
        if contact.deleted_at is not None:
            raise NotFound(f"Contact {contact_id} not found")
        self._delete(contact)

    def _delete(self, contact: StoredContact) -> None:
        now = self.clock()
        contact.deleted_at = now
        if contact.permission != "unsubscribed":
            contact.opt_out_source, contact.opt_out_date = "Account", now
        self._set_lists(contact, [])
        self._touch(contact, now)

    def sign_up_form(self, body: Mapping[str, Any], *, conflict: bool = False) -> tuple[str, bool]:
        """`POST /contacts/sign_up_form` (§3.6): create or partially update by email; lists and
        custom fields appended; existing contacts (even unsubscribed ones) made `explicit`;
        deleted ones revived.

        Args:
            body: The request body.
            conflict: Answer 409 "simultaneous requests" (drawn by the app).

        Returns:
            The contact id and whether it was created.

        Raises:
            BadRequest: Invalid body, or more than 50 lists after the append.
            Conflict: With `conflict`.
        """
        address = opt_str(body, "email_address", 50)
        if address is None or not is_email(address):
            raise BadRequest("email_address is missing or not a valid email address")
        lists = id_list(body, "list_memberships", 50, min_items=1)
        if lists is None:
            raise BadRequest("list_memberships is required")
        self._check_lists_exist(lists)
        core = self._core_input(body)
        phone = opt_str(body, "phone_number", 25)
        fields = opt_list(body, "custom_fields", 50)
        custom = [self._custom_field_input(f) for f in fields or []]
        address_input = body.get("street_address")
        now = self.clock()
        street = None if address_input is None else _address_input(address_input, now)
        if conflict:
            raise Conflict(
                "You sent simultaneous requests that are attempting to modify the same contact"
            )
        contact = self.contact_by_email(address)
        created = contact is None
        if contact is None:
            pending = self.config.confirmed_opt_in
            contact = StoredContact(
                new_id(),
                self._next_seq(),
                None,
                {},
                "pending_confirmation" if pending else "explicit",
                now,
                now,
                now,
                now,
                "Contact",
                update_source="Contact",
                opt_in_source="Contact",
                opt_in_date=None if pending else now,
                confirm_status="pending" if pending else "off",
            )
            self._contacts[contact.id] = contact
            self._touch(contact, contact.updated_at)  # indexed with the stamp it was created with
            self._claim_email(contact, address)
        else:
            union = list(dict.fromkeys([*contact.lists, *lists]))
            if len(union) > self.config.max_lists_per_contact:
                raise BadRequest(
                    f"A contact can be on at most {self.config.max_lists_per_contact} lists"
                )
            # "Existing contacts are set to explicit", even unsubscribed ones (D11).
            contact.permission = "explicit"
            contact.opt_in_source, contact.opt_in_date = "Contact", now
            contact.opt_out_source = contact.opt_out_date = contact.opt_out_reason = None
            contact.deleted_at = None
            contact.update_source = "Contact"
            contact.email_updated_at = now
        contact.core.update(core)
        self._set_lists(contact, [*contact.lists, *lists])
        if phone:
            phones = contact.subresources.setdefault("phone_numbers", [])
            if all(p["phone_number"] != phone for p in phones) and len(phones) < 3:
                phones.append(_phone_input({"phone_number": phone, "kind": "home"}, now, "Contact"))
        if street is not None:
            kept = [
                a
                for a in contact.subresources.get("street_addresses", [])
                if a["kind"] != street["kind"]
            ]
            contact.subresources["street_addresses"] = [*kept, street][-3:]
        if custom:
            contact.subresources["custom_fields"] = _merge(
                "custom_fields", contact.subresources.get("custom_fields", []), custom
            )[:25]
        self._touch(contact, now)
        return contact.id, created

    def add_contact(
        self,
        email: str,
        *,
        lists: Sequence[str] = (),
        permission: str = "implicit",
        first_name: str | None = None,
        last_name: str | None = None,
        deleted: bool = False,
    ) -> str:
        """Seed a contact (as `POST /contacts` with `create_source: Account` would, then an
        optional DELETE); returns its id."""
        body: dict[str, Any] = {
            "create_source": "Account",
            "email_address": {"address": email, "permission_to_send": permission},
            "list_memberships": list(lists),
        }
        if first_name is not None:
            body["first_name"] = first_name
        if last_name is not None:
            body["last_name"] = last_name
        contact = self.create_contact(body)
        if deleted:
            self._delete(contact)
        return contact.id

    # -- activities: submission ------------------------------------------------------------------

    def _new_activity(
        self, kind: str, items: list[Any], counts: dict[str, int], **params: Any
    ) -> StoredActivity:
        queued = sum(1 for a in self._activities.values() if not a.done)
        if queued >= self.config.activity_queue_cap:
            raise TooManyRequests(
                f"You exceeded {self.config.activity_queue_cap:,} queued activities for this "
                "user account.",
                "too_many_requests",
            )
        now = self.clock()
        activity = StoredActivity(
            new_id(),
            self._next_seq(),
            kind,
            "initialized",
            "completed",
            now,
            now,
            counts=counts,
            params=params,
            items=items,
        )
        self._activities[activity.id] = activity
        return activity

    def submit_json_import(self, body: Mapping[str, Any]) -> StoredActivity:
        """`POST /activities/contacts_json_import` (§5.2), on a body already cut at
        `import_max_bytes` by the app.

        Raises:
            BadRequest: No or bad `list_ids` (1-50, existing), no `import_data`, more rows
                than `import_max_rows` (with `import_over_limit` `reject_400`).
            TooManyRequests: The queue cap.
        """
        list_ids = id_list(body, "list_ids", self.config.bulk_max_lists, min_items=1)
        if list_ids is None:
            raise BadRequest("list_ids is required", "activities.api.validation.error")
        self._check_lists_exist(list_ids, "list_ids")
        rows = body.get("import_data")
        if not isinstance(rows, list):
            raise BadRequest("import_data is required", "activities.api.validation.error")
        if len(rows) > self.config.import_max_rows:
            if self.config.import_over_limit == "reject_400":
                raise BadRequest(
                    f"import_data must have at most {self.config.import_max_rows} contacts",
                    "activities.api.validation.error",
                )
            rows = rows[: self.config.import_max_rows]
        sms = body.get("sms_permission_to_send")
        if sms is not None and sms not in ("explicit", "not_set"):
            raise BadRequest("sms_permission_to_send must be explicit or not_set")
        items = [[line, row] for line, row in enumerate(rows, start=1)]
        counts = dict.fromkeys(
            ("person_count", "error_count", "correctable_count", "cannot_add_to_list_count"), 0
        )
        counts["items_total_count"] = len(rows)
        return self._new_activity(
            "contacts_json_import", items, counts, list_ids=list_ids, skip=self._duplicates(rows)
        )

    def _duplicates(self, rows: Sequence[Any]) -> list[int]:
        """Lines of rows that lose to another row with the same email ([U] §12.11)."""
        winner: dict[str, int] = {}
        for line, row in enumerate(rows, start=1):
            if isinstance(row, dict) and isinstance(row.get("email"), str):
                key = self._key(row["email"].strip())
                if self.config.import_duplicates == "last_wins" or key not in winner:
                    winner[key] = line
        keep = set(winner.values())
        return [
            line
            for line, row in enumerate(rows, start=1)
            if isinstance(row, dict) and isinstance(row.get("email"), str) and line not in keep
        ]

    def _source_ids(self, source: Any, exclude: Any) -> list[str]:
        """Contact ids selected by an activity `source` (§5.4: exactly one key)."""
        if not isinstance(source, dict):
            raise BadRequest("source is required", "activities.api.validation.error")
        keys = [k for k, v in source.items() if v not in (None, False)]
        if len(keys) != 1:
            raise BadRequest(
                "source must have exactly one of contact_ids, list_ids, all_active_contacts, "
                "segment_id, tag_ids, engagement_level, new_subscriber",
                "activities.api.validation.error",
            )
        key = keys[0]
        if exclude is not None and key not in ("all_active_contacts", "list_ids", "new_subscriber"):
            raise BadRequest(
                "exclude is only allowed with all_active_contacts, list_ids or new_subscriber",
                "activities.api.validation.error",
            )
        excluded = set(id_list({"e": (exclude or {}).get("contact_ids")}, "e", 10**6) or ())
        live = [c for c in self.contacts() if c.deleted_at is None]
        ids: list[str]
        if key == "contact_ids":
            ids = id_list(source, key, self.config.bulk_max_contact_ids, where="source.") or []
        elif key == "list_ids":
            lists = id_list(source, key, 50, where="source.") or []
            self._check_lists_exist(lists, "source.list_ids")
            ids = [c.id for c in live if set(c.lists) & set(lists)]
        elif key == "all_active_contacts":
            if source[key] is not True:
                raise BadRequest("source.all_active_contacts must be true")
            ids = [c.id for c in live if c.status == "active"]
        elif key == "tag_ids":
            tags = set(id_list(source, key, 50, where="source.") or ())
            ids = [c.id for c in live if tags & set(c.subresources.get("taggings", ()))]
        elif key == "new_subscriber":
            month = 30 * 86400
            now = self.clock()
            ids = [c.id for c in live if c.status == "active" and now - c.created_at <= month]
        elif key == "engagement_level":
            if source[key] not in ("unqualified", "low", "medium", "high"):
                raise BadRequest("source.engagement_level does not have a valid value")
            # The simulator keeps no engagement data: every contact is `unqualified`.
            ids = (
                [c.id for c in live if c.status == "active"] if source[key] == "unqualified" else []
            )
        elif key == "segment_id":
            raise BadRequest(f"Segment {source[key]!r} does not exist", "segments.api.not_found")
        else:
            raise BadRequest(f"source.{key} is not a valid source")
        return [i for i in ids if i not in excluded]

    def submit_list_memberships(self, body: Mapping[str, Any], *, remove: bool) -> StoredActivity:
        """`POST /activities/add_list_memberships` (§5.4; `remove_list_memberships` with
        `remove`): ≤ 500 contact ids × ≤ 50 lists.

        Raises:
            BadRequest: Invalid source or lists.
            TooManyRequests: The queue cap.
        """
        list_ids = id_list(body, "list_ids", self.config.bulk_max_lists, min_items=1)
        if list_ids is None:
            raise BadRequest("list_ids is required", "activities.api.validation.error")
        self._check_lists_exist(list_ids, "list_ids")
        ids = self._source_ids(body.get("source"), body.get("exclude"))
        counts = {"items_total_count": len(ids), "items_completed_count": 0}
        counts["list_count"] = len(list_ids)
        kind = "remove_list_memberships" if remove else "add_list_memberships"
        return self._new_activity(kind, ids, counts, list_ids=list_ids)

    def submit_contact_delete(self, body: Mapping[str, Any]) -> StoredActivity:
        """`POST /activities/contact_delete` (§5.6): ≤ 500 contact ids or ≤ 50 lists' members.

        Raises:
            BadRequest: Neither or both of `contact_ids` and `list_ids`.
        """
        contact_ids = id_list(body, "contact_ids", self.config.bulk_max_contact_ids)
        list_ids = id_list(body, "list_ids", 50)
        if (contact_ids is None) == (list_ids is None):
            raise BadRequest("Give exactly one of contact_ids and list_ids")
        if list_ids is not None:
            self._check_lists_exist(list_ids, "list_ids")
            contact_ids = sorted(set().union(*(self._members[i] for i in list_ids)))
        ids = contact_ids or []
        counts = {"items_total_count": len(ids), "items_completed_count": 0}
        return self._new_activity("contact_delete", ids, counts)

    def submit_list_delete(self, body: Mapping[str, Any]) -> StoredActivity:
        """`POST /activities/list_delete` (§4.1): ≤ 100 lists.

        Raises:
            BadRequest: No or unknown `list_ids`.
        """
        list_ids = id_list(body, "list_ids", 100, min_items=1)
        if list_ids is None:
            raise BadRequest("list_ids is required")
        self._check_lists_exist(list_ids, "list_ids")
        now = self.clock()
        for list_id in list_ids:
            self._lists[list_id].deleted_at = now
        return self._new_activity("list_delete", list_ids, {"list_count": len(list_ids)})

    def submit_export(self, body: Mapping[str, Any]) -> StoredActivity:
        """`POST /activities/contact_exports`: a CSV of the chosen contacts (all contacts that
        are not deleted by default), fetched at `/v3/contact_exports/{id}` once completed.

        Raises:
            BadRequest: Invalid filters or fields.
        """
        contact_ids = id_list(body, "contact_ids", 500)
        list_ids = id_list(body, "list_ids", 50)
        if contact_ids is not None and list_ids is not None:
            raise BadRequest("contact_ids and list_ids are mutually exclusive")
        status = body.get("status")
        if status is not None and status not in CONTACT_STATUSES:
            raise BadRequest("status does not have a valid value")
        fields = opt_list(body, "fields", len(EXPORT_FIELDS)) or list(EXPORT_FIELDS)
        unknown = [f for f in fields if f not in EXPORT_FIELDS]
        if unknown:
            raise BadRequest(f"Unknown export fields: {unknown}")
        excluded = set(
            id_list({"e": (body.get("exclude") or {}).get("contact_ids")}, "e", 10**6) or ()
        )
        if contact_ids is not None:
            chosen = [self._contacts[i] for i in contact_ids if i in self._contacts]
        elif list_ids is not None:
            self._check_lists_exist(list_ids, "list_ids")
            chosen = [c for c in self.contacts() if set(c.lists) & set(list_ids)]
        else:
            chosen = list(self.contacts())
        wanted = {status} if isinstance(status, str) else set()
        ids = [c.id for c in chosen if _matches_status(c, wanted) and c.id not in excluded]
        counts = {"items_total_count": len(ids), "items_completed_count": 0}
        return self._new_activity("contact_exports", ids, counts, fields=fields, rows=[])

    # -- activities: reads -----------------------------------------------------------------------

    def _retained(self, activity: StoredActivity) -> bool:
        return self.clock() - activity.created_at < self.config.activity_retention

    def get_activity(self, activity_id: str) -> StoredActivity:
        """An activity still within its retention (§5.1: 10 days).

        Raises:
            NotFound: Unknown or expired.
        """
        activity = self._activities.get(activity_id)
        if activity is None or not self._retained(activity):
            raise NotFound(
                "Resource not found for the activity_id provided", "activities.api.not_found"
            )
        return activity

    def activities(self, state: str | None = None) -> list[StoredActivity]:
        """Retained activities, newest first, optionally in one state."""
        return [
            a
            for a in sorted(self._activities.values(), key=lambda a: -a.seq)
            if self._retained(a) and (state is None or a.state == state)
        ]

    def export_csv(self, activity_id: str) -> str:
        """The CSV of a completed export.

        Raises:
            NotFound: Unknown, not an export, or not completed.
        """
        activity = self.get_activity(activity_id)
        if activity.kind != "contact_exports" or activity.result is None:
            raise NotFound("No completed contact export for this id", "activities.api.not_found")
        return activity.result

    def unfinished_activities(self) -> list[str]:
        """Ids of the activities not in a terminal state, oldest first."""
        return [a.id for a in sorted(self._activities.values(), key=lambda a: a.seq) if not a.done]

    # -- activities: running ---------------------------------------------------------------------

    def decide_outcome(self, activity_id: str, draw: float) -> None:
        """Set the terminal state an activity will reach from one uniform draw in [0, 1)."""
        config = self.config
        activity = self._activities[activity_id]
        for state, rate in (
            ("failed", config.activity_fail_rate),
            ("cancelled", config.activity_cancel_rate),
            ("timed_out", config.activity_timeout_rate),
        ):
            if draw < rate:
                activity.outcome = state
                return
            draw -= rate
        activity.outcome = "completed"

    def start_activity(self, activity_id: str) -> None:
        """`initialized` -> `processing` (no-op otherwise)."""
        activity = self._activities[activity_id]
        if activity.state == "initialized":
            activity.state = "processing"
            activity.started_at = activity.updated_at = self.clock()

    def process_activity(self, activity_id: str, max_items: int) -> bool:
        """Apply up to `max_items` more items; returns whether the activity is finished
        (then in its terminal state)."""
        activity = self._activities[activity_id]
        if activity.done:
            return True
        self.start_activity(activity_id)
        total = len(activity.items)
        stop = total
        if activity.outcome in ("failed", "cancelled"):
            stop = 0
        elif activity.outcome == "timed_out":
            stop = total // 2
        end = min(stop, activity.cursor + max_items)
        for index in range(activity.cursor, end):
            self._apply_item(activity, index)
        activity.cursor = end
        activity.percent_done = 100 * end // total if total else 0
        activity.updated_at = self.clock()
        if end < stop:
            return False
        self._finish_activity(activity)
        return True

    def fail_activity(self, activity_id: str) -> None:
        """End an unfinished activity `failed`, with nothing more applied."""
        activity = self._activities[activity_id]
        if not activity.done:
            activity.outcome = "failed"
            activity.items = activity.items[: activity.cursor]
            self._finish_activity(activity)

    def run_activity(self, activity_id: str) -> StoredActivity:
        """Run an activity to its end at once (for unit tests)."""
        while not self.process_activity(activity_id, 10_000):
            pass
        return self._activities[activity_id]

    def _finish_activity(self, activity: StoredActivity) -> None:
        now = self.clock()
        activity.state = activity.outcome
        activity.completed_at = activity.updated_at = now
        if activity.outcome == "completed":
            activity.percent_done = 100
        elif activity.outcome == "failed":
            activity.errors.append("The activity failed: an internal error occurred")
        elif activity.outcome == "timed_out":
            activity.errors.append("The activity timed out before it was completed")
        if activity.kind == "contact_exports" and activity.outcome == "completed":
            fields = activity.params["fields"]
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\r\n")
            writer.writerow(fields)
            writer.writerows(activity.params["rows"])
            activity.result = out.getvalue()
        activity.params.pop("rows", None)
        activity.items = []

    def _error(self, activity: StoredActivity, line: int, email: str, message: str) -> None:
        activity.errors.append(
            self.config.activity_error_format.format(line=line, email=email, message=message)
        )

    def _apply_item(self, activity: StoredActivity, index: int) -> None:
        item = activity.items[index]
        kind = activity.kind
        if kind == "contacts_json_import":
            line, row = item
            self._import_row(activity, int(line), row)
            return
        counts = activity.counts
        if kind == "list_delete":
            for contact_id in sorted(self._members.get(item, set())):
                member = self._contacts[contact_id]
                self._set_lists(member, [i for i in member.lists if i != item])
            return
        counts["items_completed_count"] = counts.get("items_completed_count", 0) + 1
        contact = self._contacts.get(item)
        if kind == "contact_exports":
            if contact is not None:
                activity.params["rows"].append(self._export_row(contact, activity.params["fields"]))
            return
        if contact is None:
            if self.config.unknown_contact_ids == "error" or kind != "add_list_memberships":
                self._error(activity, index + 1, item, f"Contact {item} not found")
            return
        if kind == "contact_delete":
            if contact.deleted_at is None:
                self._delete(contact)
            return
        targets = [i for i in activity.params["list_ids"] if i in self._lists]
        if kind == "remove_list_memberships":
            kept = [i for i in contact.lists if i not in targets]
            if len(kept) != len(contact.lists):
                self._set_lists(contact, kept)
                self._touch(contact, self.clock())
            return
        self._add_lists(activity, index + 1, contact, targets)

    def _add_lists(
        self, activity: StoredActivity, line: int, contact: StoredContact, targets: list[str]
    ) -> None:
        """`add_list_memberships` for one contact: append only, at most 50 lists (§5.4)."""
        email = contact.email or contact.id
        if contact.deleted_at is not None or contact.permission == "unsubscribed":
            if self.config.unsubscribed_or_deleted_ids == "error":
                what = "deleted" if contact.deleted_at is not None else "unsubscribed"
                self._error(activity, line, email, f"Contact {contact.id} is {what}")
            return
        new = [i for i in targets if i not in contact.lists and self._lists[i].deleted_at is None]
        room = self.config.max_lists_per_contact - len(contact.lists)
        if len(new) > room:
            if self.config.overflow_51st == "error":
                self._error(
                    activity,
                    line,
                    email,
                    f"Contact {contact.id} would exceed {self.config.max_lists_per_contact} lists",
                )
            new = new[: max(room, 0)]
        if new:
            self._set_lists(contact, [*contact.lists, *new])
            self._touch(contact, self.clock())

    def _export_row(self, contact: StoredContact, fields: Sequence[str]) -> list[str]:
        values: dict[str, Any] = {
            "contact_id": contact.id,
            "email_address": contact.email or "",
            "permission_to_send": contact.permission,
            **contact.core,
            "email_optin_source": contact.opt_in_source or "",
            "email_optin_date": iso_time(contact.opt_in_date) if contact.opt_in_date else "",
            "email_optout_source": contact.opt_out_source or "",
            "email_optout_date": iso_time(contact.opt_out_date) if contact.opt_out_date else "",
            "email_optout_reason": contact.opt_out_reason or "",
            "list_memberships": ";".join(contact.lists),
            "created_at": iso_time(contact.created_at),
            "updated_at": iso_time(contact.updated_at),
        }
        return [str(values.get(f, "")) for f in fields]

    # -- JSON import rows (§5.2) ----------------------------------------------------------------

    def _import_row(self, activity: StoredActivity, line: int, row: Any) -> None:
        counts = activity.counts
        if line in activity.params["skip"]:
            return  # a duplicate that another row of the payload replaces
        if not isinstance(row, dict):
            counts["error_count"] += 1
            self._error(activity, line, "", "The row is not a JSON object")
            return
        raw_email = row.get("email")
        email = raw_email.strip() if isinstance(raw_email, str) else ""
        if not email:
            counts["correctable_count"] += 1
            self._error(activity, line, "", "The contact does not have minimal contact information")
            return
        if len(email) > self.config.import_email_max:
            counts["error_count"] += 1
            self._error(
                activity,
                line,
                email,
                f"The email is longer than {self.config.import_email_max} characters",
            )
            return
        if not is_email(email):
            counts["correctable_count"] += 1
            self._error(activity, line, email, "Invalid email address format")
            return
        try:
            core, phones, addresses, custom = self._import_fields(row)
        except BadRequest as exc:
            counts["error_count"] += 1
            self._error(activity, line, email, exc.message)
            return
        except _Correctable as exc:
            counts["correctable_count"] += 1
            self._error(activity, line, email, str(exc))
            return
        now = self.clock()
        contact = self.contact_by_email(email)
        if contact is None:
            contact = StoredContact(
                new_id(),
                self._next_seq(),
                None,
                {},
                "implicit",
                now,
                now,
                now,
                now,
                "Account",
                update_source="Account",
                opt_in_source="Account",
                opt_in_date=now,
            )
            self._contacts[contact.id] = contact
            self._touch(contact, contact.updated_at)  # indexed with the stamp it was created with
            self._claim_email(contact, email)
        elif contact.deleted_at is not None:
            if self.config.deleted_in_import == "skip_count_error":
                counts["error_count"] += 1
                self._error(activity, line, email, "The contact is deleted")
                return
            contact.deleted_at = None
            if contact.permission != "unsubscribed":
                contact.opt_out_source = contact.opt_out_date = None
        contact.core.update(core)
        for kind, number in phones.items():
            kept = [p for p in contact.subresources.get("phone_numbers", []) if p["kind"] != kind]
            phone = _phone_input({"phone_number": number, "kind": kind}, now, "Account")
            contact.subresources["phone_numbers"] = [*kept, phone][-3:]
        for kind, parts in addresses.items():
            current = contact.subresources.get("street_addresses", [])
            old = next((a for a in current if a["kind"] == kind), None)
            merged = _address_input({**(old or {}), **parts, "kind": kind}, now)
            if old is not None:
                merged["street_address_id"] = old["street_address_id"]
                merged["created_at"] = old["created_at"]
            kept = [a for a in current if a["kind"] != kind]
            contact.subresources["street_addresses"] = [*kept, merged][-3:]
        if custom:
            contact.subresources["custom_fields"] = _merge(
                "custom_fields", contact.subresources.get("custom_fields", []), custom
            )[:25]
        self._touch(contact, now)
        counts["person_count"] += 1
        if contact.permission == "unsubscribed":
            # "cannot be added to a list because they were previously unsubscribed".
            counts["cannot_add_to_list_count"] += 1
            return
        new = [
            i
            for i in activity.params["list_ids"]
            if i not in contact.lists and self._lists[i].deleted_at is None
        ]
        room = self.config.max_lists_per_contact - len(contact.lists)
        if len(new) > room:
            if self.config.overflow_51st == "error":
                self._error(activity, line, email, "The contact would exceed the list limit")
            new = new[: max(room, 0)]
        self._set_lists(contact, [*contact.lists, *new])

    def _import_fields(
        self, row: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, str], dict[str, dict[str, str]], list[dict[str, Any]]]:
        """The core fields, phones by kind, address parts by kind and custom fields sent in
        one import row (only the keys present: the rest of the contact is kept)."""
        strings = {k: v for k, v in row.items() if k != "email"}
        for key, value in strings.items():
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise BadRequest(f"{key} must be a string")
        try:
            core = self._core_input({k: row[k] for k in CORE_FIELDS if k in row})
        except BadRequest as exc:
            if "birthday" in exc.message or "anniversary" in exc.message:
                raise _Correctable(exc.message) from None
            raise
        phones: dict[str, str] = {}
        addresses: dict[str, dict[str, str]] = {}
        if not _IMPORT_SUBRESOURCE_COLUMNS.isdisjoint(row.keys()):
            for column, kind in _IMPORT_PHONES.items():
                value = opt_str(row, column, 50)
                if value:
                    phones[kind] = value
            for name, kind, part, limit in _IMPORT_ADDRESS_COLUMNS:
                value = opt_str(row, name, limit)
                if value:
                    addresses.setdefault(kind, {})[part] = value
        for parts in addresses.values():
            if "street2" in parts:
                street = parts.get("street", "")
                parts["street"] = f"{street}\n{parts.pop('street2')}".strip()
        custom: list[dict[str, Any]] = []
        for key in row:
            if not key.startswith("cf:"):
                continue
            field_id = self.custom_field_id(key[3:])
            value = opt_str(row, key, 255)
            if field_id is None:
                if self.config.unknown_custom_field == "row_error":
                    raise BadRequest(f"The custom field {key[3:]!r} does not exist")
                continue
            custom.append({"custom_field_id": field_id, "value": value or ""})
        if len(custom) > 25:
            raise BadRequest("A contact can have at most 25 custom fields")
        return core, phones, addresses, custom

    # -- persistence -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The whole state as JSON-compatible data (see `from_json`); tokens appear only as
        hashes."""

        def contact_json(c: StoredContact) -> dict[str, Any]:
            data = {name: getattr(c, name) for name in StoredContact.__slots__}
            data["subresources"] = json.loads(json.dumps(c.subresources))
            return data

        return {
            "format": _STATE_FORMAT,
            "version": 1,
            "account_id": self.account_id,
            "seq": self._seq,
            "custom_fields": dict(self._custom_fields),
            "lists": [
                {n: getattr(s, n) for n in StoredList.__slots__} for s in self._lists.values()
            ],
            "contacts": [contact_json(c) for c in self._contacts.values()],
            "activities": [
                {n: getattr(a, n) for n in StoredActivity.__slots__}
                for a in self._activities.values()
            ],
            "auth": self.auth.to_json(),
        }

    @classmethod
    def from_json(
        cls,
        data: Mapping[str, Any],
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> AccountStore:
        """Rebuild a store from `to_json` output. Unfinished activities keep their items and
        cursor, so an app started on the store runs them to the end (with
        `unfinished_activities="fail"` they end `failed` at once).

        Raises:
            ValueError: Not a V3 simulator state document.
        """
        if data.get("format") != _STATE_FORMAT or data.get("version") != 1:
            raise ValueError("not a ctct v3 simulator state (format/version mismatch)")
        store = cls(config, clock=clock)
        try:
            store.account_id = str(data["account_id"])
            store._seq = int(data["seq"])
            store._custom_fields = {str(k): str(v) for k, v in data["custom_fields"].items()}
            for item in data["lists"]:
                stored = StoredList(**item)
                store._lists[stored.id] = stored
                store._members[stored.id] = set()
            for item in data["contacts"]:
                contact = StoredContact(**item)
                store._contacts[contact.id] = contact
                if contact.email is not None:
                    store._by_email[store._key(contact.email)] = contact.id
                for list_id in contact.lists:
                    store._members[list_id].add(contact.id)
            store._updated.rebuild(store._contacts)
            for item in data["activities"]:
                activity = StoredActivity(**item)
                store._activities[activity.id] = activity
                if not activity.done and store.config.unfinished_activities == "fail":
                    store.fail_activity(activity.id)
            store.auth.load_json(data["auth"])
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"invalid v3 simulator state: {exc!r}") from exc
        return store

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state as JSON, atomically and durably."""
        self.save_json(self.to_json(), path)

    @staticmethod
    def save_json(data: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
        """Write `to_json` output atomically (temporary file, fsync, rename); callable from a
        worker thread with a snapshot taken in the event loop."""
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
        with Path(path).open(encoding="utf-8") as handle:
            return cls.from_json(json.load(handle), config, clock=clock)

    def check_privilege(self, privilege: str) -> None:
        """Raise `Forbidden` unless the user holds `privilege` (§1.11)."""
        if privilege not in self.config.privileges:
            raise Forbidden(
                f"The user lacks the {privilege} privilege", "unauthorized.user.privileges"
            )


class _Correctable(Exception):
    """A row error counted in `correctable_count` (bad birthday or anniversary format)."""


# ---------------------------------------------------------------------------------------------
# Helpers.


def _matches_status(contact: StoredContact, wanted: set[str]) -> bool:
    if "all" in wanted:
        return True
    if not wanted:
        return contact.deleted_at is None
    return contact.status in wanted


class _UpdateIndex:
    """Contact ids in the order of their `updated_at` stamps, for `updated_after` searches.

    Appended to as contacts are stamped (a contact stamped again appears again; a search
    checks each contact as it is now). A stamp earlier than the last one (a clock set back,
    as tests do) turns it off for good: searches then scan every contact, as without it.
    Rebuilt from the contacts when it holds twice as many stamps as there are contacts.
    """

    __slots__ = ("_ids", "_times", "ordered")

    def __init__(self) -> None:
        self._times = array("d")
        self._ids: list[str] = []
        self.ordered = True

    def add(self, when: float, contact_id: str, contacts: Mapping[str, StoredContact]) -> None:
        """Index a stamp just given (`contacts`: all of them, for a rebuild)."""
        if not self.ordered:
            return
        if self._times and when < self._times[-1]:
            self.ordered = False
            self._times, self._ids = array("d"), []
            return
        self._times.append(when)
        self._ids.append(contact_id)
        if len(self._ids) > 2 * len(contacts) + 1000:
            self.rebuild(contacts)

    def rebuild(self, contacts: Mapping[str, StoredContact]) -> None:
        """Index each contact once, by its stamp (after a load, or when it grew)."""
        latest = sorted((c.updated_at, c.id) for c in contacts.values())
        self._times = array("d", (t for t, _ in latest))
        self._ids = [i for _, i in latest]

    def after(self, bound: float | None, until: float | None = None) -> list[str] | None:
        """The ids of the contacts stamped after `bound` (and, with `until`, not after it) at
        some point (None: not known). A contact stamped again later is left out by `until`:
        its stamp now is past it, and the search's range test would drop it anyway."""
        if bound is None or not self.ordered:
            return None
        start = bisect.bisect_right(self._times, bound)
        end = len(self._times) if until is None else bisect.bisect_right(self._times, until)
        return list(dict.fromkeys(self._ids[start:end]))


_RANGE_TIMES = {"updated": "updated_at", "created": "created_at", "optout": "opt_out_date"}


def _range_test(ranges: Mapping[str, float] | None) -> Callable[[StoredContact], bool]:
    """Whether a contact's times are within the date ranges (`updated_after`… as epoch
    seconds, bounds excluded), as a test built once a query: a read-back page filters every
    member of a list with it."""
    bounds = []
    for name, bound in (ranges or {}).items():
        attribute, _, side = name.partition("_")
        bounds.append((attrgetter(_RANGE_TIMES[attribute]), side == "after", bound))

    def in_ranges(contact: StoredContact) -> bool:
        for time_of, after, bound in bounds:
            value = time_of(contact)
            if value is None or (value <= bound if after else value >= bound):
                return False
        return True

    return in_ranges


def _phone_input(item: Any, now: float, source: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise BadRequest("phone_numbers items must be objects")
    number = opt_str(item, "phone_number", 25, "phone_numbers.")
    kind = item.get("kind", "other")
    if not number or kind not in _PHONE_KINDS:
        raise BadRequest("phone_numbers need a phone_number and a kind home/work/mobile/other")
    return {
        "phone_number_id": new_id(),
        "phone_number": number,
        "kind": kind,
        "created_at": now,
        "updated_at": now,
        "create_source": source,
        "update_source": source,
    }


def _address_input(item: Any, now: float) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise BadRequest("street_addresses items must be objects")
    kind = item.get("kind")
    if kind not in _ADDRESS_KINDS:
        raise BadRequest("street_addresses.kind is required: home, work or other")
    out: dict[str, Any] = {"street_address_id": new_id(), "kind": kind}
    for part, limit in _ADDRESS_PARTS.items():
        value = opt_str(item, part, limit, "street_addresses.")
        if value is not None:
            out[part] = value
    out.update(created_at=now, updated_at=now)
    return out


def _note_input(item: Any, now: float) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise BadRequest("notes items must be objects")
    content = opt_str(item, "content", 2000, "notes.") or ""
    note_id = item.get("note_id")
    return {
        "note_id": note_id if isinstance(note_id, str) and is_uuid(note_id) else new_id(),
        "created_at": now,
        "content": content,
    }


_IDENTITY = {
    "custom_fields": "custom_field_id",
    "phone_numbers": "phone_number",
    "street_addresses": "kind",
    "notes": "note_id",
}


def _merge(name: str, old: Any, new: Any) -> Any:
    """`new` merged into `old` (the `put_subresources="merge"` variant, and sign-up appends):
    items with the same identity are replaced, others appended."""
    if not isinstance(old, list) or not isinstance(new, list):
        return new
    if name == "taggings":
        return list(dict.fromkeys([*old, *new]))
    key = _IDENTITY[name]
    replaced = {item[key] for item in new}
    return [item for item in old if item[key] not in replaced] + list(new)
