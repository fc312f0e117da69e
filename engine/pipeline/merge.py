"""The merge stage: read each found contact's full entry and build its write: the union of
its lists and the targets, every other element untouched (`decide`, pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.api.client import Account
from engine.api.codec import merge_contact_lists
from engine.api.records import ContactEntry
from engine.pipeline.fetch import Found
from engine.pipeline.models import Contact, Outcome
from engine.pipeline.stats import StageStats, fan_out, outcome_for_error

__all__ = ["Write", "decide", "merge_lists"]

DO_NOT_MAIL = "do not mail"
REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class Write:
    """A write to send.

    Attributes:
        contact: the contact.
        entry: the entry fetched; None means POST a new contact.
        body: the PUT body (the fetched entry with the union of lists); None for a POST.
        added: keys of the lists this write adds.
        fetched_at: when `entry` was read (`anyio.current_time()`).
        reactivates: the contact is Removed: the write makes it Active again.
        fields: the names of the fields the write changes (an existing contact's fields the
            source gives other values for; none with `lists_only`).
    """

    contact: Contact
    entry: ContactEntry | None
    body: bytes | None
    added: tuple[str, ...]
    fetched_at: float = 0.0
    reactivates: bool = False
    fields: tuple[str, ...] = ()


def decide(
    contact: Contact,
    entry: ContactEntry | None,
    *,
    skip_removed: bool,
    fetched_at: float = 0.0,
    lists_only: bool = False,
) -> Write | Outcome:
    """The write a fetched contact needs, or its outcome when it needs none.

    - no entry: POST it with its fields (`created`);
    - Do Not Mail: `skipped`, reason `opted-out` (invariant I2: never changed);
    - Removed with `skip_removed`: `skipped`, reason `removed`;
    - the union adds nothing and no field changes: `unchanged`, no request;
    - otherwise PUT the fetched entry with the union of lists and the source's non-empty
      fields (`updated`); with `lists_only`, the lists only.

    The fields follow the bulk path's rule, so a row gives the same contact on both paths:
    a non-empty source value is written over the contact's, an empty one changes nothing.
    """
    rows = tuple(contact.rows)
    if entry is None:
        return Write(contact, None, None, tuple(contact.targets))
    status = entry.status.strip().lower()
    targets, before = tuple(contact.targets), tuple(sorted(entry.list_keys))
    if status == DO_NOT_MAIL:
        return Outcome(contact.email, "skipped", rows, "opted-out", (), "contact", targets, before)
    if status == REMOVED and skip_removed:
        return Outcome(contact.email, "skipped", rows, "removed", (), "contact", targets, before)
    fields = {} if lists_only else entry.changed_fields(contact.fields)
    body = merge_contact_lists(entry, contact.targets, fields)
    if body is None:
        return Outcome(contact.email, "unchanged", rows, "", (), "contact", targets, before)
    added = tuple(k for k in contact.targets if k not in entry.list_keys)
    return Write(contact, entry, body, added, fetched_at, status == REMOVED, tuple(sorted(fields)))


async def merge_lists(
    receive_found: MemoryObjectReceiveStream[Found],
    send_writes: MemoryObjectSendStream[Write],
    *,
    account: Account,
    send_outcomes: MemoryObjectSendStream[Outcome],
    skip_removed: bool,
    stats: StageStats,
    limit: int,
    stop: anyio.Event | None = None,
    lists_only: bool = False,
) -> None:
    """The stage: read each found contact's full entry and decide its write.

    `limit` workers, each holding at most one decided write until a put worker takes it
    (the queue to the put stage has no buffer), so an entry is read just before it is used.
    A Do Not Mail contact (and a Removed one with `skip_removed`) is settled from its search
    entry, without reading it.
    """

    async def worker(
        receive: MemoryObjectReceiveStream[Found], send: MemoryObjectSendStream[Write]
    ) -> None:
        async with receive, send, send_outcomes.clone() as outcomes:
            async for found in receive:
                if stop is not None and stop.is_set():
                    continue
                stats.busy += 1
                try:
                    result = await _decide_found(found, account, skip_removed, lists_only)
                finally:
                    stats.busy -= 1
                stats.done += 1
                if isinstance(result, Write):
                    await send.send(result)
                else:
                    await outcomes.send(result)

    async with send_outcomes:
        await fan_out(worker, receive_found, send_writes, limit=limit)


async def _decide_found(
    found: Found, account: Account, skip_removed: bool, lists_only: bool = False
) -> Write | Outcome:
    contact, summary = found.contact, found.summary
    if summary is None:
        return decide(contact, None, skip_removed=skip_removed)
    status = summary.status.strip().lower()
    rows, targets = tuple(contact.rows), tuple(contact.targets)
    if status == DO_NOT_MAIL:
        return Outcome(contact.email, "skipped", rows, "opted-out", (), "contact", targets)
    if status == REMOVED and skip_removed:
        return Outcome(contact.email, "skipped", rows, "removed", (), "contact", targets)
    try:
        entry = await account.get_contact(summary.key)
        return decide(
            contact,
            entry,
            skip_removed=skip_removed,
            fetched_at=anyio.current_time(),
            lists_only=lists_only,
        )
    except Exception as exc:
        return outcome_for_error(contact, exc, "contact")
