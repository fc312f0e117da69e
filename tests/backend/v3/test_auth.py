"""V3 OAuth2: refresh before expiry and after a 401, rotation saved before use, one refresh
for many tasks, `invalid_grant`, the device flow, the token file, and tokens kept secret."""

from __future__ import annotations

import fcntl
import logging
import math
import os
import stat
from pathlib import Path

import anyio
import pytest

from engine.backend.v3 import (
    DeviceCode,
    FileTokenStore,
    OAuthEndpoints,
    TokenSet,
    V3Auth,
    auth as auth_module,
    default_token_path,
    device_login,
)
from engine.errors import AuthenticationError, ConfigError
from engine.simulator.v3 import RunningSimulator

from .conftest import BackendOpener, FakeClock, SimStarter, endpoints_for, login


async def test_refresh_shortly_before_expiry(
    sim: RunningSimulator, open_backend: BackendOpener, clock: FakeClock
) -> None:
    """A token within 5 minutes of expiry is refreshed before the request, once."""
    async with open_backend(sim, access_ttl=600) as backend:
        auth = backend.client.auth
        first = auth.tokens.access_token
        await backend.verify()
        assert auth.refreshes == 0
        clock.advance(400)  # 200 s left: inside the margin
        await backend.verify()
        await backend.verify()
        assert auth.refreshes == 1
        assert auth.tokens.access_token != first
        assert auth.tokens.expires_at == clock() + sim.config.access_ttl


async def test_refresh_once_after_a_401(
    sim: RunningSimulator, open_backend: BackendOpener, clock: FakeClock, tmp_path: Path
) -> None:
    """A 401 (the token expired earlier than the client thought) refreshes once and replays."""
    store = login(sim, tmp_path, clock, access_ttl=60)
    stored = store.load()
    assert stored is not None
    store.save(TokenSet(stored.access_token, stored.refresh_token, math.inf))  # expiry unknown
    async with open_backend(sim, store=store) as backend:
        clock.advance(120)  # the server's token is dead; the client does not know
        await backend.verify()
        assert backend.client.auth.refreshes == 1
        assert backend.stats().requests == 2  # the 401, then the replay


async def test_rotation_is_saved_before_use(
    sim: RunningSimulator, open_backend: BackendOpener, clock: FakeClock
) -> None:
    """Every access token handed to a request is already in the token file, with the rotated
    refresh token, which works for the next refresh (the old one is dead)."""
    async with open_backend(sim, access_ttl=600) as backend:
        auth = backend.client.auth
        store = auth.store
        assert store is not None
        old_refresh = auth.tokens.refresh_token
        handed: list[bool] = []
        real = auth.access_token

        async def checked() -> str:
            token = await real()
            on_disk = store.load()
            handed.append(on_disk is not None and on_disk.access_token == token)
            return token

        auth.access_token = checked  # type: ignore[method-assign]
        for seconds in (400, sim.config.access_ttl - 100):  # each time inside the margin
            clock.advance(seconds)
            await backend.verify()
        assert handed == [True, True]
        assert auth.refreshes == 2
        on_disk = store.load()
        assert on_disk is not None
        assert on_disk.refresh_token not in (None, old_refresh)


async def test_eight_tasks_share_one_refresh(
    start_sim: SimStarter, open_backend: BackendOpener, clock: FakeClock
) -> None:
    """Eight requests meeting an expiring token cost one token request (the endpoint's
    1 request/s is on: a second one would be throttled)."""
    async with start_sim(token_rps=1.0) as sim, open_backend(sim, access_ttl=600) as backend:
        clock.advance(500)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(backend.verify)
        assert backend.client.auth.endpoints.token_requests == 1
        assert backend.client.auth.refreshes == 1


async def test_another_process_refresh_is_adopted(
    sim: RunningSimulator, clock: FakeClock, tmp_path: Path
) -> None:
    """After taking the file lock the file is read again: a refresh another process saved
    is used instead of spending the (now dead) refresh token again."""
    store = login(sim, tmp_path, clock, access_ttl=600)
    one = V3Auth(endpoints_for(sim), store=store, clock=clock)
    two = V3Auth(endpoints_for(sim), store=FileTokenStore(store.path), clock=clock)
    clock.advance(400)
    token = await one.access_token()
    assert await two.access_token() == token
    assert (one.refreshes, two.refreshes) == (1, 0)


async def test_invalid_grant_asks_to_log_in_again(
    sim: RunningSimulator, open_backend: BackendOpener
) -> None:
    """A revoked grant (401, then invalid_grant on refresh) stops with the login hint."""
    async with open_backend(sim) as backend:
        sim.store.auth.revoke_all()
        with pytest.raises(AuthenticationError, match=r"python -m engine login` again") as caught:
            await backend.verify()
        assert "invalid or expired" in str(caught.value)
        assert backend.client.auth.endpoints.token_requests == 1  # never retried


async def test_device_flow_approved(
    sim: RunningSimulator, clock: FakeClock, tmp_path: Path
) -> None:
    """The device flow polls at `interval` until approved, then saves the tokens."""
    store = FileTokenStore(tmp_path / "cfg" / "v3.json")
    shown: list[DeviceCode] = []
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)
        if len(waits) == 2:
            sim.approve(shown[0].user_code)

    with anyio.fail_after(10):
        tokens = await device_login(
            endpoints_for(sim), store=store, show=shown.append, sleep=sleep, clock=clock
        )
    assert waits == [5.0, 5.0]  # one authorization_pending, then the tokens
    assert shown[0].user_code
    assert shown[0].verification_uri_complete.startswith("https://")
    assert tokens.refresh_token
    assert store.load() == tokens
    assert tokens.expires_at == clock() + sim.config.access_ttl


async def test_device_flow_denied(sim: RunningSimulator, clock: FakeClock) -> None:
    """A denied device login stops with a clear error."""

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    with anyio.fail_after(10), pytest.raises(AuthenticationError, match="denied"):
        await device_login(
            endpoints_for(sim),
            show=lambda code: sim.deny(code.user_code),
            sleep=sleep,
            clock=clock,
        )


async def test_device_flow_slow_down(sim: RunningSimulator, clock: FakeClock) -> None:
    """`slow_down` adds 5 seconds to the polling interval; an expired code stops."""
    shown: list[DeviceCode] = []
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds if len(waits) != 2 else 1.0)  # the second poll comes too soon
        if len(waits) == 3:
            sim.approve(shown[0].user_code)

    with anyio.fail_after(10):
        tokens = await device_login(endpoints_for(sim), show=shown.append, sleep=sleep, clock=clock)
    assert waits == [5.0, 5.0, 10.0]
    assert tokens.access_token

    async def idle(seconds: float) -> None:
        clock.advance(seconds)

    with anyio.fail_after(10), pytest.raises(AuthenticationError, match="expired"):
        await device_login(endpoints_for(sim), show=lambda code: None, sleep=idle, clock=clock)


def test_token_file_permissions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The token folder is 0700 and the file 0600, written whole; the default folder follows
    XDG_CONFIG_HOME."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    path = default_token_path("demo-client")
    assert path == tmp_path / "xdg" / "ctct-migrate" / "v3-demo-client.json"
    store = FileTokenStore(path)
    store.save(TokenSet("acc", "ref", 123.0, "contact_data"))
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.load() == TokenSet("acc", "ref", 123.0, "contact_data")
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".tokens-")] == []
    store.delete()
    assert store.load() is None
    with pytest.raises(ConfigError, match="login"):
        V3Auth(OAuthEndpoints("demo-client"), store=store)


async def test_no_token_in_repr_str_or_log(
    sim: RunningSimulator,
    open_backend: BackendOpener,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tokens appear in no repr, str, exception or log line, through refreshes and a 401."""
    caplog.set_level(logging.DEBUG)
    async with open_backend(sim, access_ttl=600) as backend:
        auth = backend.client.auth
        secrets = {auth.tokens.access_token, auth.tokens.refresh_token}
        clock.advance(400)
        await backend.verify()
        secrets |= {auth.tokens.access_token, auth.tokens.refresh_token}
        sim.store.auth.revoke_all()
        with pytest.raises(AuthenticationError) as caught:
            await backend.verify()
        shown = " ".join(
            [
                repr(auth),
                repr(auth.tokens),
                str(auth.tokens),
                repr(backend),
                repr(backend.client),
                repr(auth.store),
                str(caught.value),
                repr(caught.value),
                backend.identity,
                caplog.text,
            ]
        )
    assert caplog.text  # something was logged
    for secret in secrets:
        assert secret
        assert secret not in shown


async def test_headless_refresh_token_then_logout(
    sim: RunningSimulator, clock: FakeClock, tmp_path: Path
) -> None:
    """A refresh token given alone seeds an empty store (the first request refreshes and
    saves); logout revokes the tokens on the server and deletes the file."""
    issued = sim.issue_tokens()
    store = FileTokenStore(tmp_path / "v3.json")
    auth = V3Auth(endpoints_for(sim), store=store, refresh_token=issued.refresh_token, clock=clock)
    token = await auth.access_token()
    assert auth.refreshes == 1
    assert store.load() == auth.tokens
    assert sim.store.auth.access_grant(token) is not None
    refresh = auth.tokens.refresh_token
    await auth.revoke()
    assert store.load() is None
    assert sim.store.auth.access_grant(token) is None
    again = V3Auth(endpoints_for(sim), refresh_token=refresh, clock=clock)
    with pytest.raises(AuthenticationError, match="login"):
        await again.access_token()


async def test_the_token_file_lock_is_waited_for_at_most_lock_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock another process never releases ends the wait with an error, within LOCK_WAIT."""
    monkeypatch.setattr(auth_module, "LOCK_WAIT", 0.2)
    store = FileTokenStore(tmp_path / "v3.json")
    async with store.locked():  # held here: a second holder is "another process"
        fd = os.open(store.lock_path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # the lock is really taken
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        with anyio.fail_after(5), pytest.raises(AuthenticationError, match="held the lock"):
            async with FileTokenStore(tmp_path / "v3.json").locked():
                pass
