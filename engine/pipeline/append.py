"""Appends: existing contacts that only gain lists, added by id in batches, one list a batch.

On an API that adds known contacts to lists append-only (v3's `add_list_memberships`, up to
500 ids a request), the safest and cheapest write for an existing contact that gains lists
and keeps its fields is no write of the contact at all: its id is batched with others into
one append. No list can be dropped (the request names only lists to add), there is no
read→write window for another writer to fall into, and one request carries up to 500
contacts, so such a contact costs its lookup and a 500th of a request (plus polls).

A batch is per list, not per set of lists: a contact gaining two lists is in two batches,
and its outcome comes when both are settled. Rows naming many different sets of lists (a
CRM export) then still fill batches of 500, where batches per exact set would go out
nearly empty.

A contact whose row also changes fields gets them first by a PUT that names no list (the API
keeps the lists it omits), so its lists still go by append and no list can be dropped even
then. A put worker hands the write over (`Appends.add`) and takes the next one; a batch goes out
when it is full, when its first write has waited `append_linger` seconds, or when the input
ends. Each write's intent is journaled before the first batch holding it is posted, as for a
PUT, so a run killed meanwhile leaves the truth (appends are idempotent: a resumed run appends
again, or finds the lists there). A finished append is settled by reading its contacts back
(`AppendingBackend.appended`), not from its counters alone; a contact it does not vouch for
(failed, skipped, stuck, not submitted) goes through the write path (a fresh read when stale,
then the PUT), which is safe to repeat; its outcome says why.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from engine.backend.protocol import AppendingBackend, BulkActivity, ContactState, ListWrite
from engine.crashpoints import crash_point
from engine.errors import ApiError, ConnectionLostError, FatalApiError, QuotaExhaustedError
from engine.groupcommit import GroupCommit
from engine.pipeline.bulk import BulkPath, Stopping
from engine.pipeline.merge import Write
from engine.pipeline.models import Outcome, join_notes
from engine.pipeline.put import updated_outcome

__all__ = ["Appends"]

log = logging.getLogger("engine.append")

#: Sends one write through the write path (its PUT) and returns its outcome.
SendWrite = Callable[[Write], Awaitable[Outcome]]
#: The journal's `intend_many`: (email, kind, lists before, lists added) of each write about
#: to go, committed at once.
IntendMany = Callable[[Iterable[tuple[str, str, Iterable[str], Iterable[str]]]], Awaitable[None]]


@dataclass(slots=True, eq=False)
class _Pending:
    """A write whose lists go by append: in one batch per list it gains."""

    write: Write
    waiting: int  # its batches not settled yet
    intended: bool = False  # its intent is journaled
    why: str = ""  # why a batch of it was not vouched for ("" while all were)
    appended: list[str] = field(default_factory=list)  # lists its settled batches added


@dataclass(slots=True)
class _Group:
    started: float
    pending: list[_Pending] = field(default_factory=list)


class Appends:
    """The append batches of one run.

    Args:
        backend: an API with appends (`AppendingBackend`).
        waiter: the bulk path, whose polling (backoff, stall and timeout, progress) the
            append activities share.
        send_write: the write path, for the contacts an append cannot vouch for; it must
            read a contact again when its read is stale (they are given as stale).
        linger: see `MigrationConfig.append_linger`.
        limit: append activities in flight at once (posted and not finished on the server;
            as many again may be waiting for their read-back).
        writers: writes in flight at once when a batch goes the write path.
        intend: the journal's record of the writes about to go (one commit a batch).
        stop: set when the run is stopping: nothing more is posted.
    """

    def __init__(
        self,
        backend: AppendingBackend,
        waiter: BulkPath,
        send_write: SendWrite,
        *,
        linger: float,
        limit: int,
        writers: int = 8,
        intend: IntendMany | None = None,
        stop: anyio.Event | None = None,
    ) -> None:
        self.backend = backend
        self._waiter = waiter
        self._send_write = send_write
        self._max = backend.capabilities.append_max
        self._linger = linger
        self._slots = anyio.Semaphore(limit)  # activities running on the server
        self._unsettled = anyio.Semaphore(2 * limit)  # and those not read back yet
        self._writers = anyio.CapacityLimiter(writers)
        self._intend = intend
        self._stop = stop
        self._groups: dict[str, _Group] = {}  # list id -> its open batch
        #: one read-back of a list at a time, of every append to it that finished meanwhile
        self._read_back: GroupCommit[str, tuple[BulkActivity, Sequence[str]], set[str]]
        self._read_back = GroupCommit(lambda list_id, done: backend.appended(done, (list_id,)))
        self._intending = anyio.Lock()
        self._ready = anyio.Event()
        self._closed = anyio.Event()
        self._tg: TaskGroup | None = None
        self._send_outcomes: MemoryObjectSendStream[Outcome] | None = None

    @staticmethod
    def takes(write: Write) -> bool:
        """Whether a write goes this way: an existing contact (not brought back from
        Removed or deleted, which only its PUT does) gaining lists or fields. The put
        stage writes its fields first by a PUT that names no list (`_write_fields`), and
        hands its lists here."""
        return (
            write.update is not None and not write.reactivates and bool(write.added or write.fields)
        )

    async def add(self, write: Write) -> None:
        """Batch a write (`takes` it, and it adds lists): in the batch of each list it
        gains; waits only when `limit` batches are in flight."""
        await self._ready.wait()
        pending = _Pending(_slim(write), len(write.added))
        for list_id in write.added:
            group = self._groups.get(list_id)
            if group is None:
                group = self._groups[list_id] = _Group(anyio.current_time())
            group.pending.append(pending)
            if len(group.pending) >= self._max:
                del self._groups[list_id]
                await self._start(list_id, group.pending)

    def close(self) -> None:
        """No more writes: the batches still open go out, and `run` ends after them."""
        self._closed.set()

    async def run(self, send_outcomes: MemoryObjectSendStream[Outcome]) -> None:
        """Send the batches and their outcomes until `close` and every batch is settled."""
        async with send_outcomes, anyio.create_task_group() as tg:
            self._tg, self._send_outcomes = tg, send_outcomes
            self._ready.set()
            while not self._closed.is_set():
                with anyio.move_on_after(min(1.0, self._linger) or 0.05):
                    await self._closed.wait()
                await self._flush(older_than=self._linger)
            await self._flush(older_than=None)

    async def _flush(self, *, older_than: float | None) -> None:
        now = anyio.current_time()
        for list_id, group in list(self._groups.items()):
            if older_than is None or now - group.started >= older_than:
                del self._groups[list_id]
                await self._start(list_id, group.pending)

    async def _start(self, list_id: str, batch: list[_Pending]) -> None:
        if self._stop is not None and self._stop.is_set():
            return  # not posted: a resumed run does these contacts again
        assert self._tg is not None
        await self._unsettled.acquire()
        try:
            await self._slots.acquire()
        except BaseException:
            self._unsettled.release()
            raise
        self._tg.start_soon(self._one, list_id, batch)

    async def _one(self, list_id: str, batch: list[_Pending]) -> None:
        running = True

        def finished() -> None:
            # The activity is done on the server: the next append may go while this one
            # is read back (a read-back waits for the one before it on its list).
            nonlocal running
            if running:
                running = False
                self._slots.release()

        try:
            settled = await self._append(list_id, batch, finished)
        except Stopping:
            return  # their intents are journaled: a resumed run finds what they did
        finally:
            finished()
            self._unsettled.release()
        # A write's outcome comes when the last of its batches is settled.
        done: list[_Pending] = []
        for pending, why in settled:
            pending.why = pending.why or why
            if not why:
                pending.appended.append(list_id)
            pending.waiting -= 1
            if pending.waiting == 0:
                done.append(pending)
        outcomes = [
            updated_outcome(p.write, note="appended by id") for p in done if not p.why
        ] + await self._by_write([p for p in done if p.why])
        assert self._send_outcomes is not None
        for outcome in outcomes:
            await self._send_outcomes.send(outcome)

    async def _append(
        self, list_id: str, batch: list[_Pending], finished: Callable[[], None]
    ) -> list[tuple[_Pending, str]]:
        """Post one append and settle it: each write of the batch with "" when the server
        vouches for it, else why not. `finished` is called once the activity has ended."""
        try:
            await self._journal(batch)
            ids = [p.write.update.state.ref.id for p in batch if p.write.update is not None]
            activity = await self.backend.append(ids, (list_id,))
            self._waiter.stats.activities += 1
            crash_point("append-submitted")
            done = await self._waiter.wait_for(activity, rows=len(batch))
            finished()
            # read back with the appends to the list that finished meanwhile (the same
            # window of time holds their contacts too)
            vouched = await self._read_back(list_id, (done, ids))
        except (FatalApiError, ConnectionLostError, QuotaExhaustedError, Stopping):
            raise
        except (ApiError, TimeoutError) as exc:
            return [(p, f"the append was not confirmed ({exc})") for p in batch]
        log.info("append %s added %d of %d contacts", done.id, len(vouched), len(batch))
        why = f"append {done.id} ({done.status}) did not add it"
        return [
            (
                p,
                ""
                if p.write.update is not None and p.write.update.state.ref.id in vouched
                else why,
            )
            for p in batch
        ]

    async def _journal(self, batch: list[_Pending]) -> None:
        """Journal the intents of the batch's writes not journaled yet, in one commit, before
        it is posted; one batch at a time, so a write in two batches is journaled before
        either goes."""
        if self._intend is None:
            return
        async with self._intending:
            fresh = [p for p in batch if not p.intended and p.write.update is not None]
            if fresh:
                await self._intend(
                    [
                        (p.write.contact.email, "updated", p.write.state.list_ids, p.write.added)
                        for p in fresh
                        if p.write.state is not None
                    ]
                )
                for p in fresh:
                    p.intended = True

    async def _by_write(self, pending: list[_Pending]) -> list[Outcome]:
        """The write path for writes an append did not vouch for, each noting why."""
        if not pending:
            return []
        log.warning("%d contacts go through the write path: %s", len(pending), pending[0].why)
        outcomes: list[Outcome] = []

        async def one(p: _Pending) -> None:
            # Its read no longer counts (the server did not do what it showed was needed):
            # the write path reads it again before writing anything.
            write = dataclasses.replace(p.write, fetched_at=-math.inf)
            async with self._writers:
                outcome = await self._send_write(write)
            outcomes.append(_with_appended(outcome, p))

        async with anyio.create_task_group() as tg:
            for p in pending:
                tg.start_soon(one, p)
        return outcomes


def _slim(write: Write) -> Write:
    """The write as its append batches hold it: who the contact is, its lists and fields as
    read and what it gains, without the document read and the PUT body built from it. An
    append sends neither, and thousands of writes may wait for theirs. A contact an append
    does not vouch for is read again by the write path: with no version to compare, that
    read is never taken for unchanged, and its write is built from it."""
    update = write.update
    if update is None:
        return write
    state = ContactState(update.state.ref, update.state.lists, update.state.fields)
    return dataclasses.replace(write, update=ListWrite(state, update.added, update.fields))


def _with_appended(outcome: Outcome, pending: _Pending) -> Outcome:
    """The write path's outcome of a contact whose other batches added lists: what the run
    did to it from the read it started from (the write path's own read already shows the
    lists those batches added, which the contact did not have before)."""
    note = join_notes(outcome.note, pending.why)
    state = pending.write.state
    if not pending.appended or state is None:
        return dataclasses.replace(outcome, note=note)
    kind = "updated" if outcome.kind == "unchanged" else outcome.kind
    added = tuple(dict.fromkeys((*pending.appended, *outcome.lists_added)))
    before = tuple(sorted(state.list_ids))
    return dataclasses.replace(
        outcome, kind=kind, lists_added=added, lists_before=before, note=note
    )
