"""One measured run in a fresh process: the engine, the ceiling loop or the naive baseline,
on the v1 API or the V3 one.

    python -m benchmarks.child '{"client": "engine", "api": "v3", "base_url": …}'

The harness starts the simulator, then this process with a JSON job, and reads one JSON
object from its last line of output. A fresh process per run keeps the peak memory (the
kernel's high-water mark of this process) and the CPU time (`time.process_time`, every
thread) to this run alone. The event loop is uvloop when installed, as in the CLI.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import resource
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp
import anyio
from yarl import URL

from engine.backend._http import Answer
from engine.backend.v1 import Account, Credentials, RateGovernor, RetryPolicy
from engine.backend.v3 import FileTokenStore, OAuthEndpoints, TokenSet, V3Auth, V3Backend, V3Client
from engine.pipeline.config import MigrationConfig, StageLimits
from engine.pipeline.read import ReadOptions
from engine.pipeline.run import migrate
from engine.pipeline.stats import Progress
from engine.process import tune_process

__all__ = [
    "CREDENTIALS",
    "V3_CLIENT_ID",
    "Job",
    "current_rss_mb",
    "main",
    "peak_rss_mb",
    "v3_access_token",
]

T = TypeVar("T")
Client = Literal["engine", "ceiling", "naive"]

#: The simulator's default account.
CREDENTIALS = Credentials("demo", "demo-key", "demo-password")
#: The V3 simulator's default application (its OAuth2 client id).
V3_CLIENT_ID = "demo-client"


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """What the child runs.

    Attributes:
        client: `engine`, `ceiling` (bare aiohttp loop) or `naive` (sequential baseline).
        base_url: the simulator's API base URL.
        ca_path: its CA file.
        source: the CSV source.
        api: `v1` or `v3`.
        auth_url: V3: the simulator's authorization server.
        tokens: V3: a file holding the tokens the simulator's hook issued (a token
            endpoint's answer), kept by the engine in a token file beside it.
        append: V3: the engine's `append_writes`; the ceiling appends existing contacts
            that gain a list by id (True) or PUTs each of them (False).
        lists: target list names for every row.
        lists_column: the source's lists column, if any.
        report: where the engine writes its JSON Lines report.
        concurrency: requests in flight (the governor's cap; put workers).
        bulk: let the planner use bulk activities (threshold 25) or force the per-contact
            path (`bulk_threshold=None`).
        rate: the governor's rate limit in requests/s (None: none until throttled).
        discover: the governor starts at `rate` and looks above it for the server's limit.
        limit: process only the first `limit` rows (the naive baseline's sample).
        write_existing: for the ceiling, whether existing contacts get a PUT (False for a
            source whose contacts are already on the target).
        profile: write a cProfile of the run here.
        journal: the engine's resume journal (SQLite), as the CLI keeps by default; None
            keeps none (the library's default).
        max_seconds: stop the engine (its graceful `stop`) after this many seconds; the
            figures then cover the rows it finished.
    """

    client: Client
    base_url: str
    ca_path: str | None
    source: str
    api: Literal["v1", "v3"] = "v1"
    auth_url: str | None = None
    tokens: str | None = None
    append: bool = True
    lists: tuple[str, ...] = ()
    lists_column: str | None = None
    report: str | None = None
    concurrency: int = 64
    bulk: bool = False
    rate: float | None = None
    discover: bool = False
    limit: int | None = None
    write_existing: bool = True
    profile: str | None = None
    journal: str | None = None
    max_seconds: float | None = None


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (VmHWM), in MiB.

    Not `ru_maxrss`: Linux carries that over from the parent across fork and exec, so a
    child of a big harness process would report the parent's size.
    """
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_rss_mb() -> float:
    """This process's resident memory now, in MiB."""
    with open("/proc/self/statm") as file:
        pages = int(file.read().split()[1])
    return pages * resource.getpagesize() / (1 << 20)


class MeteredAccount(Account):
    """An `Account` that also counts request and response body bytes.

    The engine reports requests but not bytes; this wraps its one request attempt (a
    private method, so it may need updating when the client changes). It adds one
    coroutine frame per request, about a microsecond, next to ~400 µs of work.
    """

    bytes_sent = 0
    bytes_received = 0

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        data: bytes | None,
        headers: dict[str, str] | None,
        prepaid: bool = False,
    ) -> Answer:
        answer = await super()._attempt(session, method, url, data, headers, prepaid)
        self.bytes_sent += len(data) if data else 0
        self.bytes_received += len(answer.body)
        return answer


class MeteredV3Client(V3Client):
    """A `V3Client` that also counts request and response body bytes (its one attempt, a
    private method, wrapped as `MeteredAccount` wraps v1's)."""

    bytes_sent = 0
    bytes_received = 0

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        body: bytes | None,
        token: str,
        prepaid: bool,
    ) -> Answer:
        answer = await super()._attempt(session, method, url, body, token, prepaid)
        self.bytes_sent += len(body) if body else 0
        self.bytes_received += len(answer.body)
        return answer


def v3_access_token(job: Job) -> str:
    """The access token the simulator's hook issued for this run (for the bare loops)."""
    if job.tokens is None:
        raise ValueError("a V3 job needs the issued tokens")
    issued: dict[str, Any] = json.loads(Path(job.tokens).read_text(encoding="utf-8"))
    return str(issued["access_token"])


def v3_client(job: Job) -> MeteredV3Client:
    """The engine's V3 client as the CLI builds it after `login`: the tokens in a token file
    (0600 in a 0700 folder), the same governor and retry policy as v1's account."""
    if job.tokens is None or job.auth_url is None:
        raise ValueError("a V3 job needs the issued tokens and the authorization server")
    issued = json.loads(Path(job.tokens).read_text(encoding="utf-8"))
    store = FileTokenStore(Path(job.tokens).parent / "tokens" / f"v3-{V3_CLIENT_ID}.json")
    store.save(TokenSet.from_response(issued, time.time()))
    endpoints = OAuthEndpoints(V3_CLIENT_ID, auth_url=job.auth_url, ca_file=job.ca_path)
    return MeteredV3Client(
        V3Auth(endpoints, store=store),
        base_url=job.base_url,
        ca_file=job.ca_path,
        governor=RateGovernor(rate=job.rate, discover=job.discover, concurrency=job.concurrency),
        retry=RetryPolicy(),
        timeout=300,
    )


async def run_engine(job: Job) -> dict[str, Any]:
    """Migrate `job.source` through the real engine; figures of the run."""
    c = job.concurrency
    client: MeteredAccount | MeteredV3Client
    if job.api == "v3":
        client = v3_client(job)
    else:
        client = MeteredAccount(
            CREDENTIALS,
            base_url=job.base_url,
            ca_file=job.ca_path,
            governor=RateGovernor(rate=job.rate, discover=job.discover, concurrency=c),
            retry=RetryPolicy(),
            timeout=300,
        )
    config = MigrationConfig(
        lists=job.lists,
        read=ReadOptions(lists_column=job.lists_column),
        bulk_threshold=25 if job.bulk else None,
        limits=StageLimits(fetch=max(4, c // 16), put=c, bulk=4),
        queue_size=max(1024, 4 * c),
        # The simulator finishes an activity in ~0.2 s (the real API takes minutes): polls
        # start and cap low so that the bulk figures measure the engine, not its waits.
        poll_initial=0.2,
        poll_max=1.0,
        append_writes=job.append,
    )
    timeline: list[tuple[float, int, float, int]] = []

    def sample(progress: Progress) -> None:
        timeline.append(
            (
                round(progress.elapsed, 3),
                progress.rows_done,
                round(current_rss_mb(), 1),
                progress.requests,
            )
        )

    stop = anyio.Event()

    async def stop_later(seconds: float) -> None:
        await anyio.sleep(seconds)
        stop.set()

    async with client, anyio.create_task_group() as tg:
        if job.max_seconds is not None:
            tg.start_soon(stop_later, job.max_seconds)
        cpu, wall = time.process_time(), time.perf_counter()
        report = await migrate(
            V3Backend(client) if isinstance(client, V3Client) else client,
            Path(job.source),
            config=config,
            report=Path(job.report) if job.report else None,
            journal=Path(job.journal) if job.journal else None,
            stop=stop,
            grace=5.0,
            on_progress=sample,
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        tg.cancel_scope.cancel()
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "rows": sum(report.outcomes.values()),
        "rows_read": report.rows,
        "stopped": stop.is_set(),
        "emails": report.emails,
        "outcomes": {k: v for k, v in report.outcomes.items() if v},
        "requests": report.requests,
        "retries": report.retries,
        "throttles": report.throttles,
        "activities": report.activities,
        "polls": report.polls,
        "bytes_sent": client.bytes_sent,
        "bytes_received": client.bytes_received,
        "bulk_enabled": report.bulk_enabled,
        "timeline": timeline,
    }


def _run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run like the CLI does: on uvloop when the `fast` extra is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: T = uvloop.run(coro)
    return result


def _dispatch(job: Job) -> Coroutine[Any, Any, dict[str, Any]]:
    if job.client == "engine":
        return run_engine(job)
    if job.client == "ceiling":
        from benchmarks.ceiling import run_ceiling, run_ceiling_v3

        return run_ceiling_v3(job) if job.api == "v3" else run_ceiling(job)
    from benchmarks.naive import run_naive, run_naive_v3

    return run_naive_v3(job) if job.api == "v3" else run_naive(job)


def main(argv: list[str] | None = None) -> None:
    """Run the job given as JSON in the first argument; print the result as JSON."""
    raw = json.loads((argv if argv is not None else sys.argv[1:])[0])
    raw["lists"] = tuple(raw.get("lists", ()))
    job = Job(**raw)
    if job.client == "engine":
        tune_process()  # as the command line does
    base_rss = current_rss_mb()
    profiler = cProfile.Profile() if job.profile else None
    if profiler is not None:
        profiler.enable()
    result = _run_loop(_dispatch(job))
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(job.profile))
    result["rss_base_mb"] = base_rss
    result["rss_peak_mb"] = peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
