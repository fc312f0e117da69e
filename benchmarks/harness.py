"""The harness: runs, repetitions, the measurement cache and the figures built from them.

A `RunSpec` says what one measured run is (which client, which workload, the engine's
settings and the simulator's). `Bench.measure` runs specs in fresh processes, each against
a fresh simulator process started with the spec's settings, repeats them (interleaved,
so that a noisy neighbour hurts every contender alike), and keeps the runs: a scenario that
needs a spec another scenario already measured in this harness run reuses those runs,
which is how every ratio is computed from figures of the same run.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from benchmarks.profiling import collapsed
from benchmarks.simulator_process import simulator_process
from benchmarks.workloads import Api, Workload, prepare, report_summary

__all__ = [
    "APIS",
    "Bench",
    "Figure",
    "Run",
    "RunSpec",
    "ScenarioResult",
    "Sizes",
    "Table",
    "Target",
    "spread",
]

Client = Literal["engine", "ceiling", "naive"]

#: Both APIs, in the order their columns and rows are shown.
APIS: tuple[Api, ...] = ("v1", "v3")

#: Seconds the simulator takes from an activity's POST to its completion (v1) or to its
#: processing (V3, which then applies its rows as fast as the simulator can): short, so the
#: bulk figures measure the engine rather than a wait (the real API takes minutes).
ACTIVITY_DELAY = 0.2
#: The V3 simulator's processing pace, in rows per second: unlimited in effect (its
#: default, 1,000/s, is the real API's order of magnitude, and would make a million-contact
#: run last a quarter of an hour of waiting).
V3_ROWS_PER_SECOND = 1e9
#: The V3 simulator's daily quota when a run is about the rate: out of reach (the quota is
#: not what is measured; `budget` computes days from requests per contact).
V3_NO_QUOTA = 10**9


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec:
    """One kind of measured run.

    Attributes:
        client: the engine, the ceiling loop or the naive baseline.
        workload: the account and the source.
        api: the API and its simulator: `v1` (XML, basic auth) or `v3` (JSON, OAuth2).
        concurrency: requests in flight (the engine's governor cap and put workers).
        bulk: let the engine's planner send batches of 25 or more as bulk activities
            (its default); False forces the per-contact path.
        rate: the engine's configured rate limit (None: none until throttled).
        discover: the governor starts at `rate` and looks above it for the server's limit
            (the CLI's `--discover-rate`).
        limit: process only the first `limit` rows (the naive baseline's sample).
        latency_ms: latency the simulator adds to every API request.
        sim_rate: the simulator's rate limit in requests/s (None: none).
        profile: run under cProfile (the figures are then not comparable).
        journal: keep the engine's resume journal, as the CLI does by default.
        max_seconds: stop the engine after this long (its graceful stop); the figures
            cover the rows it finished.
        append: V3 only: an existing contact that only gains lists is appended by id
            (`add_list_memberships`, the engine's default); False sends its PUT instead
            (`append_writes=False`, the CLI's `--no-append`).
    """

    client: Client = "engine"
    workload: Workload
    api: Api = "v1"
    concurrency: int = 64
    bulk: bool = False
    rate: float | None = None
    discover: bool = False
    limit: int | None = None
    latency_ms: float = 0.0
    sim_rate: float | None = None
    profile: bool = False
    journal: bool = True
    max_seconds: float | None = None
    append: bool = True

    @property
    def label(self) -> str:
        """A short human name, e.g. `v1 engine existing-10000 c=64 per-contact`."""
        parts = [self.api, self.client, self.workload.name]
        if self.client != "naive":
            parts.append(f"c={self.concurrency}")
        if self.client == "engine":
            parts.append("planner" if self.bulk else "per-contact")
        if self.api == "v3" and not self.append and self.client != "naive":
            parts.append("no-append")
        if self.rate is not None:
            parts.append(f"rate={self.rate:g}" + (" discover" if self.discover else ""))
        if self.limit is not None:
            parts.append(f"first {self.limit}")
        if self.latency_ms:
            parts.append(f"{self.latency_ms:g} ms")
        if self.sim_rate is not None:
            parts.append(f"limit {self.sim_rate:g}/s")
        return " ".join(parts)

    def simulator_args(self) -> list[str]:
        """The `python -m engine simulate` options of this run.

        V3: no rate limit, daily quota or token-endpoint limit (`--no-limits`) unless the
        run is about the rate; then the limit is `sim_rate` (its 429 `throttled`), the
        quota out of reach and the token endpoint at its default (no token is refreshed).
        """
        args = ["--activity-delay", str(ACTIVITY_DELAY), "--latency-ms", str(self.latency_ms)]
        if self.api == "v3":
            args = ["--api", "v3", *args]
            args += ["--activity-rows-per-second", str(V3_ROWS_PER_SECOND)]
            if self.sim_rate is None:
                return [*args, "--no-limits"]
            return [*args, "--rate-limit", str(self.sim_rate), "--daily-quota", str(V3_NO_QUOTA)]
        if self.sim_rate is not None:
            args += ["--rate-limit", str(self.sim_rate)]
        return args


@dataclass(slots=True)
class Run:
    """One measured run.

    Attributes:
        spec: what ran.
        rep: its repetition number (0-based).
        result: what the child reported (wall, CPU, memory, outcomes, requests, …).
        sim: the simulator's side: `by_route`, `by_status`, `cpu_s`, `rss_peak_mb`.
    """

    spec: RunSpec
    rep: int
    result: dict[str, Any]
    sim: dict[str, Any]

    @property
    def rows(self) -> int:
        """Rows with an outcome (all of them unless the run was stopped)."""
        return int(self.result["rows"])

    @property
    def wall(self) -> float:
        """Seconds, from before the first request to the last outcome."""
        return float(self.result["wall_s"])

    def per_row(self, value: float) -> float:
        """`value` per row; NaN for a run stopped before any row was done."""
        return value / self.rows if self.rows else math.nan

    @property
    def contacts_per_s(self) -> float:
        """Rows per second of wall time."""
        return self.rows / self.wall

    @property
    def cpu_us_per_contact(self) -> float:
        """Client CPU (user + system, all threads) per row, in µs."""
        return self.per_row(1e6 * float(self.result["cpu_s"]))

    @property
    def sim_cpu_us_per_contact(self) -> float:
        """Simulator CPU per row, in µs."""
        return self.per_row(1e6 * float(self.sim["cpu_s"]))

    @property
    def api(self) -> Api:
        """The API it ran against."""
        return self.spec.api

    @property
    def throttled(self) -> int:
        """Throttle answers the simulator sent (v1: 403 with the rate-limit text; V3: 429)."""
        status = "429" if self.spec.api == "v3" else "403"
        return int(self.sim["by_status"].get(status, 0)) if self.spec.sim_rate else 0

    @property
    def answered(self) -> int:
        """Requests the simulator answered without throttling them."""
        return sum(int(v) for v in self.sim["by_route"].values()) - self.throttled

    @property
    def setup_requests(self) -> int:
        """The requests of the set-up, once per run: v1's service document and lists feed;
        V3's check of the token (`GET contact_lists?limit=1`) and its lists (one page).
        V3's bulk path reads the lists again to settle an activity: those are not set-up."""
        routes = self.sim["by_route"]
        if self.spec.api == "v3":
            return min(2, int(routes.get("GET contact_lists", 0)))
        return int(routes.get("GET /", 0) + routes.get("GET lists", 0))

    @property
    def requests(self) -> int:
        """Requests of the migration itself: answered, without the set-up."""
        return self.answered - self.setup_requests

    @property
    def requests_per_contact(self) -> float:
        """`requests` per row."""
        return self.per_row(self.requests)

    def route(self, name: str) -> int:
        """Answers to one route, e.g. `PUT contacts/{id}`."""
        return int(self.sim["by_route"].get(name, 0))

    def as_json(self) -> dict[str, Any]:
        """The raw record, as written to results.json."""
        spec = asdict(self.spec)
        spec["label"] = self.spec.label
        return {"spec": spec, "rep": self.rep, "result": self.result, "sim": self.sim}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Run:
        """The run `as_json` wrote."""
        spec = {k: v for k, v in record["spec"].items() if k != "label"}  # older: no api
        spec["workload"] = Workload(**spec["workload"])
        return cls(RunSpec(**spec), int(record["rep"]), record["result"], record["sim"])


@dataclass(frozen=True, slots=True)
class Target:
    """A target a figure is held to (reported, never asserted).

    Attributes:
        op: `>=`, `<=` or `<`.
        value: the bound.
        text: how the issue states it.
    """

    op: Literal[">=", "<=", "<"]
    value: float
    text: str

    def met(self, value: float | None) -> bool | None:
        """Whether `value` meets the target (None when there is no value)."""
        if value is None:
            return None
        if self.op == ">=":
            return value >= self.value
        return value <= self.value if self.op == "<=" else value < self.value


@dataclass(frozen=True, slots=True)
class Figure:
    """One reported figure: the median of its repetitions, with their min and max.

    Attributes:
        scenario: the scenario's number and name.
        name: what is measured.
        unit: its unit.
        median: the median (None when it could not be measured).
        low: the smallest repetition.
        high: the largest repetition.
        reps: how many repetitions.
        target: the target it is held to, if any.
        met: whether the median meets it.
        note: how it was computed, when that is not obvious.
        api: the API it was measured on (`v1`, `v3`); "" when it is not one API's. The
            summary pairs the figures of one name side by side, a column per API.
    """

    scenario: str
    name: str
    unit: str
    median: float | None
    low: float | None
    high: float | None
    reps: int
    target: str = ""
    met: bool | None = None
    note: str = ""
    api: str = ""


@dataclass(slots=True)
class Table:
    """A table of a scenario, for results.md and the console.

    Attributes:
        title: its heading.
        headers: column names.
        rows: cells, already formatted.
    """

    title: str
    headers: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        """The table in Markdown."""
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.headers) + " |"]
        lines.append("| " + " | ".join("---" for _ in self.headers) + " |")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass(slots=True)
class ScenarioResult:
    """What a scenario reports.

    Attributes:
        key: its `--only` name.
        title: its number and title.
        figures: its figures.
        tables: extra tables.
        notes: sentences for the reader (how it was measured, caveats).
        data: numbers for its plot.
    """

    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def figure(
        self,
        name: str,
        unit: str,
        values: Iterable[float],
        *,
        target: Target | None = None,
        note: str = "",
        api: str = "",
    ) -> Figure:
        """Add the figure of `values` (one per repetition) and return it.

        A NaN (a per-contact figure of a run stopped before its first contact) is left out,
        and the note says how many repetitions remain.
        """
        given = list(values)
        got = [v for v in given if not math.isnan(v)]
        if len(got) < len(given):
            kept = f"{len(got)} of {len(given)} repetitions (the others finished no contact)"
            note = f"{note}; {kept}" if note else kept
        median, low, high = spread(got)
        item = Figure(
            self.title,
            name,
            unit,
            median,
            low,
            high,
            len(got),
            target.text if target else "",
            target.met(median) if target else None,
            note,
            api,
        )
        self.figures.append(item)
        return item


def spread(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """(median, min, max), or Nones for no values."""
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    """How big and how often: the full run and `--quick` differ only here.

    Attributes:
        reps: repetitions of every measured run.
        per_contact: rows of the no-latency per-contact runs (and their ceiling).
        latency: concurrency -> rows, for the 100 ms runs.
        rate_seconds: how long a rate-limited run should last.
        rates: the simulator's rate limits (requests/s).
        bulk: the two bulk sizes.
        mixed: rows of the mixed source.
        naive_sample: rows the naive baseline migrates (it is sequential: its rate does
            not depend on how many).
        naive_engine: rows of the support thread's source that the engine migrates.
        budget_rows: rows of the 70%-existing source that measure requests per contact.
        memory_small: the smaller size of the memory comparison.
        memory_per_contact: the larger size on the per-contact path.
        memory_bulk: the larger size on the bulk path.
        profile: profile the per-contact path after the scenarios.
        bulk_v3: the two bulk sizes on V3. Its larger size is also the larger size of
            V3's bulk memory comparison.
        memory_per_contact_v3: the larger size on V3's per-contact path.
        discovery_seconds: how long a rate-limited run lasts when the engine must discover
            the limit (from the documented 4/s: longer than a configured run's, since the
            first seconds go to finding it).
    """

    reps: int
    per_contact: int
    latency: dict[int, int]
    rate_seconds: float
    rates: tuple[float, ...]
    bulk: tuple[int, int]
    mixed: int
    naive_sample: int
    naive_engine: int
    budget_rows: int
    memory_small: int
    memory_per_contact: int
    memory_bulk: int
    profile: bool
    bulk_v3: tuple[int, int] = (10_000, 50_000)
    memory_per_contact_v3: int = 30_000
    discovery_seconds: float = 60.0


FULL = Sizes(
    reps=3,
    per_contact=10_000,
    latency={8: 500, 32: 2_000, 128: 6_000},
    rate_seconds=10.0,
    rates=(4.0, 40.0),
    bulk=(100_000, 1_000_000),
    mixed=10_000,
    naive_sample=40,
    naive_engine=1_000,
    budget_rows=10_000,
    memory_small=10_000,
    memory_per_contact=100_000,
    memory_bulk=1_000_000,
    profile=True,
    bulk_v3=(100_000, 1_000_000),
    memory_per_contact_v3=30_000,
)

QUICK = Sizes(
    reps=1,
    per_contact=1_500,
    latency={8: 100, 32: 200, 128: 500},
    rate_seconds=3.0,
    rates=(40.0,),
    bulk=(10_000, 50_000),
    mixed=1_200,
    naive_sample=10,
    naive_engine=200,
    budget_rows=1_500,
    memory_small=1_500,
    memory_per_contact=6_000,
    memory_bulk=50_000,
    profile=False,
    bulk_v3=(10_000, 20_000),
    memory_per_contact_v3=4_000,
    discovery_seconds=10.0,
)


def py_spy() -> str | None:
    """The py-spy executable, if installed (beside this Python or on PATH)."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


class Bench:
    """Runs specs and keeps their runs for every scenario of this harness run.

    `apis` are the APIs the scenarios run on (both by default; `--api` picks one; a
    results file of older runs has only v1's).

    Args:
        sizes: the sizes and repetitions.
        folder: where workloads, reports and profiles go (a temporary folder).
        log: called with a progress line per run.
        code: the folder the simulator and client processes run in, holding the `engine`
            and `benchmarks` packages they import (a snapshot taken at the start, so that
            edits to the work tree during a run do not mix two versions); None: the
            current folder.
    """

    def __init__(
        self, sizes: Sizes, folder: Path, log: Callable[[str], None], code: Path | None = None
    ) -> None:
        self.sizes = sizes
        self.folder = folder
        self.code = code
        self.apis: tuple[Api, ...] = APIS
        self._log = log
        self._runs: dict[RunSpec, list[Run]] = {}
        self._count = 0
        self._frozen = False
        self._started = time.monotonic()

    @property
    def runs(self) -> list[Run]:
        """Every run so far, in the order they ran."""
        return sorted(
            (run for runs in self._runs.values() for run in runs),
            key=lambda r: r.result.get("finished", 0.0),
        )

    def preload(self, runs: Iterable[Run]) -> None:
        """Take runs measured earlier (from a results.json); measure nothing new after."""
        for run in runs:
            self._runs.setdefault(run.spec, []).append(run)
        self.apis = tuple(api for api in APIS if any(s.api == api for s in self._runs))
        self._frozen = True

    def measure(self, *specs: RunSpec, reps: int | None = None) -> list[list[Run]]:
        """The runs of each spec: measured now (interleaved) unless measured already."""
        count = self.sizes.reps if reps is None else reps
        missing = [s for s in dict.fromkeys(specs) if len(self._runs.get(s, [])) < count]
        if self._frozen:
            if missing:
                raise LookupError(f"not in the results file: {missing[0].label}")
            return [self._runs[s] for s in specs]
        for rep in range(count):
            for spec in missing:
                runs = self._runs.setdefault(spec, [])
                if len(runs) <= rep:
                    runs.append(self._run(spec, rep, count))
        return [self._runs[s][:count] for s in specs]

    def _run(self, spec: RunSpec, rep: int, reps: int) -> Run:
        prepared = prepare(spec.workload, self.folder / "workloads", spec.api)
        self._count += 1
        scratch = self.folder / "runs" / str(self._count)
        scratch.mkdir(parents=True)
        with simulator_process(spec.simulator_args(), state=prepared.state, cwd=self.code) as sim:
            tokens = None
            if spec.api == "v3":
                # A login without a browser: the simulator's hook mints the tokens, and the
                # child keeps them in a token file as `python -m engine login` would.
                tokens = scratch / "issued-tokens.json"
                tokens.touch(mode=0o600)
                tokens.write_text(json.dumps(sim.issue_tokens()), encoding="utf-8")
            sim.reset_stats()
            sim_cpu = sim.cpu_seconds()
            job = {
                "client": spec.client,
                "api": spec.api,
                "auth_url": sim.auth_url,
                "tokens": str(tokens) if tokens else None,
                "append": spec.append,
                "base_url": sim.base_url,
                "ca_path": str(sim.ca_path) if sim.ca_path else None,
                "source": str(prepared.source),
                "lists": list(spec.workload.lists),
                "lists_column": spec.workload.lists_column,
                "report": str(scratch / "report.jsonl"),
                "concurrency": spec.concurrency,
                "bulk": spec.bulk,
                "rate": spec.rate,
                "discover": spec.discover,
                "limit": spec.limit,
                "write_existing": spec.workload.kind != "unchanged",
                "profile": str(scratch / "profile.pstats") if spec.profile else None,
                "journal": str(scratch / "journal.sqlite") if spec.journal else None,
                "max_seconds": spec.max_seconds,
            }
            command = [sys.executable, "-m", "benchmarks.child", json.dumps(job)]
            if spec.profile and (spy := py_spy()):
                # py-spy samples the child from outside (async frames attributed correctly);
                # without it the child profiles itself with cProfile.
                job["profile"] = None
                command[-1] = json.dumps(job)
                flame = scratch / "py-spy.txt"
                command = [spy, "record", "--format", "raw", "--nolineno", "--rate", "250", "-o"]
                command += [str(flame), "--", sys.executable, "-m", "benchmarks.child"]
                command.append(json.dumps(job))
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=3600, cwd=self.code
            )
            if done.returncode != 0:
                raise RuntimeError(f"{spec.label} failed:\n{done.stderr[-4000:]}")
            last = [line for line in done.stdout.splitlines() if line.startswith("{")][-1]
            result: dict[str, Any] = json.loads(last)
            stats = sim.stats()
            side = {
                "by_route": stats["by_route"],
                "by_status": stats["by_status"],
                "cpu_s": sim.cpu_seconds() - sim_cpu,
                "rss_peak_mb": sim.peak_rss_mb(),
            }
        result["finished"] = round(time.monotonic() - self._started, 3)
        result["scratch"] = str(scratch)
        # What a scenario needs from the run's files, kept with it (the files go away).
        if spec.workload.kind == "mixed" and spec.client == "engine":
            result["report"] = report_summary(prepared, scratch / "report.jsonl")
        if (scratch / "py-spy.txt").exists():
            result["py_spy"] = collapsed(scratch / "py-spy.txt")
        run = Run(spec, rep, result, side)
        self._log(
            f"[{result['finished']:7.1f}s] {spec.label}, rep {rep + 1}/{reps}: "
            f"{run.rows:,} rows in {run.wall:.2f}s = {run.contacts_per_s:,.0f}/s, "
            f"{run.requests_per_contact:.4f} req/row, {run.cpu_us_per_contact:,.0f} µs CPU/row, "
            f"peak {result['rss_peak_mb']:.0f} MB"
        )
        return run
