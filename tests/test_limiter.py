"""`Held`: a limiter's token taken at once when one is free, waited for when none is."""

from __future__ import annotations

import anyio

from engine.limiter import Held


async def test_a_free_token_is_taken_without_yielding_to_other_tasks() -> None:
    """With a token free, entering does not let another ready task run first."""
    limiter = anyio.CapacityLimiter(2)
    ran: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _note(ran))
        async with Held(limiter):
            assert ran == []
            assert limiter.borrowed_tokens == 1
        assert limiter.borrowed_tokens == 0
    assert ran == ["other"]


async def _note(ran: list[str]) -> None:
    ran.append("other")


async def test_with_no_free_token_it_waits_for_one_and_a_cancelled_wait_takes_none() -> None:
    """The limiter full, a holder waits until a token is released; one cancelled while it
    waits leaves every token as it was."""
    limiter = anyio.CapacityLimiter(1)
    order: list[str] = []
    release = anyio.Event()

    async def first() -> None:
        async with Held(limiter):
            order.append("first in")
            await release.wait()
        order.append("first out")

    async def second() -> None:
        async with Held(limiter):
            order.append("second in")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.wait_all_tasks_blocked()
            with anyio.CancelScope() as scope:
                scope.cancel()
                async with Held(limiter):
                    order.append("cancelled one got in")
            assert limiter.borrowed_tokens == 1
            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            assert order == ["first in"]
            release.set()
    assert order == ["first in", "first out", "second in"]
    assert limiter.borrowed_tokens == 0
