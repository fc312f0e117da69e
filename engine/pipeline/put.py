"""The put stage: PUT merged entries, POST new contacts; a 409 goes back through merge."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.api.client import Account
from engine.api.codec import merge_contact_lists
from engine.api.records import uri_key
from engine.api.retry import SINGLE_ATTEMPT
from engine.crashpoints import crash_point
from engine.errors import ConflictError, RetryableApiError
from engine.pipeline.merge import Write, decide
from engine.pipeline.models import REACTIVATED, Outcome, join_notes
from engine.pipeline.stats import StageStats, outcome_for_error

__all__ = ["put_contacts", "send_write"]

log = logging.getLogger("engine.put")

#: The journal's `intend`: (email, kind, lists before, lists added), awaited before a write.
Intend = Callable[[str, str, Iterable[str], Iterable[str]], Awaitable[None]]

#: How often a contact may bounce between POST (409) and a fresh fetch before it fails.
MAX_CONFLICTS = 3


async def send_write(
    write: Write,
    account: Account,
    *,
    skip_removed: bool,
    verify: str = "stale",
    stale_after: float = 2.0,
    intend: Intend | None = None,
    lists_only: bool = False,
) -> Outcome:
    """Send one write and return its outcome (API errors become outcomes or propagate).

    `intend` (the journal's) is awaited with what each write is about to do (email, kind,
    lists before, lists added) before it is sent, so a run killed before the outcome is
    journaled leaves the truth for the next run.

    A POST answered 409 means the email appeared meanwhile (or a search missed it): the
    contact is fetched again and merged, and the merge's write is sent instead. Before a
    PUT, an entry older than `stale_after` (every entry with `verify="all"`) is read again
    and the union rebuilt if it changed, so a concurrent writer's change is not dropped;
    with `verify="all"` the contact is also read back after the PUT and the union
    re-applied if a concurrent write removed a list. The PUT's rate turn is taken before
    that check, so the GET→PUT window is one round trip whatever the rate (see `_put`).
    """
    contact = write.contact
    rows = tuple(contact.rows)
    targets = tuple(contact.targets)
    try:
        for _ in range(MAX_CONFLICTS):
            if write.entry is not None and write.body is not None:
                sent = await _put(
                    write, account, skip_removed, verify, stale_after, intend, lists_only
                )
                if isinstance(sent, Outcome):
                    return sent
                write = sent
                if write.entry is None or write.body is None:
                    continue  # the fresh read turned it into another kind of write
                crash_point("put")
                before = tuple(sorted(write.entry.list_keys))
                reason = ""
                if verify == "all" and await _read_back(write, account):
                    reason = "a concurrent write removed lists; the union was applied again"
                return Outcome(
                    contact.email,
                    "updated",
                    rows,
                    reason,
                    write.added,
                    "contact",
                    targets,
                    before,
                    note=join_notes(
                        REACTIVATED if write.reactivates else "",
                        f"fields written: {', '.join(write.fields)}" if write.fields else "",
                    ),
                )
            try:
                if intend is not None:
                    await intend(contact.email, "created", (), write.added)
                await account.create_contact(
                    contact.email, list(contact.targets.values()), contact.fields
                )
                crash_point("put")
                return Outcome(
                    contact.email, "created", rows, "", write.added, "contact", targets, ()
                )
            except ConflictError as conflict:
                found = await account.search_contacts([contact.email])
                summary = found.get(contact.email)
                entry = await account.get_contact(summary.key) if summary else None
                if entry is None:
                    continue  # gone again: try the POST once more
                result = decide(
                    contact,
                    entry,
                    skip_removed=skip_removed,
                    fetched_at=anyio.current_time(),
                    lists_only=lists_only,
                )
                if isinstance(result, Outcome):
                    ours = entry.list_keys == frozenset(contact.targets)
                    if conflict.after_retry and result.kind == "unchanged" and ours:
                        # The first POST was applied and its answer lost: the contact found,
                        # on exactly its targets, is the one it created.
                        return Outcome(
                            contact.email,
                            "created",
                            rows,
                            "",
                            tuple(contact.targets),
                            "contact",
                            targets,
                            (),
                            note="the answer to its POST was lost; the contact it created "
                            "was found",
                        )
                    return result
                write = result
        return Outcome(
            contact.email,
            "failed",
            rows,
            "409 on create, yet no contact found",
            path="contact",
            retryable=True,  # the search that should have found it may have failed
        )
    except Exception as exc:
        return outcome_for_error(contact, exc, "contact")


async def _put(
    write: Write,
    account: Account,
    skip_removed: bool,
    verify: str,
    stale_after: float,
    intend: Intend | None,
    lists_only: bool = False,
) -> Write | Outcome:
    """PUT a merged entry; returns the write sent (or what a fresh read turned it into).

    The API has no ETags: whatever another writer changes between the GET the body was
    built from and the PUT is overwritten. So each attempt first takes the PUT's rate turn,
    then checks the entry's age (every entry with `verify="all"`) and reads it again when
    stale, then sends the PUT at once: the window is one round trip at any rate, instead of
    the wait for a rate token (seconds at 4 requests/s). A retry (5xx, throttling) goes
    through the same steps after its backoff, since its entry has aged meanwhile.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        await account.governor.take_turn()
        stale = anyio.current_time() - write.fetched_at > stale_after
        if verify == "all" or (verify == "stale" and stale):
            refreshed = await _refresh(write, account, skip_removed, lists_only)
            if isinstance(refreshed, Outcome):
                return refreshed
            write = refreshed
        entry, body = write.entry, write.body
        if entry is None or body is None:
            return write  # the fresh read turned it into another kind of write
        if intend is not None and attempt == 1:
            await intend(write.contact.email, "updated", entry.list_keys, write.added)
        try:
            await account.put_contact(entry, body, prepaid=True, retry=SINGLE_ATTEMPT)
            return write
        except RetryableApiError as error:
            await account.back_off(attempt, error, started)


async def _refresh(
    write: Write, account: Account, skip_removed: bool, lists_only: bool = False
) -> Write | Outcome:
    """The write rebuilt from a fresh read when the entry changed since it was fetched."""
    assert write.entry is not None
    fresh = await account.get_contact(write.entry.key)
    if fresh.raw == write.entry.raw:
        return write
    return decide(
        write.contact,
        fresh,
        skip_removed=skip_removed,
        fetched_at=anyio.current_time(),
        lists_only=lists_only,
    )


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
    intend: Intend | None = None,
    lists_only: bool = False,
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
                    intend=intend,
                    lists_only=lists_only,
                )
            finally:
                stats.busy -= 1
            stats.done += 1
            await send_outcomes.send(outcome)
