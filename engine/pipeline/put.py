"""The put stage: PUT merged entries, POST new contacts; a 409 goes back through merge."""

from __future__ import annotations

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.api.client import Account
from engine.crashpoints import crash_point
from engine.errors import ConflictError
from engine.pipeline.merge import Write, decide
from engine.pipeline.models import Outcome
from engine.pipeline.stats import StageStats, outcome_for_error

__all__ = ["put_contacts", "send_write"]

#: How often a contact may bounce between POST (409) and a fresh fetch before it fails.
MAX_CONFLICTS = 3


async def send_write(write: Write, account: Account, *, skip_removed: bool) -> Outcome:
    """Send one write and return its outcome (API errors become outcomes or propagate).

    A POST answered 409 means the email appeared meanwhile (or a search missed it): the
    contact is fetched again and merged, and the merge's write is sent instead.
    """
    contact = write.contact
    rows = tuple(contact.rows)
    targets = tuple(contact.targets)
    try:
        for _ in range(MAX_CONFLICTS):
            if write.entry is not None and write.body is not None:
                await account.put_contact(write.entry, write.body)
                crash_point("put")
                before = tuple(sorted(write.entry.list_keys))
                return Outcome(
                    contact.email, "updated", rows, "", write.added, "contact", targets, before
                )
            try:
                await account.create_contact(
                    contact.email, list(contact.targets.values()), contact.fields
                )
                crash_point("put")
                return Outcome(
                    contact.email, "created", rows, "", write.added, "contact", targets, ()
                )
            except ConflictError:
                found = await account.search_contacts([contact.email])
                summary = found.get(contact.email)
                entry = await account.get_contact(summary.key) if summary else None
                if entry is None:
                    continue  # gone again: try the POST once more
                result = decide(contact, entry, skip_removed=skip_removed)
                if isinstance(result, Outcome):
                    return result
                write = result
        return Outcome(
            contact.email, "failed", rows, "409 on create, yet no contact found", path="contact"
        )
    except Exception as exc:
        return outcome_for_error(contact, exc, "contact")


async def put_contacts(
    receive_writes: MemoryObjectReceiveStream[Write],
    send_outcomes: MemoryObjectSendStream[Outcome],
    *,
    account: Account,
    skip_removed: bool,
    stats: StageStats,
    stop: anyio.Event | None = None,
) -> None:
    """One put worker: one write at a time; once `stop` is set, writes are not sent."""
    async with receive_writes, send_outcomes:
        async for write in receive_writes:
            if stop is not None and stop.is_set():
                continue
            stats.busy += 1
            try:
                outcome = await send_write(write, account, skip_removed=skip_removed)
            finally:
                stats.busy -= 1
            stats.done += 1
            await send_outcomes.send(outcome)
