"""The group commit: calls with one key that arrive while another runs are run together."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from engine.groupcommit import GroupCommit


class _Runs:
    """The work of a group commit, faked: records the items each run takes, and holds each
    run until the test opens its gate."""

    def __init__(self, fail: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.gates = [anyio.Event() for _ in range(3)]
        self.entered = [anyio.Event() for _ in range(3)]
        self.fail = fail

    async def __call__(self, key: str, items: list[str]) -> Sequence[str]:
        call = len(self.calls)
        self.calls.append(items)
        self.entered[call].set()
        await self.gates[call].wait()
        if call == self.fail:
            raise LookupError(f"run {call} failed")
        return [f"{key}:{item}" for item in items]


async def test_calls_that_come_during_a_run_are_run_together_next() -> None:
    """The first call runs alone at once; the two that come while it runs wait for it,
    then one run takes both; each caller gets its own result."""
    runs = _Runs()
    group: GroupCommit[str, str, str] = GroupCommit(runs)
    got: dict[str, str] = {}

    async def call(item: str) -> None:
        got[item] = await group("news", item)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "a1")
            await runs.entered[0].wait()
            tg.start_soon(call, "a2")
            tg.start_soon(call, "a3")
            await anyio.wait_all_tasks_blocked()
            runs.gates[0].set()
            await runs.entered[1].wait()
            runs.gates[1].set()
    assert runs.calls == [["a1"], ["a2", "a3"]]
    assert got == {item: f"news:{item}" for item in ("a1", "a2", "a3")}


async def test_calls_with_other_keys_do_not_wait_for_each_other() -> None:
    """A run of one key does not hold back a call with another key."""
    runs = _Runs()
    group: GroupCommit[str, str, str] = GroupCommit(runs)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(group, "news", "a1")
            await runs.entered[0].wait()
            tg.start_soon(group, "promo", "b1")
            await runs.entered[1].wait()  # runs while the first is still held
            runs.gates[0].set()
            runs.gates[1].set()
    assert runs.calls == [["a1"], ["b1"]]


async def test_a_run_that_fails_fails_every_call_it_took() -> None:
    """An exception of a run is raised to each caller whose item it held, and the next
    call runs afresh."""
    runs = _Runs(fail=1)
    group: GroupCommit[str, str, str] = GroupCommit(runs)
    errors: dict[str, str] = {}

    async def call(item: str) -> None:
        try:
            await group("news", item)
        except LookupError as exc:
            errors[item] = str(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "a1")
            await runs.entered[0].wait()
            tg.start_soon(call, "a2")
            tg.start_soon(call, "a3")
            await anyio.wait_all_tasks_blocked()
            runs.gates[0].set()
            await runs.entered[1].wait()
            runs.gates[1].set()
        runs.gates[2].set()
        assert await group("news", "a4") == "news:a4"
    assert errors == {"a2": "run 1 failed", "a3": "run 1 failed"}


async def test_a_run_cancelled_leaves_the_others_it_took_to_the_next() -> None:
    """The caller whose run holds another's item is cancelled: that item is run by the
    next holder, not left waiting for a result that never comes."""
    runs = _Runs()
    group: GroupCommit[str, str, str] = GroupCommit(runs)
    got: dict[str, str] = {}
    a2_scope = anyio.CancelScope()

    async def call(item: str) -> None:
        got[item] = await group("news", item)

    async def call_a2() -> None:
        with a2_scope:
            await call("a2")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "a1")
            await runs.entered[0].wait()
            tg.start_soon(call_a2)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(call, "a3")
            await anyio.wait_all_tasks_blocked()
            runs.gates[0].set()
            await runs.entered[1].wait()  # a2 runs a2 and a3 together ...
            a2_scope.cancel()  # ... and is cancelled
            await runs.entered[2].wait()
            runs.gates[2].set()
    assert runs.calls == [["a1"], ["a2", "a3"], ["a3"]]
    assert got == {"a1": "news:a1", "a3": "news:a3"}


async def test_a_run_that_answers_for_the_wrong_number_of_items_fails_them_all() -> None:
    """A run returning fewer results than items is an error for each caller, never a
    missing result read as None."""

    async def short(key: str, items: list[str]) -> Sequence[str]:
        return items[:-1]

    group: GroupCommit[str, str, str] = GroupCommit(short)
    with pytest.raises(ValueError, match="0 results for 1 items"):
        await group("news", "a1")
