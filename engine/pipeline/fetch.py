"""The fetch stage: find each contact (50 emails a search), then GET its full entry."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.api.client import SEARCH_BATCH, Account
from engine.api.records import ContactEntry
from engine.crashpoints import crash_point
from engine.pipeline.models import Contact, Outcome
from engine.pipeline.stats import StageStats, outcome_for_error

__all__ = ["Fetched", "fetch_contacts", "receive_batch"]


@dataclass(frozen=True, slots=True)
class Fetched:
    """A contact with what the API has for it.

    Attributes:
        contact: what to do.
        entry: the full entry as fetched; None when no contact has this email.
        at: when the entry was read (`anyio.current_time()`), to know how stale it is.
    """

    contact: Contact
    entry: ContactEntry | None
    at: float = 0.0


async def receive_batch(
    receive: MemoryObjectReceiveStream[Contact], size: int, *, linger: float = 0.02
) -> list[Contact]:
    """Wait for one item, then up to `linger` seconds for more, up to `size`; [] at the end.

    A search costs one request for 1 email or for 50, so a short wait for a full batch
    saves requests whenever the queue fills more slowly than the workers drain it.
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
    send_fetched: MemoryObjectSendStream[Fetched],
    *,
    account: Account,
    send_outcomes: MemoryObjectSendStream[Outcome],
    stats: StageStats,
    limit: int,
    stop: anyio.Event | None = None,
) -> None:
    """The stage: one task forms batches of up to 50 emails, `limit` batches in flight.

    Once `stop` is set, batches are drained without a request: a resumed run redoes them.

    Batching in a single task keeps the searches full: idle workers each taking what is
    queued would search a few emails at a time whenever the queue fills slowly.
    """
    slots = anyio.Semaphore(limit)

    async def work(batch: list[Contact]) -> None:
        stats.busy += len(batch)
        try:
            await _fetch_batch(batch, account, send_fetched, send_outcomes)
        finally:
            stats.busy -= len(batch)
            stats.done += len(batch)
            slots.release()

    async with receive_contacts, send_fetched, send_outcomes, anyio.create_task_group() as tg:
        while batch := await receive_batch(receive_contacts, SEARCH_BATCH):
            await slots.acquire()
            tg.start_soon(work, batch)


async def _fetch_batch(
    batch: list[Contact],
    account: Account,
    send_fetched: MemoryObjectSendStream[Fetched],
    send_outcomes: MemoryObjectSendStream[Outcome],
) -> None:
    try:
        found = await account.search_contacts([c.email for c in batch])
        crash_point("search")
    except Exception as exc:
        for contact in batch:
            await send_outcomes.send(outcome_for_error(contact, exc, "contact"))
        return

    async def get(contact: Contact, key: str) -> None:
        try:
            entry = await account.get_contact(key)
        except Exception as exc:
            await send_outcomes.send(outcome_for_error(contact, exc, "contact"))
            return
        await send_fetched.send(Fetched(contact, entry, anyio.current_time()))

    async with anyio.create_task_group() as tg:
        for contact in batch:
            summary = found.get(contact.email)
            if summary is None:
                await send_fetched.send(Fetched(contact, None))
            else:
                tg.start_soon(get, contact, summary.key)
