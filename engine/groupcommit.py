"""A group commit: calls that arrive while another with the same key runs wait for it, then
run as one.

For reads that cost less done together than one by one: the read-backs of activities to the
same lists. Each pages through the members changed while its activity ran, which hold the
contacts of the activities around it too, so read one by one most pages are read several
times. No timer: a call that finds nothing running runs at once, alone; those that come
meanwhile are taken together by the next. (Nothing in anyio or the standard library
batches awaited calls this way.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio

__all__ = ["GroupCommit"]

K = TypeVar("K", bound=Hashable)
A = TypeVar("A")
R = TypeVar("R")


@dataclass(slots=True, eq=False)
class _Call(Generic[A, R]):
    item: A
    done: bool = False
    result: R | None = None
    error: Exception | None = None


class GroupCommit(Generic[K, A, R]):
    """`await group(key, item)` runs `run(key, items)` for `item` and every other item given
    with that key while the previous run of that key ran, and returns `item`'s result.

    Args:
        run: the work of several items with one key; returns one result per item, in order.
            An exception it raises is raised to every caller of that run.
    """

    def __init__(self, run: Callable[[K, list[A]], Awaitable[Sequence[R]]]) -> None:
        self._run = run
        self._keys: dict[K, tuple[anyio.Lock, list[_Call[A, R]]]] = {}

    async def __call__(self, key: K, item: A) -> R:
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = (anyio.Lock(), [])
        lock, queue = entry
        mine: _Call[A, R] = _Call(item)
        queue.append(mine)
        async with lock:  # first come, first served
            if not mine.done:  # not taken by the run before: take everything waiting
                batch = queue[:]
                queue.clear()
                try:
                    results = await self._run(key, [call.item for call in batch])
                    if len(results) != len(batch):
                        raise ValueError(f"{len(results)} results for {len(batch)} items")
                except Exception as exc:
                    for call in batch:
                        call.done, call.error = True, exc
                except BaseException:
                    # cancelled: the others of the batch are run by the next holder
                    queue[:0] = [call for call in batch if call is not mine]
                    raise
                else:
                    for call, result in zip(batch, results, strict=True):
                        call.done, call.result = True, result
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[return-value]  # done: set by its run
