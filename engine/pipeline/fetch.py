"""The fetch stage: look each contact up, as many emails a request as the backend's lookup
takes (`Capabilities.lookup_batch`: 50 on v1).

Only the search happens here; the full entry is read by the merge stage right before the
union is built, so the GET→PUT window (in which another writer's change would be lost,
the API having no ETags) stays as short as the put stage allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.backend.protocol import Backend, ContactRef, ContactState
from engine.crashpoints import crash_point
from engine.pipeline.models import Contact, Outcome
from engine.pipeline.stats import StageStats, outcome_for_error
from engine.pipeline.streams import items, send_soon

__all__ = ["Found", "fetch_contacts", "receive_batch"]


@dataclass(frozen=True, slots=True)
class Found:
    """A contact with what the lookup said of it.

    Attributes:
        contact: what to do.
        hit: who it is and its status (with its lists, when the lookup gives them); None
            when no contact has this email.
    """

    contact: Contact
    hit: ContactRef | ContactState | None


async def receive_batch(
    receive: MemoryObjectReceiveStream[Contact], size: int, *, linger: float = 0.2
) -> list[Contact]:
    """Wait for one item, then up to `linger` seconds for more, up to `size`; [] at the end.

    A search costs one request for 1 email or for 50, so a short wait for a full batch
    saves requests whenever the queue fills more slowly than the searches drain it.
    """
    try:
        batch = [await receive.receive()]
    except anyio.EndOfStream:
        return []
    # Polled, not awaited under a deadline: a receive cancelled by a timeout can drop the
    # item a sender just handed over, and every contact must reach an outcome (I3).
    deadline = anyio.current_time() + linger
    while len(batch) < size:
        try:
            batch.append(receive.receive_nowait())
        except anyio.WouldBlock:
            if anyio.current_time() >= deadline:
                break
            await anyio.sleep(linger / 10)
        except anyio.EndOfStream:
            break
    return batch


async def fetch_contacts(
    receive_contacts: MemoryObjectReceiveStream[Contact],
    send_found: MemoryObjectSendStream[Found],
    *,
    backend: Backend,
    send_outcomes: MemoryObjectSendStream[Outcome],
    stats: StageStats,
    limit: int,
    stop: anyio.Event | None = None,
) -> None:
    """The stage: one task forms batches of up to `lookup_batch` emails, `limit` lookups in
    flight.

    Batching in a single task keeps the searches full: idle workers each taking what is
    queued would search a few emails at a time whenever the queue fills slowly. With one
    email a lookup there is nothing to batch: `limit` workers each take the next contact.
    Once `stop` is set, contacts are drained without a request: a resumed run redoes them.
    """
    slots = anyio.Semaphore(limit)

    async def work(batch: list[Contact]) -> None:
        stats.busy += len(batch)
        try:
            await _search(batch, backend, send_found, send_outcomes)
        finally:
            stats.busy -= len(batch)
            stats.done += len(batch)
            slots.release()

    async def one_at_a_time() -> None:
        async for contact in items(receive_contacts):
            if stop is not None and stop.is_set():
                continue
            stats.busy += 1
            try:
                await _search([contact], backend, send_found, send_outcomes)
            finally:
                stats.busy -= 1
                stats.done += 1

    async with receive_contacts, send_found, send_outcomes, anyio.create_task_group() as tg:
        size = backend.capabilities.lookup_batch
        if size == 1:
            # One email a lookup (V3): nothing to batch, so `limit` workers each look up
            # the next contact, instead of a task (and a semaphore turn) per contact.
            for _ in range(limit):
                tg.start_soon(one_at_a_time)
            return
        while batch := await receive_batch(receive_contacts, size):
            if stop is not None and stop.is_set():
                continue
            await slots.acquire()
            tg.start_soon(work, batch)


async def _search(
    batch: list[Contact],
    backend: Backend,
    send_found: MemoryObjectSendStream[Found],
    send_outcomes: MemoryObjectSendStream[Outcome],
) -> None:
    try:
        found = await backend.find([c.email for c in batch])
        crash_point("search")
    except Exception as exc:
        for contact in batch:
            await send_soon(send_outcomes, outcome_for_error(contact, exc, "contact"))
        return
    for contact in batch:
        await send_soon(send_found, Found(contact, found.get(contact.email)))
