"""The reads before a run: the account's verification and its lists, in one round trip."""

from __future__ import annotations

from typing import Any, cast

import anyio
import pytest

from engine.backend.protocol import Backend, ListInfo
from engine.errors import AuthenticationError, ConfigError
from engine.pipeline.run import verified_lists


class SetUpBackend:
    """A backend's two set-up reads, each a round trip that waits for the other to start
    (so reads sent one after the other never finish), or fails as told."""

    def __init__(self, *, verify_error: Exception | None = None, names: tuple[str, ...] = ()):
        self.verify_error = verify_error
        self.names = names
        self.started: dict[str, anyio.Event] = {"verify": anyio.Event(), "lists": anyio.Event()}

    async def _round_trip(self, mine: str, other: str) -> None:
        self.started[mine].set()
        await self.started[other].wait()

    async def verify(self) -> None:
        await self._round_trip("verify", "lists")
        if self.verify_error is not None:
            raise self.verify_error

    async def lists(self) -> list[ListInfo]:
        await self._round_trip("lists", "verify")
        return [ListInfo(f"id-{name}", name) for name in self.names]


def backend(fake: SetUpBackend) -> Backend:
    return cast(Any, fake)


async def test_the_verification_and_the_lists_are_read_at_once() -> None:
    """Both reads are in flight together, and the lists come back by name."""
    fake = SetUpBackend(names=("News", "Customers"))
    with anyio.fail_after(5):
        lists, missing = await verified_lists(backend(fake), ["News", "VIP"], create=True)
    assert sorted(lists) == ["Customers", "News"]
    assert missing == ["VIP"]


async def test_a_failed_verification_wins_over_the_lists_error() -> None:
    """With bad credentials and an unknown list, the error raised is the credentials'."""
    fake = SetUpBackend(verify_error=AuthenticationError("bad credentials"), names=("News",))
    with anyio.fail_after(5), pytest.raises(AuthenticationError, match="bad credentials"):
        await verified_lists(backend(fake), ["Unknown"], create=False)


async def test_the_lists_error_is_raised_once_the_account_is_verified() -> None:
    """An unknown list (create off) stops the run with the lists' ConfigError."""
    fake = SetUpBackend(names=("News",))
    with anyio.fail_after(5), pytest.raises(ConfigError, match="Unknown"):
        await verified_lists(backend(fake), ["Unknown"], create=False)
