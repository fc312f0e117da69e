"""`V1Backend`: the `Backend` protocol over the v1 XML client (`Account`).

Everything the v1 dialect says its own way is translated here and nowhere else: list ids are
URIs on the wire and their last path segment here; `Do Not Mail` is `opted_out`; a contact's
document is its Atom entry, whose bytes the write splices (`codec.merge_contact_lists`); a bulk
request is an `ADD_CONTACTS` form; an activity's `COMPLETE`/`ERROR` are `complete`/`failed`;
its line errors, numbered from the header, are mapped back to the request's emails.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from urllib.parse import urlsplit

from engine.backend.protocol import (
    ActivityState,
    BackendStats,
    BulkActivity,
    BulkResult,
    Capabilities,
    ContactRef,
    ContactState,
    ContactStatus,
    ListId,
    ListInfo,
    ListWrite,
)
from engine.backend.retry import RetryPolicy
from engine.backend.v1.activities import (
    COLUMN_NAMES,
    MAX_ACTIVITY_BYTES,
    MAX_ACTIVITY_ROWS,
    encode_contact_pairs,
    line_number,
)
from engine.backend.v1.client import SEARCH_BATCH, Account
from engine.backend.v1.codec import merge_contact_lists
from engine.backend.v1.records import Activity, ContactEntry, ContactList, ContactSummary, uri_key
from engine.errors import RetryableApiError

__all__ = ["V1_CAPABILITIES", "V1Backend"]

log = logging.getLogger("engine.backend.v1")

#: Field limits: [U] for v1 (API doc §4.4): v2's 50 characters, with the simulator's longer
#: or shorter ones; only the fields a bulk activity can carry (the per-contact path could
#: write `EmailType` and `CountryName` too, but a row must give the same contact on both).
_FIELD_LIMITS = {"PostalCode": 25, "SubPostalCode": 25, "Note": 500}

V1_CAPABILITIES = Capabilities(
    dialect="v1",
    lookup_batch=SEARCH_BATCH,
    lookup_has_lists=False,
    bulk_threshold=25,
    bulk_max_rows=MAX_ACTIVITY_ROWS,
    bulk_max_bytes=MAX_ACTIVITY_BYTES,
    lists_per_contact=None,
    fields={name: _FIELD_LIMITS.get(name, 50) for name in COLUMN_NAMES if name != "EmailAddress"},
)

_STATUSES: dict[str, ContactStatus] = {
    "active": "active",
    "unconfirmed": "unconfirmed",
    "removed": "removed",
    "do not mail": "opted_out",
}


def contact_status(status: str) -> ContactStatus:
    """The neutral status of a v1 `Status` (an unknown one counts as active: it is written
    to like one, and only Do Not Mail must never be)."""
    return _STATUSES.get(status.strip().lower(), "active")


def _ref(summary: ContactSummary | ContactEntry) -> ContactRef:
    return ContactRef(summary.key, summary.email.strip().lower(), contact_status(summary.status))


def contact_state(entry: ContactEntry) -> ContactState:
    """The neutral state of a full entry."""
    return ContactState(
        ref=_ref(entry),
        lists=tuple(uri_key(uri) for uri in entry.lists),
        fields=dict(entry.fields),
        version=entry.raw,
        document=entry,
    )


def bulk_activity(activity: Activity) -> BulkActivity:
    """The neutral form of a v1 activity."""
    status = activity.status.upper()
    state: ActivityState
    if status == "COMPLETE":
        state = "complete"
    elif activity.finished:  # ERROR, CANCELLED, FAILED
        state = "failed"
    else:
        state = "running" if status == "RUNNING" else "pending"
    return BulkActivity(
        id=activity.key,
        state=state,
        status=activity.status,
        progress=(activity.status, activity.transaction_count),
        created=activity.insert_time,
        document=activity,
    )


class V1Backend:
    """The v1 API behind the `Backend` protocol.

    Args:
        account: the v1 client (opened and closed by its owner).
        lists: lists its caller has read already (their URIs are what writes send);
            `lists()` and `create_list` add the others.
    """

    def __init__(self, account: Account, lists: Sequence[ContactList] = ()) -> None:
        self.account = account
        #: list id -> its URI, from every list read or created.
        self._uris: dict[ListId, str] = {item.key: item.id for item in lists}

    def __repr__(self) -> str:
        return f"V1Backend({self.identity!r})"

    @property
    def capabilities(self) -> Capabilities:
        return V1_CAPABILITIES

    @property
    def identity(self) -> str:
        """`v1:<username>@<host>`: an account, without its secrets."""
        host = urlsplit(self.account.base_url).hostname or ""
        return f"v1:{self.account.credentials.username}@{host}"

    def stats(self) -> BackendStats:
        governor = self.account.governor.stats()
        return BackendStats(
            self.account.requests_sent, self.account.retries, governor.throttles, governor.rate
        )

    def burst(self) -> AbstractAsyncContextManager[None]:
        return self.account.burst()

    async def verify(self) -> None:
        await self.account.verify()

    def _info(self, item: ContactList) -> ListInfo:
        self._uris[item.key] = item.id
        return ListInfo(item.key, item.name, item.is_system, item.contact_count)

    async def lists(self) -> list[ListInfo]:
        return [self._info(item) for item in await self.account.lists()]

    async def create_list(self, name: str) -> ListInfo:
        return self._info(await self.account.create_list(name))

    async def members(self, list_id: ListId) -> AsyncIterator[str]:
        async for member in self.account.list_members(list_id):
            yield member.email.strip().lower()

    async def find(
        self, emails: Sequence[str], *, strict: bool = False
    ) -> dict[str, ContactRef | ContactState]:
        found = await self.account.search_contacts(emails, strict=strict)
        return {email: _ref(summary) for email, summary in found.items()}

    async def read(self, ref: ContactRef) -> ContactState:
        return contact_state(await self.account.get_contact(ref.id))

    def uri(self, list_id: ListId) -> str:
        """The wire form of a list id (a list read or created through this backend)."""
        try:
            return self._uris[list_id]
        except KeyError:
            raise KeyError(f"list {list_id} was not read through this backend") from None

    def add_lists(
        self,
        state: ContactState,
        targets: Sequence[ListId],
        fields: Mapping[str, str] | None = None,
    ) -> ListWrite | None:
        entry = state.document
        if not isinstance(entry, ContactEntry):
            raise TypeError("a v1 write needs a state read by the v1 backend")
        body = merge_contact_lists(entry, {t: self.uri(t) for t in targets}, fields)
        if body is None:
            return None
        added = tuple(t for t in targets if t not in state.list_ids)
        return ListWrite(state, added, tuple(sorted(fields or {})), body)

    async def take_turn(self) -> None:
        await self.account.governor.take_turn()

    async def update(
        self, write: ListWrite, *, prepaid: bool = False, retry: RetryPolicy | None = None
    ) -> None:
        entry = write.state.document
        if not isinstance(entry, ContactEntry) or not isinstance(write.body, bytes):
            raise TypeError("a v1 write must come from V1Backend.add_lists")
        await self.account.put_contact(entry, write.body, prepaid=prepaid, retry=retry)

    async def back_off(self, attempt: int, error: RetryableApiError, started: float) -> None:
        await self.account.back_off(attempt, error, started)

    async def create(self, email: str, targets: Sequence[ListId], fields: Mapping[str, str]) -> str:
        uri = await self.account.create_contact(email, [self.uri(t) for t in targets], fields)
        return uri_key(uri) if uri else ""

    def encode_bulk(
        self,
        contacts: Iterable[tuple[str, Mapping[str, str]]],
        targets: Sequence[ListId],
        columns: Sequence[str],
        *,
        max_rows: int,
        max_bytes: int,
    ) -> bytes:
        return encode_contact_pairs(
            contacts,
            [self.uri(t) for t in targets],
            fields=columns,
            max_rows=max_rows,
            max_bytes=max_bytes,
            cleaned=True,
        )

    async def submit(self, request: object, *, retry: RetryPolicy | None = None) -> BulkActivity:
        if not isinstance(request, bytes):
            raise TypeError("a v1 bulk request must come from V1Backend.encode_bulk")
        return bulk_activity(await self.account.submit_activity(request, retry=retry))

    async def recent_activities(self) -> list[BulkActivity]:
        return [
            bulk_activity(a)
            for a in await self.account.recent_activities()
            if a.type.upper().startswith("ADD_CONTACT")
        ]

    async def poll(self, activity_id: str) -> BulkActivity:
        return bulk_activity(await self.account.get_activity(activity_id))

    async def settle(
        self, activity: BulkActivity, emails: Sequence[str], targets: Sequence[ListId]
    ) -> list[BulkResult]:
        """From the activity's line errors: line `i + 2` is `emails[i]` (the header is line
        1); a line whose echoed email differs is matched by its email. A line error about
        Do Not Mail is `opted_out`, one saying "invalid" is `invalid`, any other `failed`;
        every other contact was `added`."""
        document = activity.document
        if not isinstance(document, Activity):
            raise TypeError("a v1 activity must come from the v1 backend")
        by_line = {line_number(i): email for i, email in enumerate(emails)}
        wanted = set(emails)
        settled: dict[str, BulkResult] = {}
        for error in document.errors:
            echoed = error.email.strip().lower()
            email = by_line.get(error.line_number)
            if email is None or email != echoed:
                email = echoed if echoed in wanted else email
            if email is None:
                log.warning("activity %s: an error names no row: %s", activity.id, error)
                continue
            message = error.message.lower()
            if "do not mail" in message or "do-not-mail" in message or "opted out" in message:
                settled[email] = BulkResult(email, "opted_out")
            elif "invalid" in message:
                settled[email] = BulkResult(email, "invalid", error.message)
            else:
                settled[email] = BulkResult(email, "failed", error.message)
        return [settled.get(email) or BulkResult(email, "added") for email in emails]
