"""The plan stage: rows to contacts, contacts to batches, batches to a path.

Contacts are grouped by their target list set. A batch is flushed when it reaches the
activity caps (rows or estimated bytes), when the input ends, when it has waited `linger`
seconds (streaming sources), or when the planner holds `max_pending` contacts (the largest
batch goes first, so memory stays bounded). A flushed batch of at least `bulk_threshold`
contacts goes to the bulk path, a smaller one contact by contact.

The same email is never in two in-flight writes (invariant I5): a row whose email is
waiting in a batch is coalesced into it; a row whose email is already in flight is held
until the record stage reports that email finished, then planned again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectSendStream

from engine.backend.protocol import ListInfo
from engine.pipeline.config import MigrationConfig
from engine.pipeline.models import Batch, Contact, Outcome, Rejected, SourceRow
from engine.pipeline.streams import send_soon

__all__ = ["Planner", "estimate_bytes"]


def estimate_bytes(contact: Contact) -> int:
    """An upper bound of the contact's share of an encoded activity body."""
    # Form encoding triples a byte at worst (%HH); a comma, quotes and the line break add 4.
    fields = contact.fields
    return 3 * (len(contact.email) + sum(map(len, fields.values())) + 4 * len(fields)) + 8


class _Pending:
    __slots__ = ("bytes", "contacts", "key", "since")

    def __init__(self, key: frozenset[str], now: float) -> None:
        self.key = key  # one set per batch: each contact's `_where` entry shares it
        self.contacts: dict[str, Contact] = {}
        self.bytes = 0
        self.since = now


class Planner:
    """Turns rows into per-contact work and bulk batches.

    Args:
        config: the migration's configuration.
        lists_by_name: every target list name (from `config.lists` and the lists column)
            resolved to its list.
        stop: once set, batches are dropped instead of flushed (the run is stopping).
        coalesced: the rows come with their duplicates already merged (a file source): with
            bulk off, a contact then goes on at once instead of waiting in a batch.
    """

    def __init__(
        self,
        config: MigrationConfig,
        lists_by_name: Mapping[str, ListInfo],
        *,
        stop: anyio.Event | None = None,
        coalesced: bool = False,
    ) -> None:
        self.config = config
        self._stop = stop
        #: Bulk off and the rows coalesced: each contact goes on at once, not in a batch.
        self._direct = config.bulk_threshold is None and coalesced
        self.lists_by_name = dict(lists_by_name)
        self._common = tuple(dict.fromkeys(lists_by_name[n].id for n in config.lists))
        self._targets: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._keys: dict[tuple[str, ...], frozenset[str]] = {}  # targets -> their set
        self._pending: dict[frozenset[str], _Pending] = {}
        self._where: dict[str, frozenset[str]] = {}  # email -> key of its pending batch
        self._held = 0
        self._in_flight: set[str] = set()
        self._deferred: dict[str, Contact] = {}
        self._send_released, self._receive_released = anyio.create_memory_object_stream[str](
            math.inf
        )
        self._idle = anyio.Event()
        # Held for a whole flush. The end of the run takes it before cancelling the helper
        # loops, so a flush is never cut short: a batch already taken out of `_pending` and
        # half sent would lose its other contacts (invariant I3).
        self._flush_lock = anyio.Lock()

    @property
    def pending(self) -> int:
        """Contacts waiting in unflushed batches."""
        return self._held

    def done(self, email: str) -> None:
        """Called by the record stage when an email's write is finished."""
        if email in self._in_flight:
            self._in_flight.discard(email)
            if email in self._deferred:
                self._send_released.send_nowait(email)

    def contact(self, row: SourceRow) -> Contact | Rejected:
        """The contact of a row with its targets resolved, or a rejection."""
        targets = self._targets.get(row.lists)
        if targets is None:
            ids = dict.fromkeys(self._common)
            for name in row.lists:
                found = self.lists_by_name.get(name)
                if found is None:
                    return Rejected(row.lines[0], row.email, f"unknown list {name!r}")
                ids[found.id] = None
            targets = tuple(ids)
            if len(self._targets) < 10_000:  # one shared tuple per list set (memory)
                self._targets[row.lists] = targets
        if not targets:
            return Rejected(row.lines[0], row.email, "no target list for this row")
        return Contact(row.email, targets, row.fields, list(row.lines))

    async def run(
        self,
        receive_rows: ObjectReceiveStream[list[SourceRow | Rejected]],
        send_contacts: ObjectSendStream[Contact],
        send_batches: ObjectSendStream[Batch],
        send_outcomes: ObjectSendStream[Outcome],
    ) -> None:
        """The stage: consume rows (in lists, as the read stage passes them on) until the
        input ends and nothing is held back."""
        # The release channel closes with the stage: an unclosed memory stream is a
        # ResourceWarning when the planner is collected.
        async with receive_rows, send_contacts, send_batches, send_outcomes:
            self._out = (send_contacts, send_batches)
            with self._send_released, self._receive_released:
                await self._consume(receive_rows, send_outcomes)

    async def _consume(
        self,
        receive_rows: ObjectReceiveStream[list[SourceRow | Rejected]],
        send_outcomes: ObjectSendStream[Outcome],
    ) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._release_loop)
            if self.config.linger > 0:
                tg.start_soon(self._linger_loop)
            async for items in receive_rows:
                for item in items:
                    if isinstance(item, Rejected):
                        await send_outcomes.send(_rejected(item))
                        continue
                    contact = self.contact(item)
                    if isinstance(contact, Rejected):
                        await send_outcomes.send(_rejected(contact))
                    elif self._direct:
                        await self._add(contact)
                    elif (key := self._hold(contact)) is not None:
                        await self._flush(key)
            await self._flush_all()
            while self._deferred:
                self._idle = anyio.Event()
                await self._idle.wait()
            async with self._flush_lock:
                tg.cancel_scope.cancel()

    async def _release_loop(self) -> None:
        async for email in self._receive_released:
            contact = self._deferred.pop(email, None)
            if contact is not None:
                await self._add(contact)
                await self._flush_all()
            if not self._deferred:
                self._idle.set()

    async def _linger_loop(self) -> None:
        while True:
            await anyio.sleep(self.config.linger / 2)
            now = anyio.current_time()
            for key in [k for k, p in self._pending.items() if now - p.since >= self.config.linger]:
                await self._flush(key)

    async def _add(self, contact: Contact) -> None:
        if self._direct and contact.email not in self._in_flight:
            await self._send_direct(contact)
            return
        key = self._hold(contact)
        if key is not None:
            await self._flush(key)

    async def _send_direct(self, contact: Contact) -> None:
        """Bulk off and the rows coalesced: nothing to wait for, the contact goes on now."""
        send = self._out[0]
        stopping = self._stop is not None and self._stop.is_set()
        if (
            isinstance(send, MemoryObjectSendStream)
            and not stopping
            and not self._flush_lock.locked()
        ):
            # Handed over without a wait: no cancellation can come between taking it in
            # flight and sending it (what the lock is for), and no checkpoint.
            try:
                send.send_nowait(contact)
            except anyio.WouldBlock:
                pass
            else:
                self._in_flight.add(contact.email)
                return
        async with self._flush_lock:
            if self._stop is None or not self._stop.is_set():
                self._in_flight.add(contact.email)
                await send_soon(send, contact)

    def _hold(self, contact: Contact) -> frozenset[str] | None:
        """Hold the contact back while its email is in flight, or put it in its target
        set's batch; returns the key of a batch to flush now (full, or the largest when
        too many contacts are held), if any. No await: the planner's loop calls it for
        every contact."""
        if contact.email in self._in_flight:
            held = self._deferred.get(contact.email)
            if held is None:
                self._deferred[contact.email] = contact
            else:
                held.absorb(contact)
            return None
        key = self._keys.get(contact.targets)
        if key is None:
            key = contact.target_set
            if len(self._keys) < 10_000:  # one set per target tuple (`contact` shares them)
                self._keys[contact.targets] = key
        other_key = self._where.get(contact.email)
        if other_key is not None:  # a duplicate still waiting in a batch: coalesce (I5)
            other = self._pending[other_key]
            waiting = other.contacts[contact.email]
            waiting.absorb(contact)
            if waiting.target_set == other_key:
                return None
            del other.contacts[contact.email]  # its target set grew: move it
            self._held -= 1
            contact, key = waiting, waiting.target_set
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(key, anyio.current_time())
        pending.contacts[contact.email] = contact
        self._where[contact.email] = pending.key
        pending.bytes += estimate_bytes(contact)
        self._held += 1
        if (
            len(pending.contacts) >= self.config.max_rows
            or pending.bytes >= self.config.max_bytes * 0.9
        ):
            return key
        if self._held >= self.config.max_pending:
            return max(self._pending, key=lambda k: len(self._pending[k].contacts))
        return None

    async def _flush_all(self) -> None:
        for key in list(self._pending):
            await self._flush(key)

    async def _flush(self, key: frozenset[str]) -> None:
        async with self._flush_lock:
            await self._flush_unlocked(key)

    async def _flush_unlocked(self, key: frozenset[str]) -> None:
        pending = self._pending.pop(key, None)
        if pending is None or not pending.contacts:
            return
        contacts = tuple(pending.contacts.values())
        self._held -= len(contacts)
        for email in pending.contacts:
            del self._where[email]
        if self._stop is not None and self._stop.is_set():
            return  # stopping: not sent, so a resumed run plans them again
        self._in_flight.update(pending.contacts)
        del pending
        send_contacts, send_batches = self._out
        threshold = self.config.bulk_threshold
        if threshold is not None and len(contacts) >= threshold:
            batch = Batch(contacts, contacts[0].targets)
            del contacts  # it waits for the bulk stage packed, not as objects
            await send_batches.send(batch)
        else:
            for contact in contacts:
                await send_soon(send_contacts, contact)


def _rejected(item: Rejected) -> Outcome:
    return Outcome(item.email, "rejected", (item.line,), reason=item.reason)
