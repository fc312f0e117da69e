"""The put stage: send the backend's writes, create new contacts; a 409 goes back through
merge."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.backend.protocol import AppendingBackend, Backend, ContactRef, ContactState
from engine.backend.retry import SINGLE_ATTEMPT
from engine.crashpoints import crash_point
from engine.errors import ConflictError, DoNotMailError, RetryableApiError
from engine.pipeline.merge import Write, decide
from engine.pipeline.models import REACTIVATED, REVIVED, Outcome, join_notes
from engine.pipeline.stats import StageStats, outcome_for_error
from engine.pipeline.streams import items, send_soon

if TYPE_CHECKING:
    from engine.pipeline.append import Appends

__all__ = ["put_contacts", "send_write", "updated_outcome"]

log = logging.getLogger("engine.put")

#: The journal's `intend`: (email, kind, lists before, lists added), awaited before a write.
Intend = Callable[[str, str, Iterable[str], Iterable[str]], Awaitable[None]]

#: How often a contact may bounce between POST (409) and a fresh fetch before it fails.
MAX_CONFLICTS = 3


def updated_outcome(write: Write, reason: str = "", note: str = "") -> Outcome:
    """The `updated` outcome of an update sent (by its PUT, or appended by id)."""
    assert write.update is not None
    contact, state = write.contact, write.update.state
    revived = REVIVED if state.ref.status == "deleted" else REACTIVATED
    return Outcome(
        contact.email,
        "updated",
        tuple(contact.rows),
        reason,
        write.added,
        "contact",
        contact.targets,
        tuple(sorted(state.list_ids)),
        note=join_notes(
            revived if write.reactivates else "",
            f"fields written: {', '.join(write.fields)}" if write.fields else "",
            note,
        ),
    )


async def send_write(
    write: Write,
    backend: Backend,
    *,
    skip_removed: bool,
    verify: str = "stale",
    stale_after: float = 2.0,
    intend: Intend | None = None,
    lists_only: bool = False,
    revive_deleted: bool = False,
) -> Outcome:
    """Send one write and return its outcome (API errors become outcomes or propagate).

    `intend` (the journal's) is awaited with what each write is about to do (email, kind,
    lists before, lists added) before it is sent, so a run killed before the outcome is
    journaled leaves the truth for the next run.

    A create answered 409 means the email appeared meanwhile (or a lookup missed it): the
    contact is looked up and read again and merged, and the merge's write is sent instead.
    Before an update, a read older than `stale_after` (every read with `verify="all"`) is
    done again and the union rebuilt if the contact changed, so a concurrent writer's change
    is not dropped; with `verify="all"` the contact is also read back after the update and
    the union re-applied if a concurrent write removed a list. The update's rate turn is
    taken before that check, so the read→write window is one round trip whatever the rate
    (see `_update`).
    """
    contact = write.contact
    rows = tuple(contact.rows)
    targets = contact.targets
    try:
        for _ in range(MAX_CONFLICTS):
            if write.update is not None:
                sent = await _update(
                    write,
                    backend,
                    skip_removed,
                    verify,
                    stale_after,
                    intend,
                    lists_only,
                    revive_deleted,
                )
                if isinstance(sent, Outcome):
                    return sent
                write = sent
                if write.update is None:
                    continue  # the fresh read turned it into another kind of write
                crash_point("put")
                reason = ""
                if verify == "all" and await _read_back(write, backend):
                    reason = "a concurrent write removed lists; the union was applied again"
                return updated_outcome(write, reason)
            try:
                if intend is not None:
                    await intend(contact.email, "created", (), write.added)
                await backend.create(contact.email, contact.targets, contact.fields)
                crash_point("put")
                return Outcome(
                    contact.email, "created", rows, "", write.added, "contact", targets, ()
                )
            except ConflictError as conflict:
                found = await _look_up_existing(contact.email, backend)
                if found is None:
                    continue  # gone again: try the create once more
                state = found if isinstance(found, ContactState) else await backend.read(found)
                result = decide(
                    contact,
                    state,
                    backend=backend,
                    skip_removed=skip_removed,
                    fetched_at=anyio.current_time(),
                    lists_only=lists_only,
                    revive_deleted=revive_deleted,
                )
                if isinstance(result, Outcome):
                    ours = state.list_ids == frozenset(contact.targets)
                    if conflict.after_retry and result.kind == "unchanged" and ours:
                        # The first create was applied and its answer lost: the contact
                        # found, on exactly its targets, is the one it created.
                        return Outcome(
                            contact.email,
                            "created",
                            rows,
                            "",
                            contact.targets,
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
            retryable=True,  # the lookup that should have found it may have failed
        )
    except Exception as exc:
        return outcome_for_error(contact, exc, "contact")


#: Lookups of a contact a create was told exists (409), before it is tried again.
CONFLICT_LOOKUPS = 5


async def _look_up_existing(email: str, backend: Backend) -> ContactRef | ContactState | None:
    """The contact a create was answered 409 for: it exists, so a lookup that misses it
    failed (v1 answers a search fault as it answers a miss, with a 500): it is looked up
    again, with a short pause, up to `CONFLICT_LOOKUPS` times, before the create is."""
    for attempt in range(CONFLICT_LOOKUPS):
        found = (await backend.find([email])).get(email)
        if found is not None:
            return found
        await anyio.sleep(min(0.1 * 2**attempt, 1.0))
    return None


async def _update(
    write: Write,
    backend: Backend,
    skip_removed: bool,
    verify: str,
    stale_after: float,
    intend: Intend | None,
    lists_only: bool = False,
    revive_deleted: bool = False,
) -> Write | Outcome:
    """Send an update; returns the write sent (or what a fresh read turned it into).

    The API has no ETags: whatever another writer changes between the read the write was
    built from and the write is overwritten. So each attempt first takes the write's rate
    turn, then checks the read's age (every read with `verify="all"`) and reads again when
    stale, then sends the write at once: the window is one round trip at any rate, instead
    of the wait for a rate token (seconds at 4 requests/s). A retry (5xx, throttling) goes
    through the same steps after its backoff, since its read has aged meanwhile, and reads
    the contact again whatever its age (the attempt before may have been applied, its answer
    lost): one found with nothing left to add is `updated`, by this write, not `unchanged`.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        await backend.take_turn()
        stale = anyio.current_time() - write.fetched_at > stale_after
        if verify == "all" or (verify == "stale" and stale) or attempt > 1:
            refreshed = await _refresh(write, backend, skip_removed, lists_only, revive_deleted)
            if isinstance(refreshed, Outcome):
                if attempt > 1 and refreshed.kind == "unchanged":
                    # The attempt before was applied and its answer lost (a timeout, a
                    # reset): the contact is on its lists because of this very write.
                    note = "the answer to its PUT was lost; the contact was found on its lists"
                    return updated_outcome(write, note=note)
                return refreshed
            write = refreshed
        update = write.update
        if update is None:
            return write  # the fresh read turned it into another kind of write
        if intend is not None and attempt == 1:
            await intend(write.contact.email, "updated", update.state.list_ids, write.added)
        try:
            await backend.update(update, prepaid=True, retry=SINGLE_ATTEMPT)
            return write
        except RetryableApiError as error:
            await backend.back_off(attempt, error, started)


async def _write_fields(
    write: Write,
    backend: AppendingBackend,
    *,
    verify: str,
    stale_after: float,
    intend: Intend | None,
) -> Outcome | None:
    """For a write that goes by append: its fields, if it changes any, by a PUT that names
    no list (the server keeps the lists, whatever another writer added since the read: no
    window for lists). A stale read (every one with `verify="all"`) is read again first;
    one that changed status meanwhile (opted out, deleted) is not written, and one found with
    its fields and lists as the row wants them is `unchanged`. Returns the contact's outcome
    when it needs no more (refused, failed, or unchanged), None when the lists may follow."""
    if not write.fields:
        return None
    assert write.update is not None
    contact, state = write.contact, write.update.state
    try:
        await backend.take_turn()
        if verify == "all" or anyio.current_time() - write.fetched_at > stale_after:
            state = await backend.read(state.ref)
        fields = backend.fields_write(state, contact.fields)
        if fields is None:  # its fields are as the row wants them now
            if state is not write.update.state and state.list_ids >= set(write.added):
                # read again: another writer did it all meanwhile, nothing left to send
                before = tuple(sorted(state.list_ids))
                rows = tuple(contact.rows)
                return Outcome(
                    contact.email, "unchanged", rows, "", (), "contact", contact.targets, before
                )
            return None
        if intend is not None:
            await intend(contact.email, "updated", state.list_ids, write.added)
        await backend.update(fields, prepaid=True)
        crash_point("put")
    except DoNotMailError as exc:  # opted out or deleted since the lookup: left alone
        rows, before = tuple(contact.rows), tuple(sorted(state.list_ids))
        reason = "deleted" if state.ref.status == "deleted" else "opted-out"
        log.info("%s: %s", contact.email, exc)
        return Outcome(
            contact.email, "skipped", rows, reason, (), "contact", contact.targets, before
        )
    except Exception as exc:
        return outcome_for_error(contact, exc, "contact")
    return None


async def _refresh(
    write: Write,
    backend: Backend,
    skip_removed: bool,
    lists_only: bool = False,
    revive_deleted: bool = False,
) -> Write | Outcome:
    """The write rebuilt from a fresh read when the contact changed since it was read."""
    assert write.update is not None
    fresh = await backend.read(write.update.state.ref)
    if fresh.version == write.update.state.version:
        return write
    return decide(
        write.contact,
        fresh,
        backend=backend,
        skip_removed=skip_removed,
        fetched_at=anyio.current_time(),
        lists_only=lists_only,
        revive_deleted=revive_deleted,
    )


async def _read_back(write: Write, backend: Backend) -> bool:
    """Re-read after the update; re-apply the union if a list is missing. True if it was."""
    assert write.update is not None
    wanted = tuple(dict.fromkeys((*write.update.state.lists, *write.contact.targets)))
    repaired = False
    for _ in range(MAX_CONFLICTS):
        after = await backend.read(write.update.state.ref)
        update = backend.add_lists(after, wanted)
        if update is None:
            return repaired
        log.warning(
            "%s lost lists to a concurrent write: applying the union again", after.ref.email
        )
        await backend.update(update)
        repaired = True
    return repaired


async def put_contacts(
    receive_writes: MemoryObjectReceiveStream[Write],
    send_outcomes: MemoryObjectSendStream[Outcome],
    *,
    backend: Backend,
    skip_removed: bool,
    stats: StageStats,
    stop: anyio.Event | None = None,
    verify: str = "stale",
    stale_after: float = 2.0,
    intend: Intend | None = None,
    lists_only: bool = False,
    revive_deleted: bool = False,
    appends: Appends | None = None,
) -> None:
    """One put worker: one write at a time; once `stop` is set, writes are not sent. With
    `appends`, a write that only adds lists to an existing contact is batched there (its
    outcome comes from there). A write's place in the merge stage's read window is given
    back once it is sent (or settled without it)."""
    async with receive_writes, send_outcomes:
        async for write in items(receive_writes):
            try:
                if stop is not None and stop.is_set():
                    continue
                if appends is not None and appends.takes(write):
                    stats.busy += 1
                    try:
                        refused = await _write_fields(
                            write,
                            appends.backend,
                            verify=verify,
                            stale_after=stale_after,
                            intend=intend,
                        )
                    finally:
                        stats.busy -= 1
                    stats.done += 1
                    if refused is not None:
                        await send_soon(send_outcomes, refused)
                    elif write.added:
                        await appends.add(write)  # its outcome comes when it is settled
                    else:
                        await send_soon(send_outcomes, updated_outcome(write))
                    continue
                stats.busy += 1
                try:
                    outcome = await send_write(
                        write,
                        backend,
                        skip_removed=skip_removed,
                        verify=verify,
                        stale_after=stale_after,
                        intend=intend,
                        lists_only=lists_only,
                        revive_deleted=revive_deleted,
                    )
                finally:
                    stats.busy -= 1
                stats.done += 1
                await send_soon(send_outcomes, outcome)
            finally:
                if write.place is not None:
                    write.place.leave()
