"""The read window: how many contacts the merge stage may read ahead of their writes."""

from __future__ import annotations

import anyio
import pytest

from engine.pipeline.window import ReadWindow


def test_the_size_follows_the_rate_and_stale_after() -> None:
    """Two turns a contact within 80% of `stale_after`, at least one, at most `most`; no
    rate limit: no bound (no turn to wait for)."""
    rate: list[float | None] = [4.0]
    window = ReadWindow(lambda: rate[0], stale_after=2.0, most=8)
    assert window.size() == 3  # 4/s x 2 s x 0.8 / 2 turns = 3.2
    rate[0] = 0.5
    assert window.size() == 1
    rate[0] = 400.0
    assert window.size() == 8
    rate[0] = None
    assert window.size() is None


async def test_a_read_waits_for_a_place_and_takes_the_one_given_back() -> None:
    """With the window full, `enter` waits until a place is left, then takes it."""
    window = ReadWindow(lambda: 1.0, stale_after=2.0, most=8)  # size 1 at 1/s
    first = await window.enter()
    entered = anyio.Event()

    async def second() -> None:
        place = await window.enter()
        entered.set()
        place.leave()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(second)
            await anyio.sleep(0.05)
            assert not entered.is_set()  # full: waiting
            first.leave()
            await entered.wait()
    assert window.held == 0


async def test_a_place_left_twice_is_given_back_once() -> None:
    """`leave` is idempotent: every path that may end a write can call it."""
    window = ReadWindow(lambda: 4.0, stale_after=2.0, most=8)
    places = [await window.enter() for _ in range(3)]
    places[0].leave()
    places[0].leave()
    assert window.held == 2


async def test_a_rate_that_rises_lets_more_reads_in() -> None:
    """The size is checked at every read: after the rate rose, reads past the old size
    are let in while the first is still held."""
    rate = [1.0]
    window = ReadWindow(lambda: rate[0], stale_after=2.0, most=8)
    held = await window.enter()
    rate[0] = 10.0  # now 8 fit
    with anyio.fail_after(5):
        extra = [await window.enter() for _ in range(7)]
    assert window.held == 8
    for place in [held, *extra]:
        place.leave()
    assert window.held == 0


@pytest.mark.parametrize("most", [0, 1])
def test_the_window_holds_at_least_one(most: int) -> None:
    """A window never shrinks to nothing: one contact at a time at any rate."""
    assert ReadWindow(lambda: 0.1, stale_after=0.1, most=most).size() == 1


async def test_a_place_given_back_wakes_one_waiter_first_come_first_served() -> None:
    """Three reads wait on a full window of one: each place given back lets exactly one
    in, the longest waiting first (not every waiter woken to race for it)."""
    window = ReadWindow(lambda: 1.0, stale_after=2.0, most=8)
    first = await window.enter()
    entered: list[int] = []
    places = []

    async def wait(n: int) -> None:
        places.append(await window.enter())
        entered.append(n)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(wait, n)
                await anyio.wait_all_tasks_blocked()
            first.leave()
            await anyio.wait_all_tasks_blocked()
            assert entered == [0]
            places[0].leave()
            await anyio.wait_all_tasks_blocked()
            assert entered == [0, 1]
            places[1].leave()
    assert entered == [0, 1, 2]
    assert window.held == 1


async def test_a_rate_that_rose_lets_several_waiters_in_at_the_next_place_given_back() -> None:
    """Waiters queued at a low rate: when a place is given back after the rate rose, as
    many enter as the new size holds, the first ones first."""
    rate = [1.0]
    window = ReadWindow(lambda: rate[0], stale_after=2.0, most=8)
    first = await window.enter()
    entered: list[int] = []

    async def wait(n: int) -> None:
        await window.enter()
        entered.append(n)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(wait, n)
                await anyio.wait_all_tasks_blocked()
            rate[0] = 3.0  # size 2
            first.leave()
            await anyio.wait_all_tasks_blocked()
            assert entered == [0, 1]
            assert window.held == 2
            tg.cancel_scope.cancel()  # the other two wait for places never given back
    assert window.held == 2


async def test_a_waiter_cancelled_while_waiting_leaves_the_queue() -> None:
    """A read cancelled while it waits for a place is taken out of the queue: the place
    given back next goes to the read behind it, and none is lost."""
    window = ReadWindow(lambda: 1.0, stale_after=2.0, most=8)
    first = await window.enter()
    got: list[str] = []
    doomed = anyio.CancelScope()

    async def wait(name: str) -> None:
        place = await window.enter()
        got.append(name)
        place.leave()

    async def cancelled() -> None:
        with doomed:
            await wait("cancelled")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancelled)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(wait, "next")
            await anyio.wait_all_tasks_blocked()
            doomed.cancel()
            await anyio.wait_all_tasks_blocked()
            first.leave()
    assert got == ["next"]
    assert window.held == 0
