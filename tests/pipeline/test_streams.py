"""The stream helpers that skip anyio's per-item checkpoint when no wait is needed."""

from __future__ import annotations

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from engine.pipeline.streams import MAX_BATCH, batches, items, send_soon


async def _first_items(
    receive: MemoryObjectReceiveStream[int], *, helper: bool
) -> list[tuple[int, bool]]:
    """Each item received with whether another task had run by then (it runs only when the
    receiving task yields to the event loop)."""
    ran: list[bool] = []

    async def other() -> None:
        ran.append(True)

    got: list[tuple[int, bool]] = []
    async with receive, anyio.create_task_group() as tg:
        tg.start_soon(other)
        if helper:
            async for item in items(receive):
                got.append((item, bool(ran)))
        else:
            async for item in receive:
                got.append((item, bool(ran)))
    return got


async def test_items_takes_waiting_items_without_yielding_to_the_loop() -> None:
    """`items` hands over items already in the buffer, and ends at the end of the stream,
    without letting another task run."""
    send, receive = anyio.create_memory_object_stream[int](10)
    for n in (1, 2, 3):
        send.send_nowait(n)
    send.close()
    with anyio.fail_after(5):
        assert await _first_items(receive, helper=True) == [(1, False), (2, False), (3, False)]


async def test_a_plain_receive_yields_to_the_loop_before_each_item() -> None:
    """The control: anyio's own iteration lets the other task run before the first item
    (what `items` saves)."""
    send, receive = anyio.create_memory_object_stream[int](10)
    send.send_nowait(1)
    send.close()
    with anyio.fail_after(5):
        assert await _first_items(receive, helper=False) == [(1, True)]


async def test_items_waits_for_an_item_when_none_is_waiting() -> None:
    """With an empty buffer, `items` waits for the next item (and the end) instead of
    spinning or ending early."""
    send, receive = anyio.create_memory_object_stream[int](0)
    got: list[int] = []

    async def consume() -> None:
        with receive:
            async for item in items(receive):
                got.append(item)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            for n in range(5):
                await send.send(n)
            await send.aclose()
    assert got == [0, 1, 2, 3, 4]


async def test_send_soon_fills_the_buffer_then_waits_for_room() -> None:
    """`send_soon` puts items in the buffer at once while there is room, and waits (not
    raises) when it is full, until the receiver takes one."""
    send, receive = anyio.create_memory_object_stream[int](2)
    with send, receive:
        await send_soon(send, 1)
        await send_soon(send, 2)
        assert receive.statistics().current_buffer_used == 2
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(send_soon, send, 3)
                await anyio.wait_all_tasks_blocked()
                assert receive.statistics().tasks_waiting_send == 1
                assert receive.receive_nowait() == 1
        assert [receive.receive_nowait(), receive.receive_nowait()] == [2, 3]


@pytest.mark.parametrize("waiting", [3, MAX_BATCH + 5])
async def test_batches_hands_over_what_is_waiting_up_to_the_cap(waiting: int) -> None:
    """`batches` gives every waiting item at once, at most `MAX_BATCH` a list, in order,
    and ends with the stream."""
    send, receive = anyio.create_memory_object_stream[int](waiting)
    for n in range(waiting):
        send.send_nowait(n)
    send.close()
    with receive, anyio.fail_after(5):
        lists = [batch async for batch in batches(receive)]
    expected = [waiting] if waiting <= MAX_BATCH else [MAX_BATCH, waiting - MAX_BATCH]
    assert [len(batch) for batch in lists] == expected
    assert [n for batch in lists for n in batch] == list(range(waiting))
