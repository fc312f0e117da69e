"""The append batches (`engine.pipeline.append.Appends`) against a scripted backend: how
many appends run on the server at once, and how many wait for their read-back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from engine.backend.protocol import BulkActivity
from engine.backend.v3 import V3Backend, _json
from engine.pipeline.append import Appends
from engine.pipeline.merge import Write, decide
from engine.pipeline.models import Contact, Outcome


@dataclass
class Server:
    """Appends as a server runs them: each finishes when the waiter polls it, and its
    read-back waits until the test opens `reads`."""

    reads: anyio.Event = field(default_factory=anyio.Event)
    posted: list[str] = field(default_factory=list)
    running: int = 0  # posted, not finished
    most_running: int = 0
    unsettled: int = 0  # posted, not read back
    most_unsettled: int = 0
    capabilities: Any = field(default_factory=lambda: SimpleNamespace(append_max=2))
    changed: anyio.Event = field(default_factory=anyio.Event)  # set at each post and finish

    def _touch(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def until(self, check: Callable[[], bool]) -> None:
        """Wait until `check()` holds, looked at after each post and each finish."""
        while not check():
            await self.changed.wait()

    async def append(self, ids: Sequence[str], targets: Sequence[str]) -> BulkActivity:
        self.posted.append(f"a{len(self.posted)}")
        self.running += 1
        self.unsettled += 1
        self.most_running = max(self.most_running, self.running)
        self.most_unsettled = max(self.most_unsettled, self.unsettled)
        self._touch()
        return BulkActivity(self.posted[-1], "pending", "initialized", document=list(ids))

    async def wait_for(self, activity: BulkActivity, *, rows: int = 0) -> BulkActivity:
        await anyio.sleep(0.01)
        self.running -= 1
        self._touch()
        return BulkActivity(activity.id, "complete", "completed", document=activity.document)

    async def appended(
        self, appends: Sequence[tuple[BulkActivity, Sequence[str]]], targets: Sequence[str]
    ) -> list[set[str]]:
        await self.reads.wait()
        self.unsettled -= len(appends)
        return [set(ids) for _, ids in appends]


def _writes(count: int) -> list[Write]:
    """`count` existing contacts on l1 that gain l2."""
    backend = V3Backend.__new__(V3Backend)  # decide is pure: no client needed
    writes = []
    for n in range(count):
        email = f"c{n}@example.com"
        state = _json.contact_state(
            {
                "contact_id": f"id{n}",
                "email_address": {"address": email, "permission_to_send": "implicit"},
                "list_memberships": ["l1"],
            }
        )
        write = decide(
            Contact(email, ("l2",), {}, [n + 2]), state, backend=backend, skip_removed=False
        )
        assert isinstance(write, Write)
        writes.append(write)
    return writes


async def _run(server: Server, writes: list[Write], *, limit: int, opened: Any) -> list[Outcome]:
    """Every write through `Appends` (batches of two); `opened(server)` says when the
    read-backs may go on. The outcomes."""

    async def no_write(write: Write) -> Outcome:
        raise AssertionError("every append is vouched for: nothing goes the write path")

    waiter = SimpleNamespace(stats=SimpleNamespace(activities=0), wait_for=server.wait_for)
    appends = Appends(server, waiter, no_write, linger=30.0, limit=limit)  # type: ignore[arg-type]
    send, receive = anyio.create_memory_object_stream[Outcome](100)
    outcomes: list[Outcome] = []

    async def collect() -> None:
        async with receive:
            async for outcome in receive:
                outcomes.append(outcome)

    async def feed() -> None:
        for write in writes:
            await appends.add(write)
        appends.close()

    async def open_reads() -> None:
        await opened(server)
        server.reads.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            tg.start_soon(appends.run, send)
            tg.start_soon(feed)
            tg.start_soon(open_reads)
    return outcomes


async def test_the_next_append_is_posted_while_the_last_one_is_read_back() -> None:
    """With one append allowed on the server, the second is posted once the first has
    finished, while the first's read-back still waits; never two run at once."""
    server = Server()

    async def second_posted(server: Server) -> None:
        # the old slot, held through the read-back, waited here until `fail_after`
        await server.until(lambda: len(server.posted) == 2)

    outcomes = await _run(server, _writes(4), limit=1, opened=second_posted)
    assert server.posted == ["a0", "a1"]
    assert server.most_running == 1
    assert sorted(o.kind for o in outcomes) == ["updated"] * 4


@pytest.mark.parametrize("limit", [1, 3])
async def test_appends_waiting_for_their_read_back_are_at_most_twice_the_limit(limit: int) -> None:
    """While read-backs are held up, at most `limit` appends run on the server and at most
    twice `limit` are posted and not read back; every write settles once they go on."""
    server = Server()

    async def full(server: Server) -> None:
        await server.until(lambda: len(server.posted) == 2 * limit and not server.running)
        await anyio.sleep(0.05)  # time for a third batch of appends, if one could go

    outcomes = await _run(server, _writes(40), limit=limit, opened=full)
    assert server.most_running <= limit
    assert server.most_unsettled == 2 * limit
    assert len(server.posted) == 20
    assert sorted(o.kind for o in outcomes) == ["updated"] * 40
