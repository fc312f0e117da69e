"""The bulk path's own lookups and reads (its check's witnesses, its status lookups): as many
in flight as the fetch stage's workers, whatever the put stage's, since every request in
flight holds a connection that then stays in the pool for the run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio

from engine.backend.protocol import Backend, Capabilities, ContactRef, ContactState
from engine.pipeline.bulk import BulkPath
from engine.pipeline.config import MigrationConfig, StageLimits
from engine.pipeline.models import Contact
from engine.pipeline.stats import RunStats


class CountingBackend:
    """Lookups of one email (as on V3) and reads, each answered after a moment; counts how
    many are in flight at once."""

    def __init__(self) -> None:
        self.capabilities = Capabilities(
            dialect="v3",
            lookup_batch=1,
            lookup_has_lists=True,
            bulk_threshold=25,
            bulk_max_rows=40_000,
            bulk_max_bytes=4_000_000,
            lists_per_contact=None,
            fields={},
        )
        self.requests: list[str] = []
        self.in_flight = self.peak = 0

    async def _answer(self, email: str) -> None:
        self.requests.append(email)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await anyio.sleep(0.01)
        finally:
            self.in_flight -= 1

    async def find(self, emails: Sequence[str], **_: Any) -> dict[str, ContactRef]:
        (email,) = emails
        await self._answer(email)
        return {email: ContactRef(f"id-{email}", email, "active")}

    async def read(self, ref: ContactRef) -> ContactState:
        await self._answer(ref.email)
        return ContactState(ref, ("other",))


@asynccontextmanager
async def bulk_path(backend: CountingBackend, *, fetch: int, put: int) -> AsyncIterator[BulkPath]:
    config = MigrationConfig(lists=("news",), limits=StageLimits(fetch=fetch, put=put))
    send, receive = anyio.create_memory_object_stream[Contact](1)
    with send, receive:
        yield BulkPath(cast(Backend, backend), config, RunStats(), send)


async def test_lookups_keep_at_most_the_fetch_limit_in_flight() -> None:
    """64 lookups of one email each (V3), with 64 put workers and 4 fetch workers: at most 4
    in flight at once, and every contact looked up once."""
    backend = CountingBackend()
    contacts = [Contact(f"known{n}@example.com", ("news",), {}, [n + 2]) for n in range(64)]
    async with bulk_path(backend, fetch=4, put=64) as path:
        with anyio.fail_after(10):
            results = await path._lookups(contacts)
    assert backend.peak == 4
    assert sorted(backend.requests) == sorted(c.email for c in contacts)
    assert len(results) == 64


async def test_reads_keep_at_most_the_fetch_limit_in_flight() -> None:
    """30 contacts read for a check, with 64 put workers and 3 fetch workers: at most 3 in
    flight at once, and each one read."""
    backend = CountingBackend()
    refs = [ContactRef(f"id-{n}", f"known{n}@example.com", "active") for n in range(30)]
    async with bulk_path(backend, fetch=3, put=64) as path:
        with anyio.fail_after(10):
            states = await path._read_all(refs)
    assert backend.peak == 3
    assert [s.ref for s in states] == refs
