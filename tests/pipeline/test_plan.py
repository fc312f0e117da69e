"""The planner alone, between memory streams: batching, routing, caps, and invariant I5."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from engine.backend import V1_CAPABILITIES
from engine.backend.protocol import ListInfo
from engine.backend.v1.activities import encode_add_contacts
from engine.pipeline.config import MigrationConfig
from engine.pipeline.models import Batch, Contact, Outcome, Rejected, SourceRow
from engine.pipeline.plan import Planner, estimate_bytes
from engine.pipeline.record import ReportWriter, record_outcomes
from engine.pipeline.stats import RunStats

LISTS = {name: ListInfo(key, name) for key, name in (("1", "A"), ("2", "B"), ("3", "C"))}
#: Planner settings of these tests: common list A, no linger (flushes are explicit), the
#: v1 API's caps.
BASE = MigrationConfig(lists=("A",), linger=0).for_backend(V1_CAPABILITIES)


def row(line: int, email: str, *lists: str, **fields: str) -> SourceRow:
    """A source row."""
    return SourceRow((line,), email, dict(fields), lists)


@dataclasses.dataclass
class Harness:
    """A running planner and both ends of its streams."""

    planner: Planner
    rows: MemoryObjectSendStream[list[SourceRow | Rejected]]
    contacts: MemoryObjectReceiveStream[Contact]
    batches: MemoryObjectReceiveStream[Batch]
    outcomes: MemoryObjectReceiveStream[Outcome]
    tg: TaskGroup
    kept: dict[str, list[Any]] = dataclasses.field(default_factory=dict)

    async def send(self, *items: SourceRow | Rejected) -> None:
        """Feed rows (one a chunk) and let the planner take them in."""
        for item in items:
            await self.rows.send([item])
        await anyio.sleep(0.01)

    def keep_the_rest(self) -> None:
        """Move what is left in the output streams aside, before they are closed."""
        for name in ("contacts", "batches", "outcomes"):
            self.kept[name] = self._take(name)

    def _take(self, name: str) -> list[Any]:
        return self.kept.pop(name, []) + _drain(getattr(self, name))

    def drain_contacts(self) -> list[Contact]:
        """The per-contact work emitted so far."""
        return self._take("contacts")

    def drain_batches(self) -> list[Batch]:
        """The bulk batches emitted so far."""
        return self._take("batches")

    def drain_outcomes(self) -> list[Outcome]:
        """The outcomes emitted so far."""
        return self._take("outcomes")


def _drain(stream: MemoryObjectReceiveStream[Any]) -> list[Any]:
    items = []
    while True:
        try:
            items.append(stream.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return items


@asynccontextmanager
async def planning(config: MigrationConfig, *, record: bool = False) -> AsyncIterator[Harness]:
    """Run a planner over unbounded output streams; with `record`, its outcomes go through
    the record stage, which tells the planner when an email is done."""
    planner = Planner(config, LISTS)
    send_rows, receive_rows = anyio.create_memory_object_stream[list[SourceRow | Rejected]](100)
    send_contacts, receive_contacts = anyio.create_memory_object_stream[Contact](math.inf)
    send_batches, receive_batches = anyio.create_memory_object_stream[Batch](math.inf)
    send_outcomes, receive_outcomes = anyio.create_memory_object_stream[Outcome](math.inf)
    record_in, record_out = anyio.create_memory_object_stream[Outcome](math.inf)
    with receive_contacts, receive_batches, receive_outcomes, record_in, record_out:
        async with anyio.create_task_group() as tg:
            if record:
                tg.start_soon(
                    lambda: record_outcomes(
                        receive_outcomes,
                        writer=ReportWriter(None, {}),
                        stats=RunStats(),
                        on_done=planner.done,
                        on_outcome=record_in.send_nowait,
                    )
                )
            tg.start_soon(planner.run, receive_rows, send_contacts, send_batches, send_outcomes)
            harness = Harness(
                planner,
                send_rows,
                receive_contacts,
                receive_batches,
                record_out if record else receive_outcomes,
                tg,
            )
            async with send_rows:
                yield harness
        harness.keep_the_rest()


def targets_of(item: Contact | Batch) -> set[str]:
    """The list names a contact or batch targets."""
    by_key = {c.id: n for n, c in LISTS.items()}
    return {by_key[k] for k in item.targets}


async def test_batches_by_target_set() -> None:
    """Contacts are grouped by their target list set; each batch holds one set only."""
    config = dataclasses.replace(BASE, bulk_threshold=2)
    async with planning(config) as h:
        await h.send(
            row(1, "a1@example.com"),
            row(2, "b1@example.com", "B"),
            row(3, "a2@example.com"),
            row(4, "b2@example.com", "B"),
            row(5, "c1@example.com", "C"),
        )
    batches = h.drain_batches()
    assert sorted(([c.email for c in b.contacts], targets_of(b)) for b in batches) == [
        (["a1@example.com", "a2@example.com"], {"A"}),
        (["b1@example.com", "b2@example.com"], {"A", "B"}),
    ]
    for batch in batches:
        assert all(c.targets == batch.targets for c in batch.contacts)
    (alone,) = h.drain_contacts()
    assert (alone.email, targets_of(alone)) == ("c1@example.com", {"A", "C"})


@pytest.mark.parametrize(
    ("size", "path"),
    [
        pytest.param(24, "contact", id="24-per-contact"),
        pytest.param(25, "bulk", id="25-bulk"),
    ],
)
async def test_threshold_routes_batches(size: int, path: str) -> None:
    """A flushed batch of 25 or more goes to bulk, one of 24 or fewer contact by contact."""
    async with planning(BASE) as h:
        await h.send(*(row(i, f"u{i}@example.com") for i in range(1, size + 1)))
    batches, contacts = h.drain_batches(), h.drain_contacts()
    if path == "bulk":
        assert [len(b.contacts) for b in batches] == [size]
        assert contacts == []
    else:
        assert batches == []
        assert len(contacts) == size
    assert h.planner.pending == 0


async def test_no_bulk_threshold_sends_everything_contact_by_contact() -> None:
    """With `bulk_threshold=None` no batch ever goes to bulk."""
    config = dataclasses.replace(BASE, bulk_threshold=None)
    async with planning(config) as h:
        await h.send(*(row(i, f"u{i}@example.com") for i in range(1, 101)))
    assert h.drain_batches() == []
    assert len(h.drain_contacts()) == 100


async def test_row_cap_splits_batches_as_they_fill() -> None:
    """A batch that reaches `bulk_max_rows` is flushed at once; the rest follows at the end."""
    config = dataclasses.replace(BASE, bulk_threshold=5, bulk_max_rows=30)
    async with planning(config) as h:
        await h.send(*(row(i, f"u{i}@example.com") for i in range(1, 71)))
        assert [len(b.contacts) for b in h.drain_batches()] == [30, 30]  # before the end
        assert h.planner.pending == 10
    assert [len(b.contacts) for b in h.drain_batches()] == [10]


async def test_byte_cap_splits_batches() -> None:
    """A batch is flushed before its estimated encoded size passes `bulk_max_bytes`."""
    config = dataclasses.replace(BASE, bulk_threshold=1, bulk_max_bytes=10_000)
    async with planning(config) as h:
        await h.send(*(row(i, f"u{i}@example.com", Note="n" * 400) for i in range(1, 41)))
    batches = h.drain_batches()
    assert len(batches) > 2
    assert sum(len(b.contacts) for b in batches) == 40
    for batch in batches:
        # Flushed as soon as the estimate crossed 90% of the cap, and the real body fits.
        assert sum(estimate_bytes(c) for c in batch.contacts[:-1]) < 9_000
        rows = [{"EmailAddress": c.email, **c.fields} for c in batch.contacts]
        uris = [
            f"http://api.constantcontact.com/ws/customers/demo/lists/{t}" for t in batch.targets
        ]
        body = encode_add_contacts(rows, uris, fields=["Note"])
        assert len(body) <= 10_000


async def test_max_pending_flushes_the_largest_batch() -> None:
    """Holding `max_pending` contacts flushes the largest batch while input is still open."""
    config = dataclasses.replace(BASE, bulk_threshold=3, max_pending=10)
    async with planning(config) as h:
        await h.send(*(row(i, f"a{i}@example.com") for i in range(1, 7)))
        await h.send(*(row(i, f"b{i}@example.com", "B") for i in range(7, 10)))
        assert h.drain_batches() == []
        assert h.planner.pending == 9
        await h.send(row(10, "b10@example.com", "B"))
        (flushed,) = h.drain_batches()
        assert targets_of(flushed) == {"A"}
        assert len(flushed.contacts) == 6
        assert h.planner.pending == 4
    (last,) = h.drain_batches()
    assert targets_of(last) == {"A", "B"}
    assert len(last.contacts) == 4


async def test_linger_flushes_a_waiting_batch_of_a_streaming_source() -> None:
    """With `linger`, a batch that waited that long is flushed while the input is open."""
    config = dataclasses.replace(BASE, linger=0.05)
    async with planning(config) as h:
        await h.send(row(1, "a@example.com"))
        assert h.drain_contacts() == []
        await anyio.sleep(0.15)
        assert [c.email for c in h.drain_contacts()] == ["a@example.com"]


async def test_pending_duplicates_are_coalesced() -> None:
    """A row whose email waits in a batch is merged into it: rows kept, fields updated."""
    config = dataclasses.replace(BASE, bulk_threshold=None)
    async with planning(config) as h:
        await h.send(
            row(1, "a@example.com", FirstName="Old", LastName="Keep"),
            row(2, "b@example.com"),
            row(3, "a@example.com", FirstName="New"),
        )
    contacts = {c.email: c for c in h.drain_contacts()}
    assert contacts["a@example.com"].rows == [1, 3]
    assert contacts["a@example.com"].fields == {"FirstName": "New", "LastName": "Keep"}
    assert targets_of(contacts["a@example.com"]) == {"A"}
    assert len(contacts) == 2


async def test_a_coalesced_duplicate_moves_to_its_grown_target_set() -> None:
    """A duplicate that adds lists moves the waiting contact to the batch of the union."""
    config = dataclasses.replace(BASE, bulk_threshold=2)
    async with planning(config) as h:
        await h.send(
            row(1, "a@example.com"),
            row(2, "b@example.com"),
            row(3, "c@example.com", "B"),
            row(4, "a@example.com", "B"),
        )
    batches = {frozenset(targets_of(b)): b for b in h.drain_batches()}
    assert [c.email for c in batches[frozenset({"A", "B"})].contacts] == [
        "c@example.com",
        "a@example.com",
    ]
    moved = batches[frozenset({"A", "B"})].contacts[1]
    assert moved.rows == [1, 4]
    assert moved.targets == batches[frozenset({"A", "B"})].targets
    assert [c.email for c in h.drain_contacts()] == ["b@example.com"]  # alone in {A}
    assert h.planner.pending == 0


async def test_an_email_in_flight_is_held_back_until_done() -> None:
    """I5: rows of an email in flight wait, coalesced, until `done(email)` releases them."""
    config = dataclasses.replace(BASE, bulk_threshold=None, max_pending=1)
    async with planning(config) as h:
        await h.send(row(1, "a@example.com"))
        (first,) = h.drain_contacts()  # max_pending=1: flushed at once, now in flight
        assert first.rows == [1]
        await h.send(row(2, "a@example.com", "B"), row(3, "a@example.com", "C"))
        await anyio.sleep(0.05)
        assert h.drain_contacts() == []
        h.planner.done("a@example.com")
        await anyio.sleep(0.01)
        (again,) = h.drain_contacts()
        assert again.rows == [2, 3]
        assert targets_of(again) == {"A", "B", "C"}
        h.planner.done("a@example.com")
    assert h.drain_contacts() == []


async def test_the_planner_waits_for_held_back_emails_before_it_ends() -> None:
    """After the input ends, the planner still re-plans a held-back email, then ends."""
    config = dataclasses.replace(BASE, bulk_threshold=None, max_pending=1)
    ended = anyio.Event()
    async with planning(config) as h:
        await h.send(row(1, "a@example.com"), row(2, "a@example.com", "B"))
        await h.rows.aclose()

        async def watch() -> None:
            async for _ in h.outcomes:
                pass
            ended.set()

        h.tg.start_soon(watch)
        await anyio.sleep(0.05)
        assert not ended.is_set()
        assert [c.rows for c in h.drain_contacts()] == [[1]]
        h.planner.done("a@example.com")
        with anyio.fail_after(2):
            await ended.wait()
    assert [c.rows for c in h.drain_contacts()] == [[2]]


async def test_a_rejected_row_does_not_release_an_email_in_flight() -> None:
    """I5: a rejected row naming an email in flight does not release that email."""
    config = dataclasses.replace(BASE, bulk_threshold=None, max_pending=1)
    async with planning(config, record=True) as h:
        await h.send(row(1, "a@example.com"))
        assert len(h.drain_contacts()) == 1  # in flight
        await h.send(row(2, "a@example.com", "No Such List"))
        await h.send(Rejected(3, "a@example.com", "FirstName is 80 characters"))
        await anyio.sleep(0.05)
        assert [o.kind for o in h.drain_outcomes()] == [
            "rejected",
            "rejected",
        ]
        await h.send(row(4, "a@example.com", "B"))
        await anyio.sleep(0.05)
        assert h.drain_contacts() == [], "planned while its first write is still in flight"
        h.planner.done("a@example.com")
        await anyio.sleep(0.01)
        assert [c.rows for c in h.drain_contacts()] == [[4]]
        h.planner.done("a@example.com")


async def test_rows_without_targets_or_with_unknown_lists_are_rejected() -> None:
    """Rows with an unknown list or no target are rejected with the reason and line."""
    config = dataclasses.replace(BASE, lists=())
    async with planning(config) as h:
        await h.send(
            row(1, "a@example.com", "Nope"),
            row(2, "b@example.com"),
            Rejected(3, "bad@@x", "invalid email address 'bad@@x'"),
            row(4, "c@example.com", "B"),
        )
    outcomes = h.drain_outcomes()
    assert [(o.kind, o.rows, o.path) for o in outcomes] == [
        ("rejected", (1,), ""),
        ("rejected", (2,), ""),
        ("rejected", (3,), ""),
    ]
    assert "unknown list 'Nope'" in outcomes[0].reason
    assert "no target list" in outcomes[1].reason
    assert "invalid email" in outcomes[2].reason
    assert [c.email for c in h.drain_contacts()] == ["c@example.com"]
