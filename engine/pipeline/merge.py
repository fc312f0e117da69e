"""The merge stage: read each found contact's full entry and build its write: the union of
its lists and the targets, every other element untouched (`decide`, pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.backend.protocol import Backend, ContactRef, ContactState, ListWrite
from engine.pipeline.fetch import Found
from engine.pipeline.models import Contact, Outcome
from engine.pipeline.stats import StageStats, fan_out, outcome_for_error
from engine.pipeline.streams import send_soon
from engine.pipeline.window import Place, ReadWindow

__all__ = ["Write", "decide", "merge_lists"]


@dataclass(frozen=True, slots=True)
class Write:
    """A write to send.

    Attributes:
        contact: the contact.
        update: the backend's write for an existing contact; None means create it.
        added: ids of the lists this write adds.
        fetched_at: when the contact was read (`anyio.current_time()`).
        reactivates: the contact is Removed (or deleted, with `revive_deleted`): the write
            makes it Active again.
        place: its place in the merge stage's `ReadWindow`, left by the put worker that
            sends it (None: read by its lookup, or not read).
    """

    contact: Contact
    update: ListWrite | None
    added: tuple[str, ...]
    fetched_at: float = 0.0
    reactivates: bool = False
    place: Place | None = None

    @property
    def state(self) -> ContactState | None:
        """The contact as read (None for a new one)."""
        return None if self.update is None else self.update.state

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of the fields the write changes (an existing contact's fields the
        source gives other values for; none with `lists_only`)."""
        return () if self.update is None else self.update.fields


def decide(
    contact: Contact,
    state: ContactState | None,
    *,
    backend: Backend,
    skip_removed: bool,
    fetched_at: float = 0.0,
    lists_only: bool = False,
    revive_deleted: bool = False,
    place: Place | None = None,
) -> Write | Outcome:
    """The write a fetched contact needs, or its outcome when it needs none.

    - no contact: create it with its fields (`created`);
    - opted out: `skipped`, reason `opted-out` (invariant I2: never changed);
    - Removed with `skip_removed`: `skipped`, reason `removed`;
    - deleted: `skipped`, reason `deleted`, unless `revive_deleted`;
    - the union adds nothing and no field changes: `unchanged`, no request;
    - otherwise the backend's write of the union of lists and the source's non-empty
      fields (`updated`); with `lists_only`, the lists only.

    The fields follow the bulk path's rule, so a row gives the same contact on both paths:
    a non-empty source value is written over the contact's, an empty one changes nothing.
    """
    rows = tuple(contact.rows)
    if state is None:
        return Write(contact, None, contact.targets)
    targets, before = contact.targets, tuple(sorted(state.list_ids))
    settled = settled_by_status(contact, state.ref, skip_removed, before, revive_deleted)
    if settled is not None:
        return settled
    fields = {} if lists_only else state.changed_fields(contact.fields)
    update = backend.add_lists(state, targets, fields)
    if update is None:
        return Outcome(contact.email, "unchanged", rows, "", (), "contact", targets, before)
    revives = state.ref.status in ("removed", "deleted")
    return Write(contact, update, update.added, fetched_at, revives, place)


def settled_by_status(
    contact: Contact,
    ref: ContactRef,
    skip_removed: bool,
    before: tuple[str, ...] | None = None,
    revive_deleted: bool = False,
) -> Outcome | None:
    """The `skipped` outcome of a contact its status settles without a write (opted out:
    I2; deleted, unless `revive_deleted`: a deleted contact stays deleted; Removed with
    `skip_removed`), else None. `before`: its lists, when it was read."""
    if ref.status == "opted_out":
        reason = "opted-out"
    elif ref.status == "deleted" and not revive_deleted:
        reason = "deleted"
    elif ref.status == "removed" and skip_removed:
        reason = "removed"
    else:
        return None
    rows = tuple(contact.rows)
    return Outcome(contact.email, "skipped", rows, reason, (), "contact", contact.targets, before)


async def merge_lists(
    receive_found: MemoryObjectReceiveStream[Found],
    send_writes: MemoryObjectSendStream[Write],
    *,
    backend: Backend,
    send_outcomes: MemoryObjectSendStream[Outcome],
    skip_removed: bool,
    stats: StageStats,
    limit: int,
    stop: anyio.Event | None = None,
    lists_only: bool = False,
    revive_deleted: bool = False,
    window: ReadWindow | None = None,
) -> None:
    """The stage: read each found contact's full entry and decide its write.

    `limit` workers, each holding at most one decided write until a put worker takes it
    (the queue to the put stage has no buffer), so an entry is read just before it is used.
    With a `window`, a contact is read only once it has a place there, which its put worker
    gives back once its write is sent: no more reads run ahead of their writes than the
    current rate lets write within `stale_after`. An opted-out contact (and a Removed one
    with `skip_removed`) is settled from its lookup, without reading it.
    """

    async def worker(
        receive: MemoryObjectReceiveStream[Found], send: MemoryObjectSendStream[Write]
    ) -> None:
        async with receive, send, send_outcomes.clone() as outcomes:
            # Not `streams.items`: the checkpoint of each receive lets the put worker just
            # handed a write take its turn at the governor before this worker's next read
            # (at a low rate, a read queued first would go stale before its write).
            async for found in receive:
                if stop is not None and stop.is_set():
                    continue
                stats.busy += 1
                try:
                    result = await _decide_found(
                        found, backend, skip_removed, lists_only, revive_deleted, window
                    )
                finally:
                    stats.busy -= 1
                stats.done += 1
                if isinstance(result, Write):
                    try:
                        await send_soon(send, result)
                    except BaseException:
                        if result.place is not None:
                            result.place.leave()  # not handed over: no put worker will
                        raise
                else:
                    await send_soon(outcomes, result)

    async with send_outcomes:
        await fan_out(worker, receive_found, send_writes, limit=limit)


async def _decide_found(
    found: Found,
    backend: Backend,
    skip_removed: bool,
    lists_only: bool = False,
    revive_deleted: bool = False,
    window: ReadWindow | None = None,
) -> Write | Outcome:
    """The write (or outcome) of a found contact. A contact read here takes a place in
    `window` first; the place goes with its write, or is left when it needs none."""
    contact, hit = found.contact, found.hit
    if hit is None:
        return decide(contact, None, backend=backend, skip_removed=skip_removed)
    ref = hit.ref if isinstance(hit, ContactState) else hit
    settled = settled_by_status(contact, ref, skip_removed, None, revive_deleted)
    if settled is not None:  # from the lookup, unread
        return settled
    place = None
    try:
        if isinstance(hit, ContactState):
            state = hit
        else:
            if window is not None:
                place = await window.enter()
            state = await backend.read(ref)
        result = decide(
            contact,
            state,
            backend=backend,
            skip_removed=skip_removed,
            fetched_at=anyio.current_time(),
            lists_only=lists_only,
            revive_deleted=revive_deleted,
            place=place,
        )
    except BaseException as exc:
        if place is not None:
            place.leave()
        if not isinstance(exc, Exception):
            raise
        return outcome_for_error(contact, exc, "contact")
    if place is not None and not isinstance(result, Write):
        place.leave()
    return result
