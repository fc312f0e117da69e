"""The bulk path's `_both`: two calls at once, an error raised as itself."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from engine.errors import FatalApiError
from engine.pipeline.bulk import _both


async def test_both_gives_both_results_after_running_them_at_once() -> None:
    """Each call waits for the other to start: both results come back, in order."""
    started = [anyio.Event(), anyio.Event()]

    async def call(index: int, value: str) -> str:
        started[index].set()
        await started[1 - index].wait()
        return value

    with anyio.fail_after(5):
        assert await _both(lambda: call(0, "a"), lambda: call(1, "b")) == ("a", "b")


@pytest.mark.parametrize("failing", [0, 1])
async def test_an_error_of_either_is_raised_as_itself_and_cancels_the_other(
    failing: int,
) -> None:
    """The failing call's error comes out as itself (no exception group), and the other
    call, still waiting, is cancelled rather than waited for."""
    cancelled = anyio.Event()

    async def fails() -> None:
        await anyio.lowlevel.checkpoint()
        raise FatalApiError("refused")

    async def waits() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    calls = [waits, waits]
    calls[failing] = fails
    with anyio.fail_after(5), pytest.raises(FatalApiError, match="refused"):
        await _both(calls[0], calls[1])
    assert cancelled.is_set()
