"""The seam between the pipeline and an API dialect: neutral records and the `Backend` protocol.

The pipeline decides (which contacts, which lists, per-contact or bulk, when a write is stale,
what outcome a row gets, what to journal); a backend knows how its dialect says it (how to
find a contact, what its lists and status are, how to build a write that keeps every list,
how to encode a bulk request within its caps, what an activity's state and errors mean).
Nothing here knows XML, JSON, URIs, line numbers or a dialect's status strings: list ids are
opaque strings, statuses a small neutral vocabulary, and each backend's own documents travel
in `document` fields the pipeline never opens.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from engine.backend.retry import RetryPolicy
from engine.errors import RetryableApiError

__all__ = [
    "AccountReader",
    "ActivityState",
    "AppendingBackend",
    "Backend",
    "BackendStats",
    "BulkActivity",
    "BulkResult",
    "Capabilities",
    "ContactRef",
    "ContactState",
    "ContactStatus",
    "ListId",
    "ListInfo",
    "ListReader",
    "ListWrite",
    "UntouchableIndex",
]

#: A list's id, opaque: v1's numeric list id ("7"), v3's list_id (a UUID).
ListId = str

#: A contact's status in the neutral vocabulary: `opted_out` is v1's Do Not Mail and v3's
#: unsubscribed (never written to, invariant I2); `removed` is v1's Removed (re-adding makes
#: it active); `deleted` is v3's deleted contact (hidden from searches, blocks creation).
ContactStatus = Literal["active", "unconfirmed", "removed", "opted_out", "deleted"]

#: An activity's state: `complete` and `failed` end polling.
ActivityState = Literal["pending", "running", "complete", "failed"]


@dataclass(frozen=True, slots=True)
class ListInfo:
    """A contact list of the account.

    Attributes:
        id: its opaque id.
        name: its name, as the account shows it.
        is_system: one of v1's Active, Do Not Mail and Removed lists: never a target.
        members: its member count, when the API says.
    """

    id: ListId
    name: str
    is_system: bool = False
    members: int | None = None


@dataclass(frozen=True, slots=True)
class ContactRef:
    """What a lookup says of a contact.

    Attributes:
        id: the contact's opaque id.
        email: its address, lower-cased.
        status: its status.
    """

    id: str
    email: str
    status: ContactStatus


@dataclass(frozen=True, slots=True)
class ContactState:
    """What a read says of a contact: enough to merge and to audit.

    Attributes:
        ref: who it is.
        lists: the lists it is on, in the server's order.
        fields: its writable fields (field name -> text), for the field rule.
        version: equal versions mean an unchanged contact (v1: the entry's bytes).
        document: the backend's own document, which its writes are built from.
    """

    ref: ContactRef
    lists: tuple[ListId, ...]
    fields: Mapping[str, str] = field(default_factory=dict)
    version: object = field(default=None, repr=False, compare=False)
    document: object = field(default=None, repr=False, compare=False)

    @property
    def list_ids(self) -> frozenset[ListId]:
        """The lists it is on."""
        return frozenset(self.lists)

    def changed_fields(self, wanted: Mapping[str, str]) -> dict[str, str]:
        """The fields of `wanted` whose text differs from the contact's (empty values of
        `wanted` are left out: an empty cell never clears a field)."""
        return {n: t for n, t in wanted.items() if t and self.fields.get(n) != t}


@dataclass(frozen=True, slots=True)
class ListWrite:
    """A write built by the backend and sent by the put stage.

    Attributes:
        state: the contact as read.
        added: the lists the write adds.
        fields: the fields it writes.
        body: the backend's request, already proven to keep every list of `state` and add
            `added`.
    """

    state: ContactState
    added: tuple[ListId, ...]
    fields: tuple[str, ...] = ()
    body: object = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class BulkActivity:
    """A bulk activity as the pipeline sees it.

    Attributes:
        id: its opaque id.
        state: where it stands.
        status: the server's own word for it, for people (progress, notes).
        progress: what changes while it moves (a stall is no change of it).
        created: the server's creation stamp, when it gives one: with the id, what tells
            this activity from another that a server which lost its state gave the same id.
        document: the backend's own record of it (its errors, its counters).
        partial: it ended part way (v3's `timed_out`, `cancelled`): some of its rows may
            have been applied, so a contact of it found on its targets afterwards was
            added by it.
    """

    id: str
    state: ActivityState
    status: str
    progress: object = None
    created: str = ""
    document: object = field(default=None, repr=False, compare=False)
    partial: bool = False

    @property
    def finished(self) -> bool:
        """True once polling can stop."""
        return self.state in ("complete", "failed")


@dataclass(frozen=True, slots=True)
class BulkResult:
    """One contact of a finished activity, as the backend settles it.

    Attributes:
        email: the contact.
        kind: `added` (on its targets now), `opted_out`, `invalid` (the API refused the row),
            `failed` (another error), or `unknown` (the API did not say: the pipeline sends
            it through the per-contact path, which is safe to repeat).
        reason: the API's words, when it gave any.
    """

    email: str
    kind: Literal["added", "opted_out", "invalid", "failed", "unknown"]
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """What a backend's API can do; the pipeline's defaults follow it.

    Attributes:
        dialect: `v1` or `v3`.
        lookup_batch: emails per lookup request (v1: 50; v3: 1).
        lookup_has_lists: a lookup returns the lists too (v3), so no read follows it.
        bulk_threshold: the API's own rule for when to use bulk.
        bulk_max_rows: contacts per bulk request.
        bulk_max_bytes: bytes per bulk request.
        lists_per_contact: the most lists a contact can be on, when the API has a limit.
        fields: field name -> the longest value the API accepts.
        bulk_revives_deleted: a bulk request brings a deleted contact back (v3's json
            import does), so the bulk path looks its contacts up first and leaves the
            deleted ones out.
        append_max: contact ids per append-only membership request (v3's
            `add_list_memberships`: 500); 0 when the API has none (v1). See
            `AppendingBackend`.
        list_page: contacts a read of a list's members returns a request, each with its
            lists (v3: 500; see `ListReader`); 0 when the backend reads none (v1).
    """

    dialect: Literal["v1", "v3"]
    lookup_batch: int
    lookup_has_lists: bool
    bulk_threshold: int
    bulk_max_rows: int
    bulk_max_bytes: int
    lists_per_contact: int | None
    fields: Mapping[str, int]
    bulk_revives_deleted: bool = False
    append_max: int = 0
    list_page: int = 0


@dataclass(frozen=True, slots=True)
class BackendStats:
    """Request counters of a backend, for progress and reports.

    Attributes:
        requests: requests sent.
        retries: requests retried.
        throttles: throttle answers received.
        rate: the current rate limit (None: unlimited).
    """

    requests: int
    retries: int
    throttles: int
    rate: float | None


@runtime_checkable
class Backend(Protocol):
    """One API dialect, as the pipeline, the journal, the audit and the dry run use it."""

    @property
    def capabilities(self) -> Capabilities:
        """What the API can do."""
        ...

    @property
    def identity(self) -> str:
        """Which account this is (part of the journal's key): no secret in it."""
        ...

    def stats(self) -> BackendStats:
        """The request counters so far."""
        ...

    def burst(self) -> AbstractAsyncContextManager[None]:
        """Inside, the requests of this task (and of the tasks it starts) go over a
        connection pool of their own, closed with its connections at the end: for a short
        burst of many requests at once, whose connections should not stay open for the rest
        of the run."""
        ...

    async def verify(self) -> None:
        """Check the credentials and the base URL with one request."""
        ...

    async def lists(self) -> list[ListInfo]:
        """Every list of the account."""
        ...

    async def create_list(self, name: str) -> ListInfo:
        """Create a list."""
        ...

    def members(self, list_id: ListId) -> AsyncIterator[str]:
        """The emails of a list's members, lower-cased."""
        ...

    async def find(
        self, emails: Sequence[str], *, strict: bool = False
    ) -> dict[str, ContactRef | ContactState]:
        """Look contacts up by email: email -> what the lookup says (a `ContactState` when
        the lookup gives the lists, see `Capabilities.lookup_has_lists`); missing emails are
        absent. With `strict` a failed lookup raises instead of reading as "absent"."""
        ...

    async def read(self, ref: ContactRef) -> ContactState:
        """Read a contact in full."""
        ...

    def add_lists(
        self,
        state: ContactState,
        targets: Sequence[ListId],
        fields: Mapping[str, str] | None = None,
    ) -> ListWrite | None:
        """The write that puts the contact on `targets` (and writes `fields`), keeping every
        list it has; None when it needs none. Pure.

        Raises:
            UnsafeMergeError: the write, read back, would not keep every list.
        """
        ...

    async def take_turn(self) -> None:
        """Wait for a request's rate turn (then send with `prepaid=True`)."""
        ...

    async def update(
        self, write: ListWrite, *, prepaid: bool = False, retry: RetryPolicy | None = None
    ) -> None:
        """Send a write built by `add_lists`."""
        ...

    async def back_off(self, attempt: int, error: RetryableApiError, started: float) -> None:
        """Wait the retry policy's backoff before attempt `attempt + 1`, or raise `error`."""
        ...

    async def create(self, email: str, targets: Sequence[ListId], fields: Mapping[str, str]) -> str:
        """Create a contact on `targets`; returns its id.

        Raises:
            ConflictError: the email exists, in any status.
        """
        ...

    def encode_bulk(
        self,
        contacts: Iterable[tuple[str, Mapping[str, str]]],
        targets: Sequence[ListId],
        columns: Sequence[str],
        *,
        max_rows: int,
        max_bytes: int,
    ) -> object:
        """One bulk request: each (email, fields) with the fields named in `columns`, in
        this order (the order `settle` is given the emails in). `contacts` is read once,
        in order (the bulk path decodes them one at a time from a packed batch), and is as
        the reader makes it (the email normalised, each value `field_text`'s): written as
        it is.

        Raises:
            ActivityTooLargeError: over a cap; nothing is sent.
        """
        ...

    async def submit(self, request: object, *, retry: RetryPolicy | None = None) -> BulkActivity:
        """Submit a bulk request."""
        ...

    async def recent_activities(self) -> list[BulkActivity]:
        """The newest bulk activities of the account (to adopt one whose answer was lost)."""
        ...

    async def poll(self, activity_id: str) -> BulkActivity:
        """The activity as it stands."""
        ...

    async def settle(
        self, activity: BulkActivity, emails: Sequence[str], targets: Sequence[ListId]
    ) -> list[BulkResult]:
        """What a completed activity did to each of `emails` (in request order), put on
        `targets`: from what the activity says, or by reading the contacts back. It needs
        only what the journal keeps, so a resumed run settles an inherited activity too."""
        ...


@runtime_checkable
class AppendingBackend(Backend, Protocol):
    """A backend whose API adds known contacts to lists by id, append only (v3's
    `add_list_memberships`): no read→write window, no list can be dropped, and one request
    carries up to `Capabilities.append_max` contacts."""

    async def append(self, ids: Sequence[str], targets: Sequence[ListId]) -> BulkActivity:
        """Submit one append of the contacts `ids` to `targets` (an activity to poll)."""
        ...

    async def appended(
        self, appends: Sequence[tuple[BulkActivity, Sequence[str]]], targets: Sequence[ListId]
    ) -> list[set[str]]:
        """For each finished append activity to `targets` (with the ids it was given), the
        ids it is seen to have put on every target (read back: an API may count a contact
        it skipped as done; appends that finished together are read back together); the
        others go through the write path."""
        ...

    def fields_write(self, state: ContactState, fields: Mapping[str, str]) -> ListWrite | None:
        """A write of `fields` that names no list (the lists stay as they are on the
        server, whatever was added since the read); None when no field changes.

        Raises:
            DoNotMailError: the contact is opted out or deleted: never written.
        """
        ...


@runtime_checkable
class UntouchableIndex(Protocol):
    """A backend that lists cheaply (v3: 500 a request) the account's contacts a bulk
    request must not carry: deleted ones (an import revives them) and opted-out ones (an
    import writes their fields, I2). The bulk path then leaves them out without looking up
    every contact of the batch."""

    async def untouchable_contacts(self) -> dict[str, ContactStatus]:
        """Email (lower-cased) -> status (`deleted` or `opted_out`): every contact of the
        account in those statuses now (v3 reads only what changed since its last read, and
        keeps one that left them: left out, never written). A dict of the caller's own."""
        ...


@runtime_checkable
class ListReader(Protocol):
    """A backend that reads a list's contacts with their lists, many a request (v3: 500),
    so a read of many contacts (the audit) can page their lists instead of looking each
    one up."""

    def list_contacts(self, list_id: ListId) -> AsyncGenerator[ContactState, None]:
        """The contacts on a list, each with its lists."""
        ...


@runtime_checkable
class AccountReader(Protocol):
    """A backend that reads every contact of the account with its lists, many a request
    (v3: 500), for reads of many contacts (the dry run's lookups, the rehearsal copy)."""

    def account_contacts(self) -> AsyncGenerator[ContactState, None]:
        """Every contact of the account, deleted ones included, with its lists."""
        ...
