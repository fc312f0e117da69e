"""`V3Backend`: the `Backend` protocol over the V3 JSON client (`V3Client`).

Everything the V3 dialect says its own way is translated here and in `_json`: a contact is
found one email a request with `status=all` (a deleted contact is hidden otherwise) and its
lists come with it; `unsubscribed` is `opted_out` and a deleted contact `deleted`; a write is
the whole-contact PUT of §9.1, proven to keep every list; a bulk request is a
`contacts_json_import`; and since a V3 activity names no contact in its errors and counts
unsubscribed contacts without naming them, a completed activity is settled by reading the
contacts back (`settle`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Literal, TypeVar

import anyio

from engine.backend.protocol import (
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
from engine.backend.v3._json import (
    APPEND_MAX_IDS,
    FIELD_LIMITS,
    IMPORT_EMAIL_MAX,
    IMPORT_MAX_BYTES,
    IMPORT_MAX_ROWS,
    LISTS_PER_CONTACT,
    JsonImport,
    V3Activity,
    append_body,
    bulk_activity,
    contact_state,
    create_body,
    encode_import,
    is_import_activity,
    member_email,
    member_state,
    put_body,
)
from engine.backend.v3.client import V3Client
from engine.errors import (
    ApiError,
    ConflictError,
    ConnectionLostError,
    DoNotMailError,
    FatalApiError,
    MalformedResponseError,
    RetryableApiError,
)
from engine.groupcommit import GroupCommit

__all__ = ["V3_CAPABILITIES", "V3Backend"]

log = logging.getLogger("engine.backend.v3")
T = TypeVar("T")
#: What an import's read-back can say of a contact.
SettledKind = Literal["added", "opted_out", "unknown"]

V3_CAPABILITIES = Capabilities(
    dialect="v3",
    lookup_batch=1,
    lookup_has_lists=True,
    bulk_threshold=25,
    bulk_max_rows=IMPORT_MAX_ROWS,
    bulk_max_bytes=IMPORT_MAX_BYTES,
    lists_per_contact=LISTS_PER_CONTACT,
    fields=FIELD_LIMITS,
    bulk_revives_deleted=True,
    append_max=APPEND_MAX_IDS,
    list_page=500,
)

#: What a lookup or read includes: the lists, and the subresources a field write resends.
_INCLUDE = "list_memberships,phone_numbers,street_addresses"
#: Contacts per page of a list read-back (§3.2: 500 at most).
_PAGE = str(V3_CAPABILITIES.list_page)
#: How far beyond an activity's own stamps (started, completed) its read-back looks for the
#: contacts it changed. The stamps are whole seconds (§2.1) and whether a range's bounds are
#: included is not known, so a second each side holds every contact the activity changed when
#: the server's clocks agree. Whether they agree to the second is not known either [I]: the
#: contacts that second does not show are looked for a second further out, when that costs
#: fewer requests than reading them one by one.
_WINDOW_MARGIN = 1.0
_SKEW_MARGIN = 2.0
#: How much earlier than the server's time before a read of the deleted and unsubscribed
#: contacts the next read looks for changes: the `Date` it is taken from is whole seconds,
#: whether a range's bound is included is not known, nor whether the server's front end and
#: its database agree on the time [U]. Re-reading the few that changed within it is cheap.
_INDEX_MARGIN = 300.0


class V3Backend:
    """The V3 API behind the `Backend` protocol.

    Args:
        client: the V3 client (opened and closed by its owner).
    """

    def __init__(self, client: V3Client) -> None:
        self.client = client
        #: the token's user, fixed by `verify` (a headless run's first token is only a
        #: refresh token, whose access token is unknown until the first request).
        self._user: str | None = None
        #: one read-back of a set of targets at a time, of every import to them that
        #: finished meanwhile (`settle`)
        self._reading_back: GroupCommit[
            tuple[ListId, ...], tuple[BulkActivity, Sequence[str]], dict[str, SettledKind]
        ] = GroupCommit(self._read_back)
        #: the deleted and unsubscribed contacts read so far, and the server's time from
        #: which the next read looks for changes (`untouchable_contacts`)
        self._untouchable: dict[str, ContactStatus] = {}
        self._untouchable_since: float | None = None
        self._untouchable_lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"V3Backend({self.identity!r})"

    @property
    def capabilities(self) -> Capabilities:
        return V3_CAPABILITIES

    @property
    def identity(self) -> str:
        """`v3:<user>@<host>`, where `<user>` is a digest of the application's client id
        and of the user id (`uid`) the access token was issued to, read from the token's
        claims without the token itself: another account (another login) or another API
        host is another identity, and no secret is in it. It is fixed by `verify` (which
        the pipeline calls before it keys its journal); an opaque token names no user, and
        then the client id alone tells accounts apart."""
        user = self._user
        if user is None:
            user = _token_user(self.client.auth.tokens.access_token)
        seed = f"{self.client.auth.endpoints.client_id}\0{user}".encode()
        return f"v3:{hashlib.sha256(seed).hexdigest()[:16]}@{self.client.host}"

    def stats(self) -> BackendStats:
        governor = self.client.governor.stats()
        return BackendStats(
            self.client.requests_sent, self.client.retries, governor.throttles, governor.rate
        )

    def burst(self) -> AbstractAsyncContextManager[None]:
        return self.client.burst()

    async def verify(self) -> None:
        """One cheap authenticated GET that needs a privilege the run needs anyway
        (`contacts:lists:read`); `/account/summary` would need the `account_read` scope,
        which the login does not ask for."""
        await self.client.send("GET", self.client.url("contact_lists"), params={"limit": "1"})
        self._user = _token_user(self.client.auth.tokens.access_token)

    # --- lists ----------------------------------------------------------------------------

    @staticmethod
    def _info(item: Mapping[str, Any]) -> ListInfo:
        list_id, name = item.get("list_id"), item.get("name")
        if not isinstance(list_id, str) or not isinstance(name, str):
            raise MalformedResponseError("a list lacks its list_id or name")
        count = item.get("membership_count")
        return ListInfo(list_id, name, False, count if isinstance(count, int) else None)

    async def lists(self) -> list[ListInfo]:
        params = {"limit": _PAGE, "include_membership_count": "all"}
        return [
            self._info(item) async for item in self.client.pages("contact_lists", "lists", params)
        ]

    async def create_list(self, name: str) -> ListInfo:
        """Create a list; a name taken already (409) gives the existing list, found by its
        exact name."""
        try:
            created = await self.client.send(
                "POST",
                self.client.url("contact_lists"),
                body=_encode({"name": name, "favorite": False}),
                expect=(201,),
            )
        except ConflictError:
            params = {"name": name, "include_membership_count": "all", "limit": _PAGE}
            async for item in self.client.pages("contact_lists", "lists", params):
                if item.get("name") == name:
                    return self._info(item)
            raise
        return self._info(created)

    async def members(self, list_id: ListId) -> AsyncIterator[str]:
        params = {"lists": list_id, "status": "all", "limit": _PAGE}
        async for contact in self.client.pages("contacts", "contacts", params):
            address = (contact.get("email_address") or {}).get("address")
            if isinstance(address, str):
                yield address.strip().lower()

    async def account_contacts(self) -> AsyncGenerator[ContactState, None]:
        """Every contact of the account, deleted ones included, with its lists: 500 a
        request (`GET /contacts?status=all&include=list_memberships&limit=500`), for reads
        of a whole account (the rehearsal copy) at a 500th of a lookup per contact."""
        params = {"status": "all", "include": "list_memberships", "limit": _PAGE}
        async for document in self.client.pages("contacts", "contacts", params):
            yield contact_state(document)

    async def list_contacts(self, list_id: ListId) -> AsyncGenerator[ContactState, None]:
        """The contacts on a list with their lists, 500 a request
        (`GET /contacts?lists=…&status=all&include=list_memberships&limit=500`)."""
        params = {"lists": list_id, "status": "all", "include": "list_memberships", "limit": _PAGE}
        async for document in self.client.pages("contacts", "contacts", params):
            yield contact_state(document)

    async def untouchable_contacts(self) -> dict[str, ContactStatus]:
        """The account's deleted and unsubscribed contacts
        (`GET /contacts?status=deleted,unsubscribed&limit=500`): what the bulk path leaves
        out of a json import, which would revive the deleted ones and write the fields of
        the unsubscribed ones.

        Read whole once (a request per 500), then only those that changed since the last
        read (`updated_after`: every mutating call updates `updated_at`, §10.6.33), from the
        server's time before that read began, `_INDEX_MARGIN` earlier. An account gathers
        unsubscribed contacts over the years, and the bulk path asks before every activity:
        read whole each time, a hundred thousand of them were 200 requests an activity. A
        contact that left those statuses since it was read (subscribed again, revived) is
        still listed: left out, never written against its consent. When the server gives no
        time, each read is whole."""
        async with self._untouchable_lock:
            since = self.client.server_time()  # before this read: its changes come after
            params = {"status": "deleted,unsubscribed", "limit": _PAGE}
            if self._untouchable_since is not None:
                params["updated_after"] = _iso(self._untouchable_since)
            found = self._untouchable
            async for document in self.client.pages("contacts", "contacts", params):
                state = member_state(document)
                if state.ref.email and state.ref.status in ("deleted", "opted_out"):
                    found[state.ref.email] = state.ref.status
            self._untouchable_since = None if since is None else since - _INDEX_MARGIN
            return dict(found)

    # --- contacts -------------------------------------------------------------------------

    async def _lookup(self, email: str) -> ContactState | None:
        page = await self.client.send(
            "GET",
            self.client.url("contacts"),
            params={"email": email, "status": "all", "include": _INCLUDE},
        )
        contacts = page.get("contacts") if isinstance(page, dict) else None
        if not isinstance(contacts, list):
            raise MalformedResponseError("a contact search answered no contacts array")
        for document in contacts:
            state = contact_state(document)
            if state.ref.email == email:
                return state
        return None

    async def find(
        self, emails: Sequence[str], *, strict: bool = False
    ) -> dict[str, ContactRef | ContactState]:
        """One `GET /contacts?email=…&status=all` per email (V3 takes one address a search).

        A V3 search answers a miss with an empty page, never with a 5xx, so a failed search
        raises with or without `strict`: it never reads as "absent".
        """
        found: dict[str, ContactRef | ContactState] = {}
        for email in dict.fromkeys(e.strip().lower() for e in emails):
            state = await self._lookup(email)
            if state is not None:
                found[email] = state
        return found

    async def read(self, ref: ContactRef) -> ContactState:
        document = await self.client.send(
            "GET", self.client.url(f"contacts/{ref.id}"), params={"include": _INCLUDE}
        )
        return contact_state(document)

    def add_lists(
        self,
        state: ContactState,
        targets: Sequence[ListId],
        fields: Mapping[str, str] | None = None,
    ) -> ListWrite | None:
        """The safe PUT (see `_json.put_body`). An unsubscribed contact is never written
        (I2): `DoNotMailError`, which the pipeline reports as skipped, opted out."""
        if state.ref.status == "opted_out":
            raise DoNotMailError("the contact is unsubscribed: it is never written to")
        built = put_body(state, targets, fields)
        if built is None:
            return None
        body, added, written = built
        return ListWrite(state, added, written, body)

    def fields_write(self, state: ContactState, fields: Mapping[str, str]) -> ListWrite | None:
        """The PUT that writes `fields` and names no list (the API keeps them: §3.5), None
        when no field changes; an unsubscribed or deleted contact is never written (a PUT
        would revive a deleted one)."""
        if state.ref.status in ("opted_out", "deleted"):
            raise DoNotMailError(f"the contact is {state.ref.status}: its fields are not written")
        built = put_body(state, (), fields, lists=False)
        if built is None:
            return None
        body, _, written = built
        return ListWrite(state, (), written, body)

    async def take_turn(self) -> None:
        await self.client.governor.take_turn()

    async def update(
        self, write: ListWrite, *, prepaid: bool = False, retry: RetryPolicy | None = None
    ) -> None:
        if not isinstance(write.body, bytes) or not isinstance(write.state.document, dict):
            raise TypeError("a V3 write must come from V3Backend.add_lists")
        await self.client.send(
            "PUT",
            self.client.url(f"contacts/{write.state.ref.id}"),
            body=write.body,
            expect=(200,),
            retry=retry,
            prepaid=prepaid,
        )

    async def back_off(self, attempt: int, error: RetryableApiError, started: float) -> None:
        await self.client.back_off(attempt, error, started)

    async def create(self, email: str, targets: Sequence[ListId], fields: Mapping[str, str]) -> str:
        created = await self.client.send(
            "POST",
            self.client.url("contacts"),
            body=create_body(email, targets, fields),
            expect=(201,),
        )
        contact_id = created.get("contact_id") if isinstance(created, dict) else None
        return contact_id if isinstance(contact_id, str) else ""

    # --- bulk -----------------------------------------------------------------------------

    def encode_bulk(
        self,
        contacts: Iterable[tuple[str, Mapping[str, str]]],
        targets: Sequence[ListId],
        columns: Sequence[str],
        *,
        max_rows: int,
        max_bytes: int,
    ) -> JsonImport:
        """A `contacts_json_import` (see `_json.encode_import`). An email longer than 50
        characters cannot be an import row: it is left out and settled `unknown`, so the
        pipeline sends it contact by contact (a contact takes 80)."""
        return encode_import(contacts, targets, columns, max_rows=max_rows, max_bytes=max_bytes)

    async def submit(self, request: object, *, retry: RetryPolicy | None = None) -> BulkActivity:
        if not isinstance(request, JsonImport):
            raise TypeError("a V3 bulk request must come from V3Backend.encode_bulk")
        answer = await self.client.send(
            "POST",
            self.client.url("activities/contacts_json_import"),
            body=request.body,
            expect=(201,),
            retry=retry,
        )
        return bulk_activity(answer)

    async def append(self, ids: Sequence[str], targets: Sequence[ListId]) -> BulkActivity:
        """`add_list_memberships` (§5.4): append only, so a lost answer posted again only
        appends the same memberships twice (harmless)."""
        answer = await self.client.send(
            "POST",
            self.client.url("activities/add_list_memberships"),
            body=append_body(ids, targets),
            expect=(201,),
        )
        return bulk_activity(answer)

    async def appended(
        self, appends: Sequence[tuple[BulkActivity, Sequence[str]]], targets: Sequence[ListId]
    ) -> list[set[str]]:
        """For each finished append (activity, its ids), the ids it is seen to have put on
        every target, read back rather than taken from its counters: a contact the API
        skips (unsubscribed or deleted meanwhile, at its 50 lists) may be counted as done
        without an error (§5.4, [U]). Appends to the same targets are read back together,
        over the window they span: each page read settles contacts of all of them. A
        failed activity, or a read-back that fails, vouches for none."""
        readable = [(a, ids) for a, ids in appends if a.state != "failed" or a.partial]
        if not readable:
            return [set() for _ in appends]
        try:
            target_set = set(targets)
            found = await self._members(
                [a for a, _ in readable],
                (i for _, ids in readable for i in ids),
                _contact_id,
                targets,
                lambda state: target_set <= state.list_ids,
            )
        except (FatalApiError, ConnectionLostError):
            raise
        except ApiError as exc:
            names = ", ".join(a.id for a, _ in readable)
            log.warning("appends %s could not be read back: %s", names, exc)
            found = {}
        vouched = {i for i, on_targets in found.items() if on_targets}
        return [
            vouched.intersection(ids) if (a.state != "failed" or a.partial) else set()
            for a, ids in appends
        ]

    async def recent_activities(self) -> list[BulkActivity]:
        """The first page of `GET /activities` (the last 10 days, newest first), json imports
        only."""
        page = await self.client.send("GET", self.client.url("activities"), params={"limit": "50"})
        items = page.get("activities") if isinstance(page, dict) else None
        if not isinstance(items, list):
            raise MalformedResponseError("the activities page has no activities array")
        return [bulk_activity(a) for a in items if isinstance(a, dict) and is_import_activity(a)]

    async def poll(self, activity_id: str) -> BulkActivity:
        """The activity as it stands."""
        return bulk_activity(
            await self.client.send("GET", self.client.url(f"activities/{activity_id}"))
        )

    async def settle(
        self, activity: BulkActivity, emails: Sequence[str], targets: Sequence[ListId]
    ) -> list[BulkResult]:
        """By reading the contacts back (a V3 activity names no contact in its errors, and
        counts unsubscribed contacts without naming them): `added` for a contact now on
        every target, `opted_out` for an unsubscribed one, `unknown` for any other (left out
        of the import, not found, or not on its targets) or when the read-back fails: the
        pipeline sends those contact by contact, which is safe to repeat.

        Imports to the same targets that finish while one of them is read back are read back
        together next (`GroupCommit`): each pages through the members changed while it ran,
        which hold the others' contacts too."""
        try:
            results = await self._reading_back(tuple(targets), (activity, emails))
        except (FatalApiError, ConnectionLostError):
            raise
        except ApiError as exc:  # nothing vouched for: all go contact by contact
            log.warning("activity %s could not be read back: %s", activity.id, exc)
            results = {}
        return [BulkResult(email, results.get(_normal(email), "unknown")) for email in emails]

    async def _read_back(
        self,
        targets: tuple[ListId, ...],
        imports: Sequence[tuple[BulkActivity, Sequence[str]]],
    ) -> list[dict[str, SettledKind]]:
        """Each imported contact's result, read from the server, for finished imports to
        the same targets (an email over the import's limit was left out of it, and is not
        read): the members of a target the imports changed (`_members`), then a lookup of
        each contact not found there. One dict of every import's contacts, for each."""
        wanted = [
            e
            for e in dict.fromkeys(_normal(e) for _, emails in imports for e in emails)
            if len(e) <= IMPORT_EMAIL_MAX
        ]
        results: dict[str, SettledKind] = {}
        if wanted:
            target_set = set(targets)
            results = await self._members(
                [activity for activity, _ in imports],
                wanted,
                member_email,
                targets,
                lambda state: _settled_kind(state, target_set),
            )
            for email in wanted:
                if email not in results:
                    state = await self._lookup(email)
                    kind = "unknown" if state is None else _settled_kind(state, target_set)
                    results[email] = kind
        return [results] * len(imports)

    async def _members(
        self,
        activities: Sequence[BulkActivity],
        wanted: Iterable[str],
        key: Callable[[Mapping[str, Any]], str],
        targets: Sequence[ListId],
        summary: Callable[[ContactState], T],
    ) -> dict[str, T]:
        """The `summary` of each contact of `wanted` (by `key`, read from a member's
        document: only those sought are made a state) found among the targets' members,
        read with its lists, 500 a request, at a cost that does not grow with the lists'
        size. Only the summaries are kept, under the caller's own strings: an activity's
        read-back holds tens of thousands of contacts, and a summary is a fraction of a
        contact's state.

        First the members of one target updated while the activities ran (every mutating
        call updates `updated_at`, §10.6.33): about the activities' own contacts. The window
        runs from the first one's start to the last one's end, a second wider each side
        (`_WINDOW_MARGIN`); when more of their contacts are missing than two requests a page
        read, the clocks may disagree, and a window a second wider is read for them
        (`_SKEW_MARGIN`). Those still not found (a server that does not stamp them, a
        contact changed again since) are looked for among all the members of the smallest
        target, when that costs fewer requests than reading them one by one; the caller
        reads or rewrites the rest one by one.
        """
        keys = {k: k for k in wanted}
        found: dict[str, T] = {}
        window = _window(activities, _WINDOW_MARGIN)
        if window and targets:
            found, read = await self._scan(targets[0], keys, key, window, summary)
            missing = {k: k for k in keys if k not in found}
            if len(missing) > 2 * max(1, math.ceil(read / int(_PAGE))):
                wider = _window(activities, _SKEW_MARGIN)
                found |= (await self._scan(targets[0], missing, key, wider, summary))[0]
        missing = {k: k for k in keys if k not in found}
        if missing:
            smallest = await self._smallest_target(targets)
            if smallest is not None and math.ceil(smallest[1] / int(_PAGE)) + 1 < len(missing):
                found |= (await self._scan(smallest[0], missing, key, {}, summary))[0]
        return found

    async def _scan(
        self,
        list_id: ListId,
        keys: Mapping[str, str],
        key: Callable[[Mapping[str, Any]], str],
        window: Mapping[str, str],
        summary: Callable[[ContactState], T],
    ) -> tuple[dict[str, T], int]:
        """The summaries of the contacts of `keys` among a list's members (within
        `window`), 500 a page, and how many members were read; the read stops at the page
        that holds the last of them. While more are missing than a page holds, the next page
        is asked for before this one is read (`pages_ahead`): a chain of pages is most of a
        large import's time, and so the server's work and the engine's overlap."""
        params = {
            "lists": list_id,
            "status": "all",
            "include": "list_memberships",
            "limit": _PAGE,
            **window,
        }
        found: dict[str, T] = {}
        read = 0
        async with self.client.pages_ahead("contacts", "contacts", params) as pages:
            async for page in pages:
                if len(keys) - len(found) > len(page):
                    pages.ask()  # this page cannot hold all those missing: the next is needed
                for document in page:
                    read += 1
                    # The key from the document first: a member not sought (the other
                    # activities' contacts in the window, a third of those read) is not
                    # made a state.
                    mine = keys.get(key(document))
                    if mine is not None:
                        found[mine] = summary(member_state(document))
                        if len(found) == len(keys):
                            return found, read
        return found, read

    async def _smallest_target(self, targets: Sequence[ListId]) -> tuple[ListId, int] | None:
        """The target with the fewest members and their count (one page of lists, with
        counts), or None when the counts are not known."""
        counts: dict[ListId, int] = {}
        params = {"limit": _PAGE, "include_membership_count": "all"}
        async for item in self.client.pages("contact_lists", "lists", params):
            info = self._info(item)
            if info.id in targets and info.members is not None:
                counts[info.id] = info.members
        if not counts:
            return None
        best = min(counts, key=counts.__getitem__)
        return best, counts[best]


def _normal(email: str) -> str:
    """The email trimmed and lower-cased: the same string when it is already (the
    pipeline's are), not a copy of it."""
    normal = email.strip().lower()
    return email if normal == email else normal


def _contact_id(document: Mapping[str, Any]) -> str:
    """A contact document's id ("" when it has none)."""
    contact_id = document.get("contact_id")
    return contact_id if isinstance(contact_id, str) else ""


def _window(activities: Sequence[BulkActivity], margin: float) -> dict[str, str]:
    """The `updated_after`/`updated_before` range of the contacts finished activities can
    have changed, from their own stamps: the first one's start to the last one's end,
    `margin` seconds wider each side; {} when one of them gives none readable.

    An activity's run starts when the server started it (`started_at`), not at its POST: an
    activity waits in the account's queue behind the others (§5.1), and every contact they
    change meanwhile would be read back too. It ends at `completed_at`. A server that leaves
    either out gives `created_at` and `updated_at`, which hold the run as well."""
    starts: list[float] = []
    ends: list[float] = []
    for activity in activities:
        document = activity.document
        raw = document.raw if isinstance(document, V3Activity) else {}
        started = _epoch(raw.get("started_at")) or _epoch(raw.get("created_at"))
        ended = _epoch(raw.get("completed_at")) or _epoch(raw.get("updated_at"))
        if started is None:
            return {}
        starts.append(started)
        if ended is not None and ended >= started:
            ends.append(ended)
    if not starts:
        return {}
    window = {"updated_after": _iso(min(starts) - margin)}
    if len(ends) == len(starts):  # open-ended when one of them has no end
        window["updated_before"] = _iso(max(ends) + margin)
    return window


def _epoch(stamp: object) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _settled_kind(state: ContactState, targets: set[ListId]) -> SettledKind:
    if state.ref.status == "opted_out":
        return "opted_out"
    if targets <= state.list_ids:
        return "added"
    return "unknown"


def _token_user(token: str) -> str:
    """The `uid` (else `sub`) claim of a JWT access token, read without verifying it (only
    to tell accounts apart); "" for an opaque token."""
    parts = token.split(".")
    if len(parts) != 3:
        return ""
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(claims, dict):
        return ""
    user = claims.get("uid") or claims.get("sub") or ""
    return str(user)


def _encode(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
