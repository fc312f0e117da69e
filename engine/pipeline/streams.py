"""Sending and receiving on the stages' memory streams without a scheduler round per item.

anyio's `send` and `receive` each start with a checkpoint (a trip through the event loop,
and a lookup of the running async library), which costs more than the rest of a hot stage's
work per contact: a million contacts on the bulk path made a few million of them. These
helpers take the checkpoint only when they must wait: `send_soon` puts an item in the buffer
directly when there is room, `items` takes one that is already waiting, and `batches` hands
over everything already waiting after each wait. A producer still yields whenever the buffer
is full, and a consumer whenever it is empty, so backpressure and cancellation work as before
(anyio has no batch API for this).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["batches", "items", "send_soon"]

T = TypeVar("T")

#: The most items `batches` hands over at once.
MAX_BATCH = 1024


async def send_soon(stream: ObjectSendStream[T], item: T) -> None:
    """`stream.send(item)`, without the checkpoint when a memory stream's buffer has room
    (or a receiver is waiting)."""
    if isinstance(stream, MemoryObjectSendStream):
        try:
            stream.send_nowait(item)
            return
        except anyio.WouldBlock:
            pass
    await stream.send(item)


async def batches(stream: ObjectReceiveStream[T]) -> AsyncIterator[list[T]]:
    """What arrives on `stream`, in lists: each wait's item and those already waiting after
    it (up to `MAX_BATCH`; a stream other than a memory stream: one at a time), until the
    stream ends."""
    drains = isinstance(stream, MemoryObjectReceiveStream)
    async for first in stream:
        batch = [first]
        while drains and len(batch) < MAX_BATCH:
            try:
                batch.append(stream.receive_nowait())  # type: ignore[attr-defined]
            except anyio.WouldBlock:
                break
            except anyio.EndOfStream:
                break
        yield batch


async def items(stream: MemoryObjectReceiveStream[T]) -> AsyncIterator[T]:
    """`async for item in stream`, without the checkpoint when an item is already waiting
    (a worker of a pool yields in its own work: each of them sends a request per item)."""
    while True:
        try:
            item = stream.receive_nowait()
        except anyio.WouldBlock:
            try:
                item = await stream.receive()
            except anyio.EndOfStream:
                return
        except anyio.EndOfStream:
            return
        yield item
