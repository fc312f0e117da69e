"""The fetch stage: lookups as wide as the API takes, as many in flight as the limit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from engine.backend.protocol import Backend, Capabilities, ContactRef
from engine.errors import ServerError
from engine.pipeline.fetch import Found, fetch_contacts
from engine.pipeline.models import Contact, Outcome
from engine.pipeline.stats import StageStats


class LookupBackend:
    """Lookups of `batch` emails a request; an email starting with `known` is found.
    Each lookup waits until `wide` are in flight (or a moment has passed), so the test sees
    how many the stage keeps in flight."""

    def __init__(self, batch: int, *, wide: int = 1, fail: bool = False) -> None:
        self.capabilities = Capabilities(
            dialect="v3" if batch == 1 else "v1",
            lookup_batch=batch,
            lookup_has_lists=batch == 1,
            bulk_threshold=25,
            bulk_max_rows=40_000,
            bulk_max_bytes=4_000_000,
            lists_per_contact=None,
            fields={},
        )
        self.wide, self.fail = wide, fail
        self.requests: list[list[str]] = []
        self.in_flight = self.peak = 0
        self._wide = anyio.Event()

    async def find(self, emails: Sequence[str], **_: Any) -> dict[str, ContactRef]:
        self.requests.append(list(emails))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.in_flight >= self.wide:
            self._wide.set()
        try:
            with anyio.move_on_after(0.5):
                await self._wide.wait()
            if self.fail:
                raise ServerError("503 busy", status=503)
            return {e: ContactRef(f"id-{e}", e, "active") for e in emails if e[:5] == "known"}
        finally:
            self.in_flight -= 1


async def run_fetch(
    backend: LookupBackend, emails: list[str], *, limit: int, stop: anyio.Event | None = None
) -> tuple[list[Found], list[Outcome]]:
    """Feed `emails` through the stage; what it found and the outcomes it gave."""
    send_contacts, receive_contacts = anyio.create_memory_object_stream[Contact](len(emails))
    send_found, receive_found = anyio.create_memory_object_stream[Found](len(emails))
    send_outcomes, receive_outcomes = anyio.create_memory_object_stream[Outcome](len(emails))
    for email in emails:
        send_contacts.send_nowait(Contact(email, ("news",), {}, [2]))
    send_contacts.close()
    with anyio.fail_after(10):
        await fetch_contacts(
            receive_contacts,
            send_found,
            backend=cast(Backend, backend),
            send_outcomes=send_outcomes,
            stats=StageStats(),
            limit=limit,
            stop=stop,
        )
    return drain(receive_found), drain(receive_outcomes)


def drain(stream: MemoryObjectReceiveStream[Any]) -> list[Any]:
    with stream:
        return [stream.receive_nowait() for _ in range(stream.statistics().current_buffer_used)]


async def test_one_email_a_lookup_keeps_the_limit_in_flight_and_finds_each_contact_once() -> None:
    """With one email a lookup (V3), `limit` lookups are in flight at once and each contact
    is looked up once, found or not."""
    backend = LookupBackend(1, wide=8)
    emails = [f"known{n}@example.com" for n in range(30)] + [
        f"new{n}@example.com" for n in range(10)
    ]
    found, outcomes = await run_fetch(backend, emails, limit=8)
    assert backend.peak == 8
    assert sorted(e for (e,) in backend.requests) == sorted(emails)
    assert outcomes == []
    hits = {f.contact.email: f.hit for f in found}
    assert sorted(hits) == sorted(emails)
    assert all((hits[e] is None) == e.startswith("new") for e in emails)


async def test_a_batch_lookup_searches_up_to_its_width_at_a_time() -> None:
    """With 50 emails a lookup (v1), 120 contacts take three searches of 50, 50 and 20."""
    backend = LookupBackend(50)
    emails = [f"known{n}@example.com" for n in range(120)]
    found, _ = await run_fetch(backend, emails, limit=4)
    assert sorted(len(r) for r in backend.requests) == [20, 50, 50]
    assert len(found) == 120


async def test_once_stopped_contacts_are_drained_without_a_lookup() -> None:
    """After `stop`, no lookup is sent: the contacts are left for a resumed run."""
    stop = anyio.Event()
    stop.set()
    for width in (1, 50):
        backend = LookupBackend(width)
        found, outcomes = await run_fetch(backend, ["known@example.com"] * 3, limit=4, stop=stop)
        assert backend.requests == []
        assert found == []
        assert outcomes == []


async def test_a_failed_lookup_is_each_of_its_contacts_outcome() -> None:
    """A lookup that fails for good gives each of its contacts a retryable `failed`."""
    backend = LookupBackend(1, fail=True)
    found, outcomes = await run_fetch(backend, ["a@example.com", "b@example.com"], limit=2)
    assert found == []
    assert sorted(o.email for o in outcomes) == ["a@example.com", "b@example.com"]
    assert all(o.kind == "failed" and o.retryable for o in outcomes)
