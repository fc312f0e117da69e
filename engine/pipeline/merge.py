"""The merge stage: decide each contact's write; the union of lists, nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.api.codec import UnsafeMergeError, merge_contact_lists
from engine.api.records import ContactEntry
from engine.pipeline.fetch import Fetched
from engine.pipeline.models import Contact, Outcome
from engine.pipeline.stats import StageStats, outcome_for_error

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
    """

    contact: Contact
    entry: ContactEntry | None
    body: bytes | None
    added: tuple[str, ...]
    fetched_at: float = 0.0


def decide(
    contact: Contact, entry: ContactEntry | None, *, skip_removed: bool, fetched_at: float = 0.0
) -> Write | Outcome:
    """The write a fetched contact needs, or its outcome when it needs none.

    - no entry: POST it (`created`);
    - Do Not Mail: `skipped`, reason `opted-out` (invariant I2: never changed);
    - Removed with `skip_removed`: `skipped`, reason `removed`;
    - the union adds nothing: `unchanged`, no request;
    - otherwise PUT the fetched entry with the union of lists (`updated`).
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
    body = merge_contact_lists(entry, contact.targets)
    if body is None:
        return Outcome(contact.email, "unchanged", rows, "", (), "contact", targets, before)
    added = tuple(k for k in contact.targets if k not in entry.list_keys)
    return Write(contact, entry, body, added, fetched_at)


async def merge_lists(
    receive_fetched: MemoryObjectReceiveStream[Fetched],
    send_writes: MemoryObjectSendStream[Write],
    *,
    send_outcomes: MemoryObjectSendStream[Outcome],
    skip_removed: bool,
    stats: StageStats,
) -> None:
    """The stage: one decision per fetched contact; no I/O."""
    async with receive_fetched, send_writes, send_outcomes:
        async for fetched in receive_fetched:
            try:
                result = decide(
                    fetched.contact, fetched.entry, skip_removed=skip_removed, fetched_at=fetched.at
                )
            except UnsafeMergeError as exc:
                result = outcome_for_error(fetched.contact, exc, "contact")
            stats.done += 1
            if isinstance(result, Write):
                await send_writes.send(result)
            else:
                await send_outcomes.send(result)
