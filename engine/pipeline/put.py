"""The put stage: PUT merged entries, POST new contacts; a 409 goes back through merge."""

from __future__ import annotations

import logging

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.api.client import Account
from engine.api.codec import merge_contact_lists
from engine.api.records import uri_key
from engine.crashpoints import crash_point
from engine.errors import ConflictError
from engine.pipeline.merge import Write, decide
from engine.pipeline.models import Outcome
from engine.pipeline.stats import StageStats, outcome_for_error

__all__ = ["put_contacts", "send_write"]

log = logging.getLogger("engine.put")

#: How often a contact may bounce between POST (409) and a fresh fetch before it fails.
MAX_CONFLICTS = 3


async def send_write(
    write: Write,
    account: Account,
    *,
    skip_removed: bool,
    verify: str = "stale",
    stale_after: float = 2.0,
) -> Outcome:
    """Send one write and return its outcome (API errors become outcomes or propagate).

    A POST answered 409 means the email appeared meanwhile (or a search missed it): the
    contact is fetched again and merged, and the merge's write is sent instead. Before a
    PUT, an entry older than `stale_after` (every entry with `verify="all"`) is read again
    and the union rebuilt if it changed, so a concurrent writer's change is not dropped;
    with `verify="all"` the contact is also read back after the PUT and the union
    re-applied if a concurrent write removed a list.
    """
    contact = write.contact
    rows = tuple(contact.rows)
    targets = tuple(contact.targets)
    try:
        for _ in range(MAX_CONFLICTS):
            if write.entry is not None and write.body is not None:
                stale = anyio.current_time() - write.fetched_at > stale_after
                if verify == "all" or (verify == "stale" and stale):
                    refreshed = await _refresh(write, account, skip_removed)
                    if isinstance(refreshed, Outcome):
                        return refreshed
                    write = refreshed
                if write.entry is None or write.body is None:
                    continue  # the fresh read turned it into another kind of write
                await account.put_contact(write.entry, write.body)
                crash_point("put")
                before = tuple(sorted(write.entry.list_keys))
                reason = ""
                if verify == "all" and await _read_back(write, account):
                    reason = "a concurrent write removed lists; the union was applied again"
                return Outcome(
                    contact.email, "updated", rows, reason, write.added, "contact", targets, before
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
                result = decide(
                    contact, entry, skip_removed=skip_removed, fetched_at=anyio.current_time()
                )
                if isinstance(result, Outcome):
                    return result
                write = result
        return Outcome(
            contact.email, "failed", rows, "409 on create, yet no contact found", path="contact"
        )
    except Exception as exc:
        return outcome_for_error(contact, exc, "contact")


async def _refresh(write: Write, account: Account, skip_removed: bool) -> Write | Outcome:
    """The write rebuilt from a fresh read when the entry changed since it was fetched."""
    assert write.entry is not None
    fresh = await account.get_contact(write.entry.key)
    if fresh.raw == write.entry.raw:
        return write
    return decide(write.contact, fresh, skip_removed=skip_removed, fetched_at=anyio.current_time())


async def _read_back(write: Write, account: Account) -> bool:
    """Re-read after the PUT; re-apply the union if a list is missing. True if it was."""
    assert write.entry is not None
    wanted = {uri_key(uri): uri for uri in write.entry.lists}
    wanted.update(write.contact.targets)
    repaired = False
    for _ in range(MAX_CONFLICTS):
        after = await account.get_contact(write.entry.key)
        body = merge_contact_lists(after, wanted)
        if body is None:
            return repaired
        log.warning("%s lost lists to a concurrent write: applying the union again", after.email)
        await account.put_contact(after, body)
        repaired = True
    return repaired


async def put_contacts(
    receive_writes: MemoryObjectReceiveStream[Write],
    send_outcomes: MemoryObjectSendStream[Outcome],
    *,
    account: Account,
    skip_removed: bool,
    stats: StageStats,
    stop: anyio.Event | None = None,
    verify: str = "stale",
    stale_after: float = 2.0,
) -> None:
    """One put worker: one write at a time; once `stop` is set, writes are not sent."""
    async with receive_writes, send_outcomes:
        async for write in receive_writes:
            if stop is not None and stop.is_set():
                continue
            stats.busy += 1
            try:
                outcome = await send_write(
                    write,
                    account,
                    skip_removed=skip_removed,
                    verify=verify,
                    stale_after=stale_after,
                )
            finally:
                stats.busy -= 1
            stats.done += 1
            await send_outcomes.send(outcome)
