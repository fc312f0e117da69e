"""The scenarios of issues 5, 12 and 13, one function each, on both APIs; every figure comes
from runs of this run.

Each function asks the `Bench` for the runs it needs (measuring them unless another
scenario already did) on each API of `bench.apis`, and turns them into figures (tagged with
their API, so that the summary shows one column per API), tables (a row per API) and plot
data. Ratios pair repetition i of one contender with repetition i of the other: they ran
next to each other in time.
"""

from __future__ import annotations

import math
import pstats
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import Bench, Run, RunSpec, ScenarioResult, Table, Target, spread
from benchmarks.profiling import package
from benchmarks.workloads import Api, Kind, Workload
from engine.backend.governor import DOCUMENTED_RATE

__all__ = ["API_NAMES", "SCENARIOS", "fmt"]

LATENCY_MS = 100.0
DAILY_BUDGET = 10_000
BUDGET_CONTACTS = 1_000_000
#: How the tables name each API.
API_NAMES: dict[str, str] = {"v1": "v1", "v3": "V3"}


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for people: thousands separators, about `digits` significant digits."""
    if value is None or math.isnan(value):
        return "n/a"
    if value == int(value) and abs(value) >= 1:
        return f"{int(value):,}"
    if value == 0:
        return "0"
    size = abs(value)
    if size >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    decimals = digits - 1 - math.floor(math.log10(size))
    return f"{value:,.{decimals}f}"


def _pairs(a: Sequence[Run], b: Sequence[Run], value: Callable[[Run], float]) -> list[float]:
    """value(a_i) / value(b_i) for each repetition i."""
    return [value(x) / value(y) for x, y in zip(a, b, strict=False)]


def _median(runs: Sequence[Run], value: Callable[[Run], float]) -> float | None:
    return spread([value(r) for r in runs])[0]


# --- 1 and 2 ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """One kind of contact of the per-contact path on one API.

    Attributes:
        api: the API.
        key: its name in the figures (`existing`, `existing, PUT`, `new`, `unchanged`).
        kind: the workload.
        append: V3: existing contacts gaining a list are appended by id (the default).
        what: the requests it takes, for the tables.
        target: its requests/contact target.
    """

    api: Api
    key: str
    kind: Kind
    what: str
    target: float
    append: bool = True


CASES: tuple[Case, ...] = (
    Case(
        "v1", "existing", "existing", "existing contact gains a list (search/50 + GET + PUT)", 2.05
    ),
    Case("v1", "new", "new", "new contact (search/50 + POST)", 1.05),
    Case("v1", "unchanged", "unchanged", "already on the target (search/50 + GET)", 1.05),
    Case(
        "v3",
        "existing",
        "existing",
        "existing contact gains a list (lookup + its share of an append of 500, polls)",
        1.05,
    ),
    Case(
        "v3",
        "existing, PUT",
        "existing",
        "existing contact gains a list, `--no-append` (lookup + PUT)",
        2.05,
        append=False,
    ),
    Case("v3", "new", "new", "new contact (lookup + POST)", 2.05),
    Case("v3", "unchanged", "unchanged", "already on the target (lookup)", 1.05),
)


def _cases(bench: Bench) -> list[Case]:
    return [case for case in CASES if case.api in bench.apis]


def _per_contact(bench: Bench) -> dict[Case, tuple[list[Run], list[Run]]]:
    """(ceiling runs, engine runs) per case, measured together, interleaved."""
    n = bench.sizes.per_contact
    cases = _cases(bench)
    specs = [
        spec
        for case in cases
        for spec in (
            RunSpec(
                client="ceiling", workload=Workload(case.kind, n), api=case.api, append=case.append
            ),
            RunSpec(workload=Workload(case.kind, n), api=case.api, append=case.append),
        )
    ]
    runs = bench.measure(*specs)
    return {case: (runs[2 * i], runs[2 * i + 1]) for i, case in enumerate(cases)}


def ceiling(bench: Bench) -> ScenarioResult:
    """1. The bare aiohttp loop: the best a Python client can do against this simulator."""
    result = ScenarioResult("ceiling", "1. Ceiling (bare aiohttp loop)")
    for case, (top, _) in _per_contact(bench).items():
        api, key = case.api, case.key
        result.figure(
            f"ceiling contacts/s, {key}", "contacts/s", [r.contacts_per_s for r in top], api=api
        )
        result.figure(
            f"ceiling client CPU/contact, {key}", "µs", [r.cpu_us_per_contact for r in top], api=api
        )
        result.figure(
            f"simulator CPU/contact under the ceiling, {key}",
            "µs",
            [r.sim_cpu_us_per_contact for r in top],
            api=api,
        )
    result.notes.append(
        f"{bench.sizes.per_contact:,} contacts, concurrency 64, no latency, https. The client "
        "and the simulator each have one of the two cores; the simulator's CPU per contact "
        "shows which of the two is the bottleneck (a core gives 1,000,000 µs/s). v1: the "
        "engine's requests and shape (4 search workers of 50 emails, 64 write workers). V3: "
        "64 workers, each looking one email up (`GET /contacts?email=…&status=all&include="
        "list_memberships,phone_numbers,street_addresses`, the engine's lookup) and then "
        "writing: the id into an `add_list_memberships` of 500 (polled from 0.2 s, each wait "
        "half as long again up to 1 s, as the engine), or a PUT of the contact with the list "
        "added (`existing, PUT`), or a POST."
    )
    return result


def per_contact(bench: Bench) -> ScenarioResult:
    """2. The engine's per-contact path with no latency, against the ceiling."""
    result = ScenarioResult("per-contact", "2. Per-contact path, no latency")
    rows: list[list[str]] = []
    data: dict[str, object] = {}
    for case, (top, engine) in _per_contact(bench).items():
        api, key = case.api, case.key
        speed = result.figure(
            f"engine contacts/s, {key}",
            "contacts/s",
            [r.contacts_per_s for r in engine],
            target=Target(">=", 2000, "≥ 2,000 (issue 3)"),
            api=api,
        )
        cpu = result.figure(
            f"engine CPU/contact, {key}", "µs", [r.cpu_us_per_contact for r in engine], api=api
        )
        rpc = result.figure(
            f"requests/contact, {key}",
            "requests",
            [r.requests_per_contact for r in engine],
            target=Target("<=", case.target, f"≤ {case.target}"),
            api=api,
        )
        ratio = result.figure(
            f"engine / ceiling, {key}",
            "ratio",
            _pairs(engine, top, lambda r: r.contacts_per_s),
            target=Target(">=", 0.7, "≥ 0.7"),
            note="contacts/s of each engine repetition over the ceiling run next to it",
            api=api,
        )
        result.figure(
            f"engine CPU / ceiling CPU, {key}",
            "ratio",
            _pairs(engine, top, lambda r: r.cpu_us_per_contact),
            target=Target("<=", 1.4, "≤ 1.4 (issue 13)") if key == "existing" else None,
            note="CPU per contact of each engine repetition over the ceiling run next to it",
            api=api,
        )
        rows.append(
            [
                case.what,
                API_NAMES[api],
                fmt(rpc.median),
                fmt(speed.median),
                fmt(_median(top, lambda r: r.contacts_per_s)),
                fmt(ratio.median, 2),
                fmt(cpu.median),
                fmt(_median(engine, lambda r: r.sim_cpu_us_per_contact)),
            ]
        )
        data[f"{key}\n{API_NAMES[api]}"] = {
            "engine": [r.contacts_per_s for r in engine],
            "ceiling": [r.contacts_per_s for r in top],
        }
    result.tables.append(
        Table(
            "Per-contact path, no latency (medians)",
            [
                "contacts",
                "API",
                "requests/contact",
                "engine contacts/s",
                "ceiling contacts/s",
                "engine/ceiling",
                "engine CPU µs/contact",
                "simulator CPU µs/contact",
            ],
            rows,
        )
    )
    result.notes.append(
        f"{bench.sizes.per_contact:,} contacts per run, concurrency 64 (governor cap and put "
        "workers; the fetch stage's lookups in flight as the engine sets them: v1 `max(4, "
        "C/16)` searches of 50, V3 one-email lookups, which give the lists), bulk off "
        "(`bulk_threshold=None`), uvloop, a journal as the CLI keeps by default. Requests "
        "per contact exclude the two set-up requests (v1: service document, lists feed; V3: "
        "the token check and the lists). V3's existing contacts have the row's names, so "
        "they only gain a list: appended by id (`add_list_memberships`, 500 ids a request, "
        "then its polls), or with `--no-append` (`append_writes=False`) written by a PUT."
    )
    result.data = data
    return result


# --- 3 ------------------------------------------------------------------------------------


def steady_rate(run: Run) -> float | None:
    """Contacts/s between 10% and 90% done (from the once-a-second progress samples).

    Leaves out the set-up requests and the pipeline's fill and drain; None for a run too
    short to have two samples in that span. On V3 a contact whose list is appended is done
    only when its append's activity is (500 at a time, or at the end of the input), so
    there the span is 10% to 90% of the run's requests, and contacts/s is requests/s over
    the run's requests per contact.
    """
    timeline = run.result.get("timeline", [])
    if run.api == "v3":
        total = timeline[-1][3] if timeline else 0
        inside = [(p[0], p[3]) for p in timeline if total and 0.1 <= p[3] / total <= 0.9]
        scale = run.requests_per_contact or math.nan
    else:
        inside = [(p[0], p[1]) for p in timeline if 0.1 <= p[1] / run.rows <= 0.9]
        scale = 1.0
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    (t0, d0), (t1, d1) = inside[0], inside[-1]
    return float((d1 - d0) / (t1 - t0) / scale)


def latency(bench: Bench) -> ScenarioResult:
    """3. 100 ms of latency at concurrency 8, 32, 128, against C / (rpc × latency)."""
    result = ScenarioResult("latency", "3. Per-contact path, 100 ms latency")
    points: dict[str, list[dict[str, Any]]] = {}
    for api in bench.apis:
        specs = [
            RunSpec(workload=Workload("existing", n), concurrency=c, latency_ms=LATENCY_MS, api=api)
            for c, n in bench.sizes.latency.items()
        ]
        for spec, runs in zip(specs, bench.measure(*specs), strict=True):
            c = spec.concurrency

            def bound(run: Run, c: int = c) -> float:
                return c / (run.requests_per_contact * LATENCY_MS / 1000)

            got = result.figure(
                f"contacts/s at concurrency {c}",
                "contacts/s",
                [r.contacts_per_s for r in runs],
                api=api,
            )
            limit = result.figure(
                f"bound C/(rpc × 100 ms) at concurrency {c}",
                "contacts/s",
                [bound(r) for r in runs],
                api=api,
            )
            result.figure(
                f"achieved / bound at concurrency {c}",
                "ratio",
                [r.contacts_per_s / bound(r) for r in runs],
                target=Target(">=", 0.9, "≥ 0.9 (within 10%)"),
                note="wall time includes set-up (2 requests) and pipeline fill and drain",
                api=api,
            )
            steady = [(s, bound(r)) for r in runs if (s := steady_rate(r)) is not None]
            result.figure(
                f"steady-state / bound at concurrency {c}",
                "ratio",
                [s / b for s, b in steady],
                note="contacts/s between 10% and 90% done (V3: requests/s between 10% and "
                "90% of the requests, over requests per contact), over the bound",
                api=api,
            )
            result.figure(
                f"engine CPU busy at concurrency {c}",
                "cores",
                [float(r.result["cpu_s"]) / r.wall for r in runs],
                note="engine CPU seconds per wall second: near 1 means CPU-bound, not "
                "latency-bound",
                api=api,
            )
            points.setdefault(API_NAMES[api], []).append(
                {
                    "concurrency": c,
                    "median": got.median,
                    "low": got.low,
                    "high": got.high,
                    "bound": limit.median,
                    "cpu_us": _median(runs, lambda r: r.cpu_us_per_contact),
                }
            )
    result.data = {"by_api": points}
    result.notes.append(
        "Existing contacts gaining a list; "
        + ", ".join(f"{n:,} contacts at concurrency {c}" for c, n in bench.sizes.latency.items())
        + " (runs of about 12 s on v1 in the full run); the bound uses the requests per "
        "contact measured in the same repetition. The engine's CPU busy time tells a CPU "
        "limit from a latency one. On V3 a contact is one lookup (its list is appended by "
        "id, 500 a request, after the last lookup), so the bound is about twice v1's; the "
        "wall time includes the last "
        "append's activity and polls."
    )
    return result


# --- 4 ------------------------------------------------------------------------------------

#: Requests per contact a rate-limited run is sized by (existing contacts gaining a list).
RATE_RPC: dict[str, float] = {"v1": 2.02, "v3": 1.0}


def _rate_rpc_target(api: Api, n: int) -> Target:
    if api == "v1":
        return Target("<=", 2.05, "≤ 2.05")
    # One append and about two polls for the n contacts: their share is not small at 4/s.
    bound = 1.05 + 3 / n
    return Target("<=", bound, f"≤ {fmt(bound)} (1.05 + an append and 2 polls per {n:,})")


def rate(bench: Bench) -> ScenarioResult:
    """4. The simulator throttles at 4 and 40 requests/s; the engine knows the limit or not."""
    result = ScenarioResult("rate", "4. Rate-limited")
    rows = []
    plot = []
    for api in bench.apis:
        for limit in bench.sizes.rates:
            for mode in ("configured", "discovered"):
                seconds = (
                    bench.sizes.rate_seconds
                    if mode == "configured"
                    else bench.sizes.discovery_seconds
                )
                n = max(10, round(limit * seconds / RATE_RPC[api]))
                spec = RunSpec(
                    workload=Workload("existing", n),
                    api=api,
                    concurrency=8,
                    rate=limit if mode == "configured" else DOCUMENTED_RATE,
                    discover=mode == "discovered",
                    sim_rate=limit,
                    max_seconds=2 * seconds,
                )
                (runs,) = bench.measure(spec)
                name = f"{limit:g}/s, {mode}"
                achieved = result.figure(
                    f"achieved rate / limit, {name}",
                    "ratio",
                    [r.answered / r.wall / limit for r in runs],
                    target=Target(">=", 0.95, "≥ 0.95"),
                    note="answered (not throttled) requests, set-up included, over the wall time",
                    api=api,
                )
                if mode == "configured":
                    throttled = result.figure(
                        f"throttled answers, {name}",
                        "answers",
                        [r.throttled for r in runs],
                        target=Target("<=", 0, "0"),
                        api=api,
                    )
                else:
                    throttled = result.figure(
                        f"throttled answers / requests, {name}",
                        "%",
                        [100 * r.throttled / (r.answered + r.throttled) for r in runs],
                        target=Target("<", 2, "< 2% (issue 13)"),
                        api=api,
                    )
                rpc = result.figure(
                    f"requests/contact, {name}",
                    "requests",
                    [r.requests_per_contact for r in runs],
                    target=_rate_rpc_target(api, n),
                    api=api,
                )
                done = [r.rows for r in runs]
                rows.append(
                    [
                        name,
                        API_NAMES[api],
                        f"{min(done):,} of {n:,}" if min(done) < n else f"{n:,}",
                        fmt(achieved.median, 3),
                        fmt(throttled.median),
                        fmt(rpc.median),
                        fmt(_median(runs, lambda r: r.contacts_per_s)),
                        fmt(_median(runs, lambda r: r.wall)),
                    ]
                )
                plot.append(
                    {
                        "name": f"{name}\n{API_NAMES[api]}",
                        "median": achieved.median,
                        "low": achieved.low,
                        "high": achieved.high,
                    }
                )
    result.tables.append(
        Table(
            "Rate-limited runs (medians)",
            [
                "limit, engine",
                "API",
                "contacts",
                "achieved/limit",
                "throttled",
                "requests/contact",
                "contacts/s",
                "wall s",
            ],
            rows,
        )
    )
    result.notes.append(
        "A run that has not finished after twice its expected length is stopped (the "
        "engine's graceful stop); its figures cover the contacts it finished. "
        "Existing contacts gaining a list, per-contact path, the engine's default concurrency "
        "(8) and retry policy. The v1 simulator refuses over-limit requests with its v1 "
        "answer (403 with a rate-limit text, no Retry-After; token bucket of one second's "
        "requests), the V3 one with its own (429 `throttled`, no Retry-After). "
        "`configured`: the engine's governor is given the limit; `discovered`: it starts at "
        "the documented 4 requests/s and must find the limit (`--discover-rate`). Runs last "
        f"about {bench.sizes.rate_seconds:g} s (configured) and "
        f"{bench.sizes.discovery_seconds:g} s (discovered) at the limit: as many contacts "
        "as the limit × that "
        "time / the requests a contact takes (v1 2.02, V3 about 1: a lookup, the list "
        "appended by id at the end). On V3 the wall time ends with that append's activity "
        "and its polls (about half a second in the simulator, minutes on the real API), "
        "with no lookup left to send: it lowers the achieved rate of a run this short."
    )
    result.data = {"points": plot}
    return result


# --- 5 ------------------------------------------------------------------------------------

#: Reads of contacts: v1's membership check (a search, GETs of the probed contacts); V3's
#: too, and its read-back of each activity (pages of the target's members, lookups).
READ_ROUTES = ("GET contacts", "GET contacts?email", "GET contacts/{id}")


def _polls(run: Run) -> int:
    return run.route("GET activities/{id}")


def _reads(run: Run) -> int:
    """Reads of contacts (and, on V3, of the lists' member counts beyond the set-up)."""
    reads = sum(run.route(name) for name in READ_ROUTES)
    if run.api == "v3":
        reads += max(0, run.route("GET contact_lists") - run.setup_requests)
    return reads


def _bulk_spec(rows: int, api: Api = "v1", kind: Kind = "mix70") -> RunSpec:
    return RunSpec(workload=Workload(kind, rows), bulk=True, api=api)


def _bulk_sizes(bench: Bench, api: Api) -> tuple[int, int]:
    return bench.sizes.bulk_v3 if api == "v3" else bench.sizes.bulk


def bulk(bench: Bench) -> ScenarioResult:
    """5. The bulk path at two sizes: wall time, bytes, activities, polls, reads, memory."""
    result = ScenarioResult("bulk", "5. Bulk path")
    table = []
    timelines = {}
    for api in bench.apis:
        sizes = _bulk_sizes(bench, api)
        # The mixed source at both sizes, and new contacts only at the smaller one: no
        # witness for the probe in them, which the bulk path must prove cheaply (issue 13).
        runs_of: list[tuple[int, Kind]] = [(size, "mix70") for size in sizes]
        runs_of.append((min(sizes), "new"))
        for size, kind in runs_of:
            (runs,) = bench.measure(_bulk_spec(size, api, kind))
            name = f"{size:,} {'new ' if kind == 'new' else ''}contacts"
            wall = result.figure(
                f"wall time, {name}",
                "s",
                [r.wall for r in runs],
                target=Target("<", 20, "< 20 s (issue 13)") if size == 1_000_000 else None,
                api=api,
            )
            speed = result.figure(
                f"contacts/s, {name}", "contacts/s", [r.contacts_per_s for r in runs], api=api
            )
            rpc = result.figure(
                f"requests/contact without polls, {name}",
                "requests",
                [(r.requests - _polls(r)) / r.rows for r in runs],
                target=Target("<=", 0.001, "≤ 0.001 plus polls")
                if api == "v1" and kind == "mix70"
                else None,
                api=api,
            )
            bare = result.figure(
                f"requests/contact without polls and reads, {name}",
                "requests",
                [(r.requests - _polls(r) - _reads(r)) / r.rows for r in runs],
                target=Target("<=", 0.0001, "≤ 0.0001 plus polls and reads (issue 12)")
                if api == "v3" and size == max(sizes) and kind == "mix70"
                else None,
                api=api,
            )
            reads = result.figure(
                f"reads/contact (membership check, read-back), {name}",
                "requests",
                [_reads(r) / r.rows for r in runs],
                api=api,
            )
            sent = result.figure(
                f"request bytes sent, {name}",
                "MB",
                [r.result["bytes_sent"] / 1e6 for r in runs],
                api=api,
            )
            acts = result.figure(
                f"activities, {name}", "", [r.result["activities"] for r in runs], api=api
            )
            polls = result.figure(f"polls, {name}", "", [r.result["polls"] for r in runs], api=api)
            rss = result.figure(
                f"engine peak RSS, {name}", "MB", [r.result["rss_peak_mb"] for r in runs], api=api
            )
            table.append(
                [
                    name,
                    API_NAMES[api],
                    fmt(wall.median),
                    fmt(speed.median),
                    fmt(rpc.median, 2),
                    fmt(bare.median, 2),
                    fmt(reads.median, 2),
                    fmt(sent.median),
                    fmt(acts.median),
                    fmt(polls.median),
                    fmt(rss.median),
                    fmt(_median(runs, lambda r: r.result["cpu_s"])),
                    fmt(_median(runs, lambda r: r.sim["cpu_s"])),
                ]
            )
            timelines[f"{name} ({API_NAMES[api]})"] = runs[0].result.get("timeline", [])
    result.tables.append(
        Table(
            "Bulk path (medians)",
            [
                "source",
                "API",
                "wall s",
                "contacts/s",
                "requests/contact w/o polls",
                "w/o polls and reads",
                "reads/contact",
                "MB sent",
                "activities",
                "polls",
                "peak RSS MB",
                "engine CPU s",
                "simulator CPU s",
            ],
            table,
        )
    )
    result.notes.append(
        "70% of the contacts exist on another list, 30% are new (the `new contacts` runs: "
        "none exists, so the probe finds no witness: v1 proves it with a search per 50 "
        "contacts, V3 with a window of lookups and then the other lists' members, 500 a "
        "request); one target list; the planner "
        "with its default threshold (25), 4 activities in flight. The simulator completes an "
        "activity about 0.2 s after its POST (V3: starts processing it then) plus the time "
        "to apply its rows; the engine polls from 0.2 s, each wait half as long again up to "
        "1 s. Against the "
        "real API activities take minutes, so real wall time is theirs, not the engine's. "
        "Bytes are request bodies (v1: form-encoded activities; V3: JSON imports of 40,000 "
        "rows at most; both: the membership check's requests), without HTTP headers or TLS. "
        "Reads: v1's membership check (a search, each probed contact read before and after); "
        "V3's too, plus the read-back that settles each activity (V3 names no contact in an "
        "activity's errors): pages of 500 of the target's members updated while the "
        "activity ran (`updated_after`/`updated_before` its own stamps), with their lists, "
        "so a contact is read about once per activity in flight beside its own, whatever "
        "the list's size. Without polls and reads, V3 sends a JSON import per 40,000 rows "
        "(or per set of fields) and one more for the probe, each after a check of the "
        "recent activities (the lost-answer guard): about 4 requests plus 2 per 40,000 "
        "rows, so issue 12's ≤ 0.0001 is reachable only from about 60,000 contacts on; it "
        "is held to V3's larger size."
    )
    result.data = {"timelines": timelines}
    return result


# --- 6 ------------------------------------------------------------------------------------


def _split(summary: dict[str, Any], part: str) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for key, count in summary.get(part, {}).items():
        path, _, outcome = key.partition("|")
        counts[(path, outcome)] += count
    return counts


def _v1_costs(run: Run, emails: Counter[tuple[str, str]]) -> tuple[dict[str, float], float]:
    """v1: requests per email on the per-contact path by outcome, and per bulk email."""
    contact = {k: v for (p, k), v in emails.items() if p == "contact"}
    on_contact = sum(contact.values())
    on_bulk = sum(v for (p, _), v in emails.items() if p == "bulk")
    # The bulk path's probe (the membership check): one search and the GETs beyond the
    # per-contact path's own (one per contact found: updated, unchanged, skipped).
    found = contact.get("updated", 0) + contact.get("unchanged", 0) + contact.get("skipped", 0)
    check_search = 1 if run.result["activities"] else 0
    check_gets = run.route("GET contacts/{id}") - found
    searches = run.route("GET contacts?email") - check_search
    share = searches / on_contact if on_contact else 0.0
    posts = run.route("POST contacts")
    bulk_requests = run.route("POST activities") + _polls(run) + check_search + check_gets
    bulk_requests += run.route("GET activities")
    cost = {
        "created": share + (posts / contact["created"] if contact.get("created") else 0.0),
        "updated": share + 1 + run.route("PUT contacts/{id}") / max(1, contact.get("updated", 0)),
        "unchanged": share + 1,
        "skipped": share + 1,
        "failed": share + 1,
    }
    return cost, bulk_requests / on_bulk if on_bulk else 0.0


def _v3_costs(
    run: Run, emails: Counter[tuple[str, str]], appended: int
) -> tuple[dict[str, float], float]:
    """V3: requests per email on the per-contact path by outcome, and per bulk email.

    A per-contact email carries its lookup and its writes: a POST; a PUT (an update not
    appended); or its share of an append and of that append's polls (polls are shared out
    over the activities, imports and appends alike, by count), plus, for an appended
    contact with fields to write, the PUT of its fields (the PUTs beyond one per
    non-appended update, shared over the appended emails). A bulk email carries its share
    of the imports, their lost-answer checks (`GET activities`), their polls, and every
    read that is not a per-contact lookup (the probe's lookups and reads, the read-back's
    pages and lookups, the lists' counts).
    """
    contact = {k: v for (p, k), v in emails.items() if p == "contact"}
    on_contact = sum(contact.values())
    on_bulk = sum(v for (p, _), v in emails.items() if p == "bulk")
    imports = run.route("POST activities/contacts_json_import")
    appends = run.route("POST activities/add_list_memberships")
    per_activity = _polls(run) / (imports + appends) if imports + appends else 0.0
    put_updated = contact.get("updated", 0) - appended
    puts = run.route("PUT contacts/{id}")
    field_puts = max(0, puts - put_updated)  # the PUTs of appended contacts' fields
    cost = {
        "created": 1 + run.route("POST contacts") / max(1, contact.get("created", 0)),
        "updated (appended)": 1 + (appends * (1 + per_activity) + field_puts) / max(1, appended),
        "updated (PUT)": 1 + (puts - field_puts) / max(1, put_updated),
        "unchanged": 1.0,
        "skipped": 1.0,
        "failed": 1.0,
    }
    lookups_beyond = max(0, run.route("GET contacts?email") - on_contact)
    bulk_requests = imports * (1 + per_activity) + run.route("GET activities") + lookups_beyond
    bulk_requests += run.route("GET contacts") + run.route("GET contacts/{id}")
    bulk_requests += max(0, run.route("GET contact_lists") - run.setup_requests)
    return cost, bulk_requests / on_bulk if on_bulk else 0.0


def mixed(bench: Bench) -> ScenarioResult:
    """6. A realistic source: requests per contact by outcome, and each batch's path."""
    result = ScenarioResult("mixed", "6. Mixed source")
    outcome_rows: list[list[str]] = []
    paths_table: list[list[str]] = []
    counted: list[str] = []
    for api in bench.apis:
        attributed = 0.0
        spec = RunSpec(workload=Workload("mixed", bench.sizes.mixed), bulk=True, api=api)
        (runs,) = bench.measure(spec)
        result.figure("rows/s", "rows/s", [r.contacts_per_s for r in runs], api=api)
        result.figure("requests/row", "requests", [r.requests_per_contact for r in runs], api=api)
        run = runs[0]
        summary = run.result["report"]
        emails, rows = _split(summary, "emails"), _split(summary, "rows")
        appended = sum(_split(summary, "appended").values())
        if api == "v3":
            cost, bulk_cost = _v3_costs(run, emails, appended)
            if emails.get(("contact", "updated")):
                # The appended contacts and the ones written by a PUT, apart.
                updated = emails.pop(("contact", "updated"))
                updated_rows = rows.pop(("contact", "updated"))
                share = appended / updated
                emails[("contact", "updated (appended)")] = appended
                emails[("contact", "updated (PUT)")] = updated - appended
                rows[("contact", "updated (appended)")] = round(updated_rows * share)
                rows[("contact", "updated (PUT)")] = updated_rows - round(updated_rows * share)
        else:
            cost, bulk_cost = _v1_costs(run, emails)
        for (path, kind), count in sorted(emails.items()):
            if not count:
                continue
            per = cost.get(kind, 0.0) if path == "contact" else 0.0
            if path == "bulk":
                per = bulk_cost
            attributed += per * count
            outcome_rows.append(
                [
                    API_NAMES[api],
                    path or "(read)",
                    kind,
                    f"{rows[(path, kind)]:,}",
                    f"{count:,}",
                    fmt(per),
                ]
            )
        counted.append(
            f"{API_NAMES[api]}: {run.requests:,} requests measured, {attributed:,.0f} attributed"
        )
        by_set = [Counter(paths) for paths in summary["list_sets"]]
        buckets = [(1, 24), (25, 99), (100, 999), (1000, 10**9)]
        for low, high in buckets:
            chosen = [c for c in by_set if low <= sum(c.values()) <= high]
            if not chosen:
                continue
            label = f"{low:,}–{high:,}" if high < 10**9 else f"≥ {low:,}"
            paths_table.append(
                [
                    label,
                    API_NAMES[api],
                    f"{len(chosen):,}",
                    f"{sum(sum(c.values()) for c in chosen):,}",
                    f"{sum(1 for c in chosen if set(c) == {'bulk'}):,}",
                    f"{sum(1 for c in chosen if set(c) == {'contact'}):,}",
                    f"{sum(1 for c in chosen if len(c) > 1):,}",
                ]
            )
    result.tables.append(
        Table(
            f"Outcomes and requests per contact by outcome (repetition 1; {'; '.join(counted)})",
            ["API", "path", "outcome", "rows", "emails", "requests/email"],
            outcome_rows,
        )
    )
    result.tables.append(
        Table(
            "Which path each list set's batch took (repetition 1)",
            ["contacts in the set", "API", "list sets", "contacts", "bulk", "per-contact", "both"],
            paths_table,
        )
    )
    result.notes.append(
        f"{bench.sizes.mixed:,} rows: 60% existing contacts gaining lists, 10% already on "
        "all their targets, 1% Do Not Mail (V3: unsubscribed), 23% new, 5% duplicate rows "
        "(targets unioned), 1% invalid emails; a quarter of the existing contacts have "
        "another first name than their row's (a field to write), the others only gain "
        "lists; 150 target list sets of 1–3 of 12 lists with Zipf-like sizes; concurrency "
        "64, default threshold 25. Requests per email by outcome are attributed from the "
        "simulator's route counters. v1: a per-contact email carries its share of the "
        "searches (searches / emails on that path), plus a GET when found and its write; a "
        "bulk email carries its share of the activities, polls and the probe (the "
        "membership check: a search, and a GET of each probed contact before and after). "
        "V3: a per-contact email carries its lookup and its writes (a POST, a PUT, or its "
        "share of an append of its list set and of the append's polls, plus the PUT of its "
        "fields when it has some to write: the engine then writes them by a PUT that names "
        "no list, and appends the lists); a bulk email its "
        "share of the imports, their polls and checks, and the reads (the probe's, the "
        "read-back's). Polls are shared over imports and appends by count. "
        "'both' counts list sets whose contacts took both paths (a duplicate row moved a "
        "contact, or a batch was split)."
    )
    result.data = {"paths": paths_table}
    return result


# --- 7 ------------------------------------------------------------------------------------


def naive(bench: Bench) -> ScenarioResult:
    """7. The support thread's sequential loop against the engine, at 100 ms latency."""
    result = ScenarioResult("naive", "7. Naive baseline")
    n = bench.sizes.naive_engine
    source = Workload("seed", n)
    rows: list[list[str]] = []
    data: dict[str, dict[str, float | None]] = {}
    for api in bench.apis:
        specs = (
            RunSpec(
                client="naive",
                workload=source,
                limit=bench.sizes.naive_sample,
                latency_ms=LATENCY_MS,
                api=api,
            ),
            RunSpec(workload=source, bulk=True, latency_ms=LATENCY_MS, api=api),
            RunSpec(workload=source, latency_ms=LATENCY_MS, api=api),
        )
        slow, planner, contact = bench.measure(*specs)
        result.figure("naive contacts/s", "contacts/s", [r.contacts_per_s for r in slow], api=api)
        naive_rpc = result.figure(
            "naive requests/contact", "requests", [r.requests_per_contact for r in slow], api=api
        )
        result.figure(
            "engine (planner) contacts/s",
            "contacts/s",
            [r.contacts_per_s for r in planner],
            api=api,
        )
        up = result.figure(
            "engine (planner) speed-up over naive",
            "×",
            _pairs(planner, slow, lambda r: r.contacts_per_s),
            target=Target(">=", 150, "≥ 150× (issue 13)"),
            api=api,
        )
        result.figure(
            "engine (per-contact path) contacts/s",
            "contacts/s",
            [r.contacts_per_s for r in contact],
            api=api,
        )
        up_pc = result.figure(
            "engine (per-contact path) speed-up over naive",
            "×",
            _pairs(contact, slow, lambda r: r.contacts_per_s),
            target=Target(">=", 150, "≥ 150× (issue 13)"),
            api=api,
        )
        naive_speed = _median(slow, lambda r: r.contacts_per_s)
        loop = "search, GET, PUT" if api == "v1" else "lookup, PUT"
        rows += [
            [
                f"naive ({loop}; measured on the first {bench.sizes.naive_sample})",
                API_NAMES[api],
                fmt(naive_speed),
                f"{fmt((naive_rpc.median or 0) * n)} (projected)",
                f"{fmt(n / (naive_speed or 1))} (projected)",
                "1",
            ],
            [
                "engine, planner (bulk)",
                API_NAMES[api],
                fmt(_median(planner, lambda r: r.contacts_per_s)),
                fmt(_median(planner, lambda r: r.requests)),
                fmt(_median(planner, lambda r: r.wall)),
                fmt(up.median),
            ],
            [
                "engine, per-contact path",
                API_NAMES[api],
                fmt(_median(contact, lambda r: r.contacts_per_s)),
                fmt(_median(contact, lambda r: r.requests)),
                fmt(_median(contact, lambda r: r.wall)),
                fmt(up_pc.median),
            ],
        ]
        data[API_NAMES[api]] = {
            "naive": naive_speed,
            "planner": _median(planner, lambda r: r.contacts_per_s),
            "per_contact": _median(contact, lambda r: r.contacts_per_s),
        }
    result.tables.append(
        Table(
            f"The support thread's case: {n:,} members of List A (of 2,600) into List B, "
            "100 ms latency (medians)",
            [
                "client",
                "API",
                "contacts/s",
                f"requests for the {n:,}",
                f"wall s for the {n:,}",
                "speed-up",
            ],
            rows,
        )
    )
    result.notes.append(
        "The naive loop is strictly sequential (one request in flight), so its rate does not "
        f"depend on the source size: it migrates the first {bench.sizes.naive_sample} rows "
        "of the same source, and its figures for the whole source are projected from its "
        "measured rate and requests per contact. On v1 it is the support thread's loop "
        "(search one email, GET, PUT); on V3 the same loop in V3's terms (a lookup, which "
        "gives the lists, then the whole-contact PUT). The engine migrates the whole source "
        "(concurrency 64, rate unlimited). Its planner first sends a probe activity of 25 "
        "contacts, each read before and after (one GET at a time), then one activity for "
        "the rest (V3: then reads it back); the per-contact run is bound by C / (requests "
        "per contact × latency)."
    )
    result.data = {"by_api": data}
    return result


# --- 8 ------------------------------------------------------------------------------------


def memory(bench: Bench) -> ScenarioResult:
    """8. Peak RSS of the engine process at a small and a large input, on each path."""
    result = ScenarioResult("memory", "8. Memory scaling")
    small, sizes = bench.sizes.memory_small, bench.sizes
    table = []
    timelines = {}
    peaks: list[dict[str, object]] = []
    for api in bench.apis:
        large_pc = sizes.memory_per_contact_v3 if api == "v3" else sizes.memory_per_contact
        large_bulk = sizes.bulk_v3[1] if api == "v3" else sizes.memory_bulk
        pairs = {
            "per-contact": (
                RunSpec(workload=Workload("new", small), api=api),
                RunSpec(workload=Workload("new", large_pc), api=api),
            ),
            "bulk": (_bulk_spec(small, api), _bulk_spec(large_bulk, api)),
        }
        for path, (a, b) in pairs.items():
            little, big = bench.measure(a, b)
            for spec, runs in ((a, little), (b, big)):
                fig = result.figure(
                    f"peak RSS, {path}, {spec.workload.rows:,} rows",
                    "MB",
                    [r.result["rss_peak_mb"] for r in runs],
                    target=Target("<", 150, "< 150 MB (issue 13)")
                    if path == "bulk"
                    else Target("<", 200, "< 200 MB"),
                    api=api,
                )
                peaks.append(
                    {
                        "name": f"{path}\n{API_NAMES[api]}, {spec.workload.rows:,}",
                        "median": fig.median,
                        "low": fig.low,
                        "high": fig.high,
                    }
                )
                table.append(
                    [
                        path,
                        API_NAMES[api],
                        f"{spec.workload.rows:,}",
                        fmt(_median(runs, lambda r: r.result["rss_base_mb"])),
                        fmt(fig.median),
                        f"{fmt(fig.low)}–{fmt(fig.high)}",
                    ]
                )
            result.figure(
                f"peak RSS ratio, {path}, larger / {a.workload.rows:,} rows",
                "ratio",
                _pairs(big, little, lambda r: float(r.result["rss_peak_mb"])),
                target=Target("<=", 1.25, "≤ 1.25"),
                note=f"larger: {b.workload.rows:,} rows",
                api=api,
            )
            key = f"{path} {API_NAMES[api]}, {b.workload.rows:,} rows"
            timelines[key] = big[0].result.get("timeline", [])
    result.tables.append(
        Table(
            "Peak resident memory of the engine process (MB)",
            ["path", "API", "rows", "after imports", "peak (median)", "min–max"],
            table,
        )
    )
    result.notes.append(
        f"A fresh process per run; peak = the kernel's high-water mark of its resident set "
        f"(VmHWM), imports included. The per-contact path is measured at {small:,} vs "
        f"{sizes.memory_per_contact:,} new contacts on v1 and {small:,} vs "
        f"{sizes.memory_per_contact_v3:,} on V3, not 1,000,000: at about 1,700 contacts/s "
        "(v1) a million would take about 10 minutes per repetition, and V3 is slower "
        "(scenario 2). New contacts are its fastest kind; existing contacts carry fetched "
        "entries in the queues (their peak is in scenario 2's runs, results.json). The bulk "
        f"path (70% existing) at {small:,} vs {sizes.memory_bulk:,} rows on v1 and "
        f"{small:,} vs {sizes.bulk_v3[1]:,} on V3. "
        "The ratios' larger sizes differ by API: the figure's note says which."
    )
    result.data = {"peaks": peaks, "timelines": timelines}
    return result


# --- 9 ------------------------------------------------------------------------------------


def budget(bench: Bench) -> ScenarioResult:
    """9. Requests and days for 1,000,000 contacts (70% existing) at 10,000 requests/day."""
    result = ScenarioResult("budget", "9. Daily budget")
    rows = bench.sizes.budget_rows
    source = Workload("mix70", rows)
    # (figure name: the same on both APIs for the same strategy, table label, run)
    strategies: list[tuple[str, str, RunSpec]] = []
    if "v1" in bench.apis:
        strategies += [
            (
                "naive loop",
                "naive loop (search, GET, PUT)",
                RunSpec(client="naive", workload=source, limit=min(rows, 1000)),
            ),
            ("engine, per-contact path", "engine, per-contact path", RunSpec(workload=source)),
            ("engine, planner (bulk)", "engine, planner (bulk)", _bulk_spec(bench.sizes.bulk[1])),
        ]
    if "v3" in bench.apis:
        strategies += [
            (
                "engine, per-contact path",
                "engine, per-contact path (appends by id)",
                RunSpec(workload=source, api="v3"),
            ),
            (
                "engine, per-contact path, PUT",
                "engine, per-contact path, PUT (`--no-append`)",
                RunSpec(workload=source, api="v3", append=False),
            ),
            (
                "engine, planner (bulk)",
                "engine, planner (bulk)",
                _bulk_spec(bench.sizes.bulk_v3[1], "v3"),
            ),
        ]
    measured = bench.measure(*(spec for _, _, spec in strategies))
    table = []
    plot = []
    for (name, label, spec), runs in zip(strategies, measured, strict=True):
        rpc = result.figure(
            f"requests/contact, {name}",
            "requests",
            [r.requests_per_contact for r in runs],
            api=spec.api,
        )
        assert rpc.median is not None
        total = rpc.median * BUDGET_CONTACTS
        days = max(1, math.ceil(total / DAILY_BUDGET))
        result.figure(f"days at 10,000 requests/day, {name}", "days", [days], api=spec.api)
        measured_on = spec.limit or spec.workload.rows
        table.append(
            [
                label,
                API_NAMES[spec.api],
                f"{measured_on:,} rows",
                fmt(rpc.median, 4),
                f"{total:,.0f}",
                f"{days:,}",
                fmt(total / 4 / 3600),
            ]
        )
        plot.append({"name": f"{API_NAMES[spec.api]} {label}", "requests": total, "days": days})
    result.tables.append(
        Table(
            "1,000,000 contacts, 70% existing, at 10,000 requests/day",
            [
                "strategy",
                "API",
                "measured on",
                "requests/contact",
                "requests",
                "days at 10,000/day",
                "hours at 4 req/s",
            ],
            table,
        )
    )
    result.notes.append(
        "Requests per contact measured on sources with 70% existing contacts (the naive loop "
        "and the per-contact paths without latency, the planner on scenario 5's largest run, "
        "polls and reads included), multiplied out to 1,000,000 contacts. The existing "
        "contacts only gain the list (their names are the rows'), so on V3 they are "
        "appended by id; `--no-append` writes each with a PUT. The planner's polls depend "
        "on how long activities take: the simulator's are short."
    )
    result.data = {"points": plot}
    return result


# --- profile ------------------------------------------------------------------------------


def profile(bench: Bench) -> ScenarioResult:
    """The per-contact path's hottest functions: py-spy if installed, else cProfile."""
    result = ScenarioResult("profile", "Profile of the per-contact path")
    for api in bench.apis:
        spec = RunSpec(
            workload=Workload("existing", bench.sizes.per_contact), profile=True, api=api
        )
        ((run,),) = bench.measure(spec, reps=1)
        _profile_tables(result, run, API_NAMES[api])
    return result


def _profile_tables(result: ScenarioResult, run: Run, api: str) -> None:
    sampled = run.result.get("py_spy")
    if sampled is not None:
        own: Counter[str] = Counter(sampled["own"])
        inclusive: Counter[str] = Counter(sampled["inclusive"])
        total = int(sampled["total"])
        rows = [
            [
                f"`{name}`",
                f"{100 * count / total:.1f}%",
                f"{100 * inclusive[name] / total:.1f}%",
                fmt(run.cpu_us_per_contact * count / total),
            ]
            for name, count in own.most_common(10)
        ]
        result.tables.append(
            Table(
                f"{api}: top 10 functions by own time, engine process, {run.rows:,} existing "
                f"contacts (py-spy, {total:,} samples at 250/s)",
                ["function (file)", "own", "inclusive", "≈ own µs/contact"],
                rows,
            )
        )
        packages: Counter[str] = Counter()
        for name, count in own.items():
            packages[package(name)] += count
        shares = [[k, f"{100 * v / total:.1f}%"] for k, v in packages.most_common(10)]
        rest = total - sum(v for _, v in packages.most_common(10))
        result.tables.append(
            Table(
                f"{api}: own time by package (top 10)",
                ["package", "share"],
                [*shares, ["everything else", f"{100 * rest / total:.1f}%"]],
            )
        )
        if len(result.notes) < 1:
            result.notes.append(
                "py-spy samples the engine process from outside: the run is barely slowed and "
                "coroutines are attributed to their own frames. C code (TLS, the XML and JSON "
                "parsers, uvloop's loop) is counted in the Python function that called it "
                "(uvloop's in `Runner.run`); samples of worker threads waiting for work are "
                "left out. µs/contact = the run's CPU per contact × the share. Existing "
                "contacts gaining a list: on v1 a search of 50, a GET and a PUT per contact; "
                "on V3 a lookup per contact, the list appended by id."
            )
        return
    stats = pstats.Stats(str(Path(str(run.result["scratch"])) / "profile.pstats"))
    total_tt = stats.total_tt  # type: ignore[attr-defined]
    entries = stats.stats  # type: ignore[attr-defined]
    top = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:10]
    table = []
    for (file, line, func), (_, calls, tottime, cumtime, _) in top:
        table.append(
            [
                f"`{func}` ({_short(file)}:{line})",
                f"{calls:,}",
                f"{100 * tottime / total_tt:.1f}%",
                fmt(1e6 * tottime / run.rows),
                fmt(1000 * cumtime),
            ]
        )
    result.tables.append(
        Table(
            f"{api}: top 10 functions by own time, engine process, {run.rows:,} existing "
            f"contacts (cProfile; {total_tt:.2f} s profiled)",
            ["function", "calls", "own", "own µs/contact", "cumulative ms"],
            table,
        )
    )
    if len(result.notes) < 1:
        result.notes.append(
            "cProfile (py-spy is not installed) slows the run down and attributes coroutine "
            "time loosely; its shares show roughly where the CPU goes."
        )


def _short(file: str) -> str:
    """A source path from its package on: `aiohttp/client.py`, `stdlib/asyncio/tasks.py`."""
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1]
    for top in ("/engine/", "/benchmarks/"):  # the work tree or the run's snapshot
        if top in file:
            return top[1:] + file.rsplit(top, 1)[1]
    if "/lib/python3" in file:
        return "stdlib/" + file.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return file


#: `--only` name -> scenario, in the order a full run goes.
SCENARIOS: dict[str, Callable[[Bench], ScenarioResult]] = {
    "ceiling": ceiling,
    "per-contact": per_contact,
    "latency": latency,
    "rate": rate,
    "bulk": bulk,
    "mixed": mixed,
    "naive": naive,
    "memory": memory,
    "budget": budget,
    "profile": profile,
}
