"""The V3 side of the durability suites: the V3 simulator served from a thread of the test
process on 127.0.0.1 (on a clock the test can move), a login's tokens in a token file, and
the engine as a real subprocess (`python -m engine migrate --backend v3 …`), so it can be
killed with SIGKILL like the v1 suites kill it.

At the end the simulator's account is saved to a state file and read back with the V3
`AccountStore.load`, and its write log is kept: `conftest.check_migration` checks both.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from engine.backend.governor import RateGovernor
from engine.backend.retry import RetryPolicy
from engine.backend.v3 import (
    FileTokenStore,
    OAuthEndpoints,
    TokenSet,
    V3Auth,
    V3Backend,
    V3Client,
)
from engine.simulator import v3
from engine.simulator.testing import serve_v3_in_thread

#: The V3 application of these suites (its token file is named after it).
CLIENT_ID = "durable-v3-app"
#: Quick settings: no rate limit, quota or token-endpoint limit unless a test sets one;
#: activities start within 0.02-0.08 s (out of order) and run at a million rows a second.
V3_FAST = v3.SimulatorConfig(
    host="127.0.0.1",
    port=0,
    client_id=CLIENT_ID,
    rps=None,
    daily_quota=None,
    token_rps=None,
    activity_delay=0.05,
    activity_jitter=0.6,
    activity_rows_per_second=1_000_000.0,
    seed=11,
)
#: Seconds a test waits at most for anything of the simulator's.
WAIT = 30.0


class OffsetClock:
    """The simulator's epoch seconds: the real time plus an offset the test moves (to pass
    midnight UTC, when the daily quota resets)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def to_next_utc_day(self) -> None:
        """Move past the next 00:00:00 UTC (by a second)."""
        now = self()
        self.offset += 86400.0 - now % 86400.0 + 1.0


@dataclasses.dataclass
class V3Sim:
    """A running V3 simulator (served from a thread of the test process, or its own
    `python -m engine simulate --api v3` process), and what the test handed out on it.

    Attributes:
        origin: scheme, host and port (the `/_sim/` hooks are under it).
        base_url: the API base (`…/v3/`).
        auth_url: the authorization server's base.
        ca_path: the CA file the engine trusts.
        folder: where its state file is.
        token_file: the engine's token file.
        clock: the simulator's clock (served from a thread only; a process keeps its own).
        secrets: every token the test issued or found in the token file (I7 looks for each).
        account: the account read back from the saved state file after `stop`.
        write_log: the write log, kept at `stop`.
    """

    origin: str
    base_url: str
    auth_url: str
    ca_path: Path
    folder: Path
    token_file: Path
    _shut_down: Callable[[], Path]
    clock: OffsetClock | None = None
    secrets: list[str] = dataclasses.field(default_factory=list)
    account: v3.AccountStore | None = None
    write_log: list[dict[str, Any]] | None = None

    # -- the hooks ---------------------------------------------------------------------------

    def hook(self, method: str, path: str, body: Any = None) -> Any:
        """Call a `/_sim/` hook (served on the simulator's own loop: thread-safe)."""
        request = urllib.request.Request(
            self.origin + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        context = ssl.create_default_context(cafile=str(self.ca_path))
        with urllib.request.urlopen(request, context=context, timeout=WAIT) as answer:
            text = answer.read()
        return json.loads(text) if text else None

    def stats(self) -> dict[str, Any]:
        """The request counters: `total`, `by_route`, `by_status`, `by_route_status`."""
        stats: dict[str, Any] = self.hook("GET", "/_sim/stats")
        return stats

    def writes(self) -> list[dict[str, Any]]:
        """Every write request received so far (method, path, endpoint, status)."""
        if self.write_log is not None:
            return self.write_log
        log: list[dict[str, Any]] = self.hook("GET", "/_sim/writes")["writes"]
        return log

    def write_count(self) -> int:
        """Write requests received so far (POST, PUT… under `/v3/`)."""
        return len(self.writes())

    def revoke_all(self) -> None:
        """The user withdraws the grant: every token dies (`/_sim/revoke`)."""
        self.hook("POST", "/_sim/revoke")

    # -- tokens ------------------------------------------------------------------------------

    def log_in(self, *, access_ttl: float | None = None) -> TokenSet:
        """Save a fresh login's tokens in the token file (as `login` would; a rotating
        login kills every earlier refresh token); returns them."""
        issued = self.hook("POST", "/_sim/tokens", {"access_ttl": access_ttl})
        assert issued["refresh_token"], issued.keys()
        tokens = TokenSet(
            issued["access_token"],
            issued["refresh_token"],
            time.time() + float(issued["expires_in"]),
            issued["scope"],
        )
        FileTokenStore(self.token_file).save(tokens)
        self.remember(tokens)
        return tokens

    def remember(self, tokens: TokenSet) -> None:
        """Look for these tokens in every output (I7): the whole token and its signature."""
        for token in (tokens.access_token, tokens.refresh_token):
            if token and token not in self.secrets:
                self.secrets.append(token)
                signature = token.rsplit(".", 1)[-1]
                if signature != token and len(signature) >= 16:
                    self.secrets.append(signature)

    def all_secrets(self) -> list[str]:
        """The tokens issued by the test and those the engine's refreshes saved."""
        saved = FileTokenStore(self.token_file).load()
        if saved is not None:
            self.remember(saved)
        return list(self.secrets)

    # -- the engine's options ----------------------------------------------------------------

    def account_args(self) -> list[str]:
        """`--backend v3` on this simulator with the token file."""
        return [
            "--backend",
            "v3",
            "--client-id",
            CLIENT_ID,
            "--token-file",
            str(self.token_file),
            "--base-url",
            self.base_url,
            "--auth-url",
            self.auth_url,
            "--ca-file",
            str(self.ca_path),
        ]

    # -- the end -----------------------------------------------------------------------------

    def stop(self) -> v3.AccountStore:
        """Keep the write log (not part of a state), stop the simulator, which saves the
        account to its state file, and read that file back with the V3 loader."""
        if self.account is None:
            self.write_log = self.writes()
            state = self._shut_down()
            self.account = v3.AccountStore.load(state, clock=self.clock or time.time)
        return self.account


@contextmanager
def v3_simulator(folder: Path, seed: Path | None = None, **changes: Any) -> Iterator[V3Sim]:
    """The V3 simulator (`V3_FAST` with `changes`) served from a thread on 127.0.0.1:0, on
    a clock the test can move, serving a copy of the `seed` state, with a fresh login in
    the token file; stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    clock = OffsetClock()
    config = dataclasses.replace(V3_FAST, **changes)
    store = (
        v3.AccountStore.load(seed, config, clock=clock)
        if seed is not None
        else v3.AccountStore(config, clock=clock)
    )
    with ExitStack() as stack:
        running = stack.enter_context(serve_v3_in_thread(config, store))
        assert running.ca_path is not None

        def shut_down() -> Path:
            stack.close()  # the thread is joined: the store is the test's now
            state = folder / "sim-state.json"
            store.save(state)
            return state

        sim = V3Sim(
            running.origin,
            running.base_url,
            running.auth_url,
            running.ca_path,
            folder,
            folder / "tokens" / f"v3-{CLIENT_ID}.json",
            shut_down,
            clock,
        )
        sim.log_in()
        try:
            yield sim
        finally:
            sim.stop()


@contextmanager
def v3_simulator_process(folder: Path, seed: Path, *args: str) -> Iterator[V3Sim]:
    """`python -m engine simulate --api v3 --state FILE` (a copy of `seed`) on 127.0.0.1:0,
    quick and without limits, with a fresh login in the token file; `stop` sends SIGTERM,
    on which it saves the account; killed on exit if it still runs."""
    folder.mkdir(parents=True, exist_ok=True)
    state = folder / "sim-state.json"
    shutil.copyfile(seed, state)
    command = [sys.executable, "-m", "engine", "simulate", "--api", "v3", "--no-limits"]
    command += ["--host", "127.0.0.1", "--port", "0", "--ca-dir", str(folder)]
    command += ["--state", str(state), "--client-id", CLIENT_ID, "--seed", "11"]
    command += ["--activity-delay", "0.05", "--activity-rows-per-second", "1000000", *args]
    log_path = folder / "sim-stderr.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()  # `serving BASE auth=AUTH ca=CA`
        if not line.startswith("serving "):
            raise AssertionError(f"the V3 simulator did not start: {line!r} {log_path.read_text()}")
        base_url, *rest = line.split()[1:]
        fields = dict(part.split("=", 1) for part in rest)

        def shut_down() -> Path:
            process.send_signal(signal.SIGTERM)
            status = process.wait(timeout=WAIT)
            assert status == 0, f"the simulator exited {status}: {log_path.read_text()[-2000:]}"
            return state

        sim = V3Sim(
            base_url.split("/v3/", 1)[0],
            base_url,
            fields["auth"],
            Path(fields["ca"]),
            folder,
            folder / "tokens" / f"v3-{CLIENT_ID}.json",
            shut_down,
        )
        sim.log_in()
        yield sim
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT)
        if process.stdout is not None:
            process.stdout.close()


def v3_env(*, crash_at: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a V3 engine process: this one's without any `CTCT_*` (the token
    file is named on the command line: no developer's token is ever read), a crash point."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTCT_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if crash_at is not None:
        env["CTCT_ENGINE_CRASH_AT"] = crash_at
    env.update(extra)
    return env


def outcome_counts(lines: list[Mapping[str, Any]]) -> dict[str, int]:
    """Report lines by outcome."""
    counts: dict[str, int] = {}
    for line in lines:
        counts[line["outcome"]] = counts.get(line["outcome"], 0) + 1
    return counts


# --- in the test's own event loop (the library, not the CLI) --------------------------------


@asynccontextmanager
async def v3_served(state: Path, **changes: Any) -> AsyncIterator[v3.RunningSimulator]:
    """The V3 simulator (`V3_FAST` with `changes`) in this event loop, serving a copy of the
    `seed` state."""
    config = dataclasses.replace(V3_FAST, **changes)
    async with v3.serve(config, v3.AccountStore.load(state, config)) as sim:
        yield sim


@asynccontextmanager
async def v3_backend(
    sim: v3.RunningSimulator,
    token_file: Path,
    *,
    retry: RetryPolicy,
    request_timeout: float = 10.0,
    concurrency: int = 16,
) -> AsyncIterator[V3Backend]:
    """A `V3Backend` on `sim` after a fresh login saved in `token_file`: no client-side rate
    limit (the server's limits are what is tested), `concurrency` requests in flight."""
    issued = sim.issue_tokens()
    store = FileTokenStore(token_file)
    store.save(
        TokenSet(
            issued.access_token, issued.refresh_token, time.time() + issued.expires_in, issued.scope
        )
    )
    endpoints = OAuthEndpoints(CLIENT_ID, auth_url=sim.auth_url, ca_file=sim.ca_path)
    async with V3Client(
        V3Auth(endpoints, store=store),
        base_url=sim.base_url,
        ca_file=sim.ca_path,
        governor=RateGovernor(rate=None, concurrency=concurrency),
        retry=retry,
        timeout=request_timeout,
    ) as client:
        yield V3Backend(client)


def saved_account(store: v3.AccountStore, folder: Path) -> v3.AccountStore:
    """`store` saved to a state file and read back with the V3 loader (what is checked is
    what the simulator would persist)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = folder / "sim-state.json"
    store.save(state)
    return v3.AccountStore.load(state, store.config)


def token_secrets(token_file: Path, *more: TokenSet | v3.TokenSet) -> list[str]:
    """The tokens in a token file and in `more` (I7 looks for each in every output)."""
    found: list[str] = []
    saved = FileTokenStore(token_file).load()
    for tokens in (saved, *more):
        if tokens is None:
            continue
        for token in (tokens.access_token, tokens.refresh_token):
            if token:
                found.append(token)
    return found


async def v3_stats(sim: v3.RunningSimulator) -> dict[str, Any]:
    """The request counters of a simulator served in this event loop (`GET /_sim/stats`)."""
    assert sim.ca_path is not None
    context = ssl.create_default_context(cafile=str(sim.ca_path))
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
        session.get(sim.stats_url) as response,
    ):
        stats: dict[str, Any] = await response.json()
    return stats
