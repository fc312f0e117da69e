"""Appends: existing contacts that only gain lists, added by id in batches.

On an API that adds known contacts to lists append-only (v3's `add_list_memberships`, up to
500 ids a request), the safest and cheapest write for an existing contact that gains lists
and keeps its fields is no write of the contact at all: its id is batched with others into
one append. No list can be dropped (the request names only lists to add), there is no
read→write window for another writer to fall into, and one request carries up to 500
contacts, so such a contact costs its lookup and a 500th of a request (plus polls).

A contact whose row also changes fields gets them first by a PUT that names no list (the API
keeps the lists it omits), so its lists still go by append and no list can be dropped even
then. A put worker hands the write over (`Appends.add`) and takes the next one; a batch goes out
when it is full, when its first write has waited `append_linger` seconds, or when the input
ends. Each write's intent is journaled before its batch is posted, as for a PUT, so a run
killed meanwhile leaves the truth (appends are idempotent: a resumed run appends again, or
finds the lists there). A batch whose activity does not vouch for every contact (failed,
errors, stuck, not submitted) sends each of its writes through the write path (a fresh read
when stale, then the PUT), which is safe to repeat; their outcomes say why.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from engine.backend.protocol import AppendingBackend
from engine.crashpoints import crash_point
from engine.errors import ApiError, ConnectionLostError, FatalApiError, QuotaExhaustedError
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


@dataclass(slots=True)
class _Group:
    started: float
    writes: list[Write] = field(default_factory=list)


class Appends:
    """The append batches of one run.

    Args:
        backend: an API with appends (`AppendingBackend`).
        waiter: the bulk path, whose polling (backoff, stall and timeout, progress) the
            append activities share.
        send_write: the write path, for the contacts an append cannot vouch for.
        linger: see `MigrationConfig.append_linger`.
        limit: append activities in flight at once.
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
        self._slots = anyio.Semaphore(limit)
        self._writers = anyio.CapacityLimiter(writers)
        self._intend = intend
        self._stop = stop
        self._groups: dict[tuple[str, ...], _Group] = {}
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
        """Batch a write (`takes` it); waits only when `limit` batches are in flight."""
        await self._ready.wait()
        key = write.contact.targets
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(anyio.current_time())
        group.writes.append(write)
        if len(group.writes) >= self._max:
            del self._groups[key]
            await self._start(group.writes)

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
        for key, group in list(self._groups.items()):
            if older_than is None or now - group.started >= older_than:
                del self._groups[key]
                await self._start(group.writes)

    async def _start(self, writes: list[Write]) -> None:
        if self._stop is not None and self._stop.is_set():
            return  # not posted: a resumed run does these contacts again
        assert self._tg is not None
        await self._slots.acquire()
        self._tg.start_soon(self._one, writes)

    async def _one(self, writes: list[Write]) -> None:
        try:
            outcomes = await self._append(writes)
        except Stopping:
            return  # their intents are journaled: a resumed run finds what they did
        finally:
            self._slots.release()
        assert self._send_outcomes is not None
        for outcome in outcomes:
            await self._send_outcomes.send(outcome)

    async def _append(self, writes: list[Write]) -> list[Outcome]:
        """Post one append and settle it; what it cannot vouch for goes the write path."""
        targets = writes[0].contact.targets
        try:
            if self._intend is not None:  # one commit for the batch
                await self._intend(
                    [
                        (w.contact.email, "updated", w.update.state.list_ids, w.added)
                        for w in writes
                        if w.update is not None
                    ]
                )
            ids = [w.update.state.ref.id for w in writes if w.update is not None]
            activity = await self.backend.append(ids, targets)
            self._waiter.stats.activities += 1
            crash_point("append-submitted")
            finished = await self._waiter.wait_for(activity, rows=len(writes))
        except (FatalApiError, ConnectionLostError, QuotaExhaustedError, Stopping):
            raise
        except (ApiError, TimeoutError) as exc:
            return await self._by_write(writes, f"the append was not confirmed ({exc})")
        if self.backend.appended_all(finished):
            log.info("append %s added %d contacts", finished.id, len(writes))
            return [updated_outcome(w, note="appended by id") for w in writes]
        return await self._by_write(
            writes, f"append {finished.id} ended {finished.status} without adding every contact"
        )

    async def _by_write(self, writes: list[Write], why: str) -> list[Outcome]:
        log.warning("%d contacts go through the write path: %s", len(writes), why)
        outcomes: list[Outcome] = []

        async def one(write: Write) -> None:
            async with self._writers:
                outcome = await self._send_write(write)
            outcomes.append(dataclasses.replace(outcome, note=join_notes(outcome.note, why)))

        async with anyio.create_task_group() as tg:
            for write in writes:
                tg.start_soon(one, write)
        return outcomes
