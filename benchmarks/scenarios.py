"""The scenarios of issue 5, one function each; every figure comes from runs of this run.

Each function asks the `Bench` for the runs it needs (measuring them unless another
scenario already did) and turns them into figures, tables and plot data. Ratios pair
repetition i of one contender with repetition i of the other: they ran next to each
other in time.
"""

from __future__ import annotations

import math
import pstats
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.harness import Bench, Run, RunSpec, ScenarioResult, Table, Target, spread
from benchmarks.profiling import package
from benchmarks.workloads import Kind, Workload

__all__ = ["SCENARIOS", "fmt"]

LATENCY_MS = 100.0
DAILY_BUDGET = 10_000
BUDGET_CONTACTS = 1_000_000


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


# --- 1 and 2 ------------------------------------------------------------------------------

KINDS: tuple[Kind, ...] = ("existing", "new", "unchanged")
WHAT = {
    "existing": "existing contact gains a list (search/50 + GET + PUT)",
    "new": "new contact (search/50 + POST)",
    "unchanged": "already on the target (search/50 + GET)",
}
RPC_TARGET = {"existing": 2.05, "new": 1.05, "unchanged": 1.05}


def _per_contact(bench: Bench) -> dict[str, tuple[list[Run], list[Run]]]:
    """(ceiling runs, engine runs) per kind, measured together, interleaved."""
    n = bench.sizes.per_contact
    specs = [
        spec
        for kind in KINDS
        for spec in (
            RunSpec(client="ceiling", workload=Workload(kind, n)),
            RunSpec(workload=Workload(kind, n)),
        )
    ]
    runs = bench.measure(*specs)
    return {kind: (runs[2 * i], runs[2 * i + 1]) for i, kind in enumerate(KINDS)}


def ceiling(bench: Bench) -> ScenarioResult:
    """1. The bare aiohttp loop: the best a Python client can do against this simulator."""
    result = ScenarioResult("ceiling", "1. Ceiling (bare aiohttp loop)")
    for kind, (top, _) in _per_contact(bench).items():
        result.figure(f"ceiling contacts/s, {kind}", "contacts/s", [r.contacts_per_s for r in top])
        result.figure(
            f"ceiling client CPU/contact, {kind}", "µs", [r.cpu_us_per_contact for r in top]
        )
        result.figure(
            f"simulator CPU/contact under the ceiling, {kind}",
            "µs",
            [r.sim_cpu_us_per_contact for r in top],
        )
    result.notes.append(
        f"{bench.sizes.per_contact:,} contacts, concurrency 64, no latency, https. The client "
        "and the simulator each have one of the two cores; the simulator's CPU per contact "
        "shows which of the two is the bottleneck (a core gives 1,000,000 µs/s)."
    )
    return result


def per_contact(bench: Bench) -> ScenarioResult:
    """2. The engine's per-contact path with no latency, against the ceiling."""
    result = ScenarioResult("per-contact", "2. Per-contact path, no latency")
    rows: list[list[str]] = []
    data: dict[str, object] = {}
    for kind, (top, engine) in _per_contact(bench).items():
        speed = result.figure(
            f"engine contacts/s, {kind}",
            "contacts/s",
            [r.contacts_per_s for r in engine],
            target=Target(">=", 2000, "≥ 2,000 (issue 3)"),
        )
        cpu = result.figure(
            f"engine CPU/contact, {kind}", "µs", [r.cpu_us_per_contact for r in engine]
        )
        rpc = result.figure(
            f"requests/contact, {kind}",
            "requests",
            [r.requests_per_contact for r in engine],
            target=Target("<=", RPC_TARGET[kind], f"≤ {RPC_TARGET[kind]}"),
        )
        ratio = result.figure(
            f"engine / ceiling, {kind}",
            "ratio",
            _pairs(engine, top, lambda r: r.contacts_per_s),
            target=Target(">=", 0.7, "≥ 0.7"),
            note="contacts/s of each engine repetition over the ceiling run next to it",
        )
        top_speed = spread([r.contacts_per_s for r in top])[0]
        sim_cpu = spread([r.sim_cpu_us_per_contact for r in engine])[0]
        rows.append(
            [
                WHAT[kind],
                fmt(rpc.median),
                fmt(speed.median),
                fmt(top_speed),
                fmt(ratio.median, 2),
                fmt(cpu.median),
                fmt(sim_cpu),
            ]
        )
        data[kind] = {
            "engine": [r.contacts_per_s for r in engine],
            "ceiling": [r.contacts_per_s for r in top],
        }
    result.tables.append(
        Table(
            "Per-contact path, no latency (medians)",
            [
                "contacts",
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
        "workers, 4 fetch workers), bulk off (`bulk_threshold=None`), uvloop, a journal as the "
        "CLI keeps by default. Requests per "
        "contact exclude the two set-up requests (service document, lists feed)."
    )
    result.data = data
    return result


# --- 3 ------------------------------------------------------------------------------------


def steady_rate(run: Run) -> float | None:
    """Contacts/s between 10% and 90% done (from the once-a-second progress samples).

    Leaves out the set-up requests and the pipeline's fill and drain; None for a run too
    short to have two samples in that span.
    """
    inside = [(p[0], p[1]) for p in run.result.get("timeline", []) if 0.1 <= p[1] / run.rows <= 0.9]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    (t0, d0), (t1, d1) = inside[0], inside[-1]
    return float((d1 - d0) / (t1 - t0))


def latency(bench: Bench) -> ScenarioResult:
    """3. 100 ms of latency at concurrency 8, 32, 128, against C / (rpc × latency)."""
    result = ScenarioResult("latency", "3. Per-contact path, 100 ms latency")
    specs = [
        RunSpec(workload=Workload("existing", n), concurrency=c, latency_ms=LATENCY_MS)
        for c, n in bench.sizes.latency.items()
    ]
    points = []
    for spec, runs in zip(specs, bench.measure(*specs), strict=True):
        c = spec.concurrency

        def bound(run: Run, c: int = c) -> float:
            return c / (run.requests_per_contact * LATENCY_MS / 1000)

        got = result.figure(
            f"contacts/s at concurrency {c}", "contacts/s", [r.contacts_per_s for r in runs]
        )
        limit = result.figure(
            f"bound C/(rpc × 100 ms) at concurrency {c}", "contacts/s", [bound(r) for r in runs]
        )
        result.figure(
            f"achieved / bound at concurrency {c}",
            "ratio",
            [r.contacts_per_s / bound(r) for r in runs],
            target=Target(">=", 0.9, "≥ 0.9 (within 10%)"),
            note="wall time includes set-up (2 requests) and pipeline fill and drain",
        )
        steady = [(s, bound(r)) for r in runs if (s := steady_rate(r)) is not None]
        result.figure(
            f"steady-state / bound at concurrency {c}",
            "ratio",
            [s / b for s, b in steady],
            note="contacts/s between 10% and 90% done, over the bound",
        )
        result.figure(
            f"engine CPU busy at concurrency {c}",
            "cores",
            [float(r.result["cpu_s"]) / r.wall for r in runs],
            note="engine CPU seconds per wall second: near 1 means CPU-bound, not latency-bound",
        )
        points.append(
            {
                "concurrency": c,
                "median": got.median,
                "low": got.low,
                "high": got.high,
                "bound": limit.median,
                "cpu_us": spread([r.cpu_us_per_contact for r in runs])[0],
            }
        )
    result.data = {"points": points}
    result.notes.append(
        "Existing contacts gaining a list; "
        + ", ".join(f"{n:,} contacts at concurrency {c}" for c, n in bench.sizes.latency.items())
        + " (runs of about 12 s in the full run); the bound uses the requests per contact "
        "measured in the same repetition. The engine's CPU busy time tells a CPU limit "
        "from a latency one."
    )
    return result


# --- 4 ------------------------------------------------------------------------------------


def rate(bench: Bench) -> ScenarioResult:
    """4. The simulator throttles at 4 and 40 requests/s; the engine knows the limit or not."""
    result = ScenarioResult("rate", "4. Rate-limited")
    rows = []
    plot = []
    for limit in bench.sizes.rates:
        n = max(10, round(limit * bench.sizes.rate_seconds / 2.02))
        for mode in ("configured", "discovered"):
            spec = RunSpec(
                workload=Workload("existing", n),
                concurrency=8,
                rate=limit if mode == "configured" else None,
                sim_rate=limit,
                max_seconds=2 * bench.sizes.rate_seconds,
            )
            (runs,) = bench.measure(spec)
            name = f"{limit:g}/s, {mode}"
            achieved = result.figure(
                f"achieved rate / limit, {name}",
                "ratio",
                [r.answered / r.wall / limit for r in runs],
                target=Target(">=", 0.95, "≥ 0.95"),
                note="answered (not throttled) requests, set-up included, over the wall time",
            )
            if mode == "configured":
                throttled = result.figure(
                    f"throttled answers, {name}",
                    "answers",
                    [r.throttled for r in runs],
                    target=Target("<=", 0, "0"),
                )
            else:
                throttled = result.figure(
                    f"throttled answers / requests, {name}",
                    "%",
                    [100 * r.throttled / (r.answered + r.throttled) for r in runs],
                    target=Target("<", 5, "< 5%"),
                )
            rpc = result.figure(
                f"requests/contact, {name}",
                "requests",
                [r.requests_per_contact for r in runs],
                target=Target("<=", 2.05, "≤ 2.05"),
            )
            speed = spread([r.contacts_per_s for r in runs])[0]
            done = [r.rows for r in runs]
            rows.append(
                [
                    name,
                    f"{min(done):,} of {n:,}" if min(done) < n else f"{n:,}",
                    fmt(achieved.median, 3),
                    fmt(throttled.median),
                    fmt(rpc.median),
                    fmt(speed),
                    fmt(spread([r.wall for r in runs])[0]),
                ]
            )
            plot.append(
                {
                    "name": name,
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
        "(8) and retry policy. The simulator refuses over-limit requests with its v1 answer "
        "(403 with a rate-limit text, no Retry-After; token bucket of one second's requests). "
        "`configured`: the engine's governor is given the limit; `discovered`: it starts "
        f"unlimited and must learn it from the 403s. Runs last about {bench.sizes.rate_seconds:g} "
        "s at the limit."
    )
    result.data = {"points": plot}
    return result


# --- 5 ------------------------------------------------------------------------------------


def _bulk_spec(rows: int) -> RunSpec:
    return RunSpec(workload=Workload("mix70", rows), bulk=True)


def bulk(bench: Bench) -> ScenarioResult:
    """5. The bulk path at two sizes: wall time, bytes, activities, polls, memory."""
    result = ScenarioResult("bulk", "5. Bulk path")
    table = []
    timelines = {}
    for size in bench.sizes.bulk:
        (runs,) = bench.measure(_bulk_spec(size))
        name = f"{size:,} contacts"
        wall = result.figure(
            f"wall time, {name}",
            "s",
            [r.wall for r in runs],
            target=Target("<=", 60, "< 60 s (issue 3)") if size == 1_000_000 else None,
        )
        speed = result.figure(f"contacts/s, {name}", "contacts/s", [r.contacts_per_s for r in runs])
        rpc = result.figure(
            f"requests/contact without polls, {name}",
            "requests",
            [(r.requests - r.route("GET activities/{id}")) / r.rows for r in runs],
            target=Target("<=", 0.001, "≤ 0.001 plus polls"),
        )
        sent = result.figure(
            f"request bytes sent, {name}", "MB", [r.result["bytes_sent"] / 1e6 for r in runs]
        )
        acts = result.figure(f"activities, {name}", "", [r.result["activities"] for r in runs])
        polls = result.figure(f"polls, {name}", "", [r.result["polls"] for r in runs])
        rss = result.figure(
            f"engine peak RSS, {name}", "MB", [r.result["rss_peak_mb"] for r in runs]
        )
        cpu = spread([r.result["cpu_s"] for r in runs])[0]
        table.append(
            [
                name,
                fmt(wall.median),
                fmt(speed.median),
                fmt(rpc.median, 2),
                fmt(sent.median),
                fmt(acts.median),
                fmt(polls.median),
                fmt(rss.median),
                fmt(cpu),
                fmt(spread([r.sim["cpu_s"] for r in runs])[0]),
            ]
        )
        timelines[name] = runs[0].result.get("timeline", [])
    result.tables.append(
        Table(
            "Bulk path (medians)",
            [
                "source",
                "wall s",
                "contacts/s",
                "requests/contact w/o polls",
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
        "70% of the contacts exist on another list, 30% are new; one target list; the planner "
        "with its default threshold (25), 4 activities in flight. The simulator completes an "
        "activity about 0.2 s after its POST plus the time to apply its rows; the engine polls "
        "from 0.2 s, backing off to 1 s. Against the real API activities take minutes, so "
        "real wall time is theirs, not the engine's. Bytes are request bodies (form-encoded "
        "activities, the membership check's requests), without HTTP headers or TLS."
    )
    result.data = {"timelines": timelines}
    return result


# --- 6 ------------------------------------------------------------------------------------


def mixed(bench: Bench) -> ScenarioResult:
    """6. A realistic source: requests per contact by outcome, and each batch's path."""
    result = ScenarioResult("mixed", "6. Mixed source")
    spec = RunSpec(workload=Workload("mixed", bench.sizes.mixed), bulk=True)
    (runs,) = bench.measure(spec)
    result.figure("rows/s", "rows/s", [r.contacts_per_s for r in runs])
    result.figure("requests/row", "requests", [r.requests_per_contact for r in runs])
    run = runs[0]
    summary = run.result["report"]
    emails: Counter[tuple[str, str]] = Counter()
    rows: Counter[tuple[str, str]] = Counter()
    for key, count in summary["emails"].items():
        emails[tuple(key.split("|"))] += count
    for key, count in summary["rows"].items():
        rows[tuple(key.split("|"))] += count
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
    bulk_requests = (
        run.route("POST activities") + run.route("GET activities/{id}") + check_search + check_gets
    )
    cost = {
        "created": share + (posts / contact["created"] if contact.get("created") else 0.0),
        "updated": share + 1 + run.route("PUT contacts/{id}") / max(1, contact.get("updated", 0)),
        "unchanged": share + 1,
        "skipped": share + 1,
        "failed": share + 1,
    }
    table = []
    attributed = 0.0
    for (path, kind), count in sorted(emails.items()):
        per = cost.get(kind, 0.0) if path == "contact" else 0.0
        if path == "bulk":
            per = bulk_requests / on_bulk
        attributed += per * count
        table.append([path or "(read)", kind, f"{rows[(path, kind)]:,}", f"{count:,}", fmt(per)])
    result.tables.append(
        Table(
            f"Outcomes and requests per contact by outcome (repetition 1; {run.requests:,} "
            f"requests measured, {attributed:,.0f} attributed)",
            ["path", "outcome", "rows", "emails", "requests/email"],
            table,
        )
    )
    by_set = [Counter(paths) for paths in summary["list_sets"]]
    buckets = [(1, 24), (25, 99), (100, 999), (1000, 10**9)]
    paths_table = []
    for low, high in buckets:
        chosen = [c for c in by_set if low <= sum(c.values()) <= high]
        if not chosen:
            continue
        label = f"{low:,}–{high:,}" if high < 10**9 else f"≥ {low:,}"
        paths_table.append(
            [
                label,
                f"{len(chosen):,}",
                f"{sum(sum(c.values()) for c in chosen):,}",
                f"{sum(1 for c in chosen if set(c) == {'bulk'}):,}",
                f"{sum(1 for c in chosen if set(c) == {'contact'}):,}",
                f"{sum(1 for c in chosen if len(c) > 1):,}",
            ]
        )
    result.tables.append(
        Table(
            "Which path each list set's batch took (repetition 1)",
            ["contacts in the set", "list sets", "contacts", "bulk", "per-contact", "both"],
            paths_table,
        )
    )
    result.notes.append(
        f"{bench.sizes.mixed:,} rows: 60% existing contacts gaining lists, 10% already on "
        "all their targets, 1% Do Not Mail, 23% new, 5% duplicate rows (targets unioned), 1% "
        "invalid emails; 150 target list sets of 1–3 of 12 lists with Zipf-like sizes; "
        "concurrency 64, default threshold 25. Requests per email by outcome are attributed "
        "from the simulator's route counters: a per-contact email carries its share of the "
        "searches (searches / emails on that path), plus a GET when found and its write; a "
        "bulk email carries its share of the activities, polls and the probe (the membership "
        "check: a search, and a GET of each probed contact before and after). "
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
    specs = (
        RunSpec(
            client="naive", workload=source, limit=bench.sizes.naive_sample, latency_ms=LATENCY_MS
        ),
        RunSpec(workload=source, bulk=True, latency_ms=LATENCY_MS),
        RunSpec(workload=source, latency_ms=LATENCY_MS),
    )
    slow, planner, contact = bench.measure(*specs)
    result.figure("naive contacts/s", "contacts/s", [r.contacts_per_s for r in slow])
    naive_rpc = result.figure(
        "naive requests/contact", "requests", [r.requests_per_contact for r in slow]
    )
    result.figure("engine (planner) contacts/s", "contacts/s", [r.contacts_per_s for r in planner])
    up = result.figure(
        "engine (planner) speed-up over naive",
        "×",
        _pairs(planner, slow, lambda r: r.contacts_per_s),
        target=Target(">=", 100, "≥ 100×"),
    )
    result.figure(
        "engine (per-contact path) contacts/s", "contacts/s", [r.contacts_per_s for r in contact]
    )
    up_pc = result.figure(
        "engine (per-contact path) speed-up over naive",
        "×",
        _pairs(contact, slow, lambda r: r.contacts_per_s),
        target=Target(">=", 100, "≥ 100×"),
    )
    result.tables.append(
        Table(
            f"The support thread's case: {n:,} members of List A (of 2,600) into List B, "
            "100 ms latency (medians)",
            ["client", "contacts/s", "requests for the 1,000", "wall s for the 1,000", "speed-up"],
            [
                [
                    f"naive (measured on the first {bench.sizes.naive_sample})",
                    fmt(spread([r.contacts_per_s for r in slow])[0]),
                    f"{fmt((naive_rpc.median or 0) * n)} (projected)",
                    f"{fmt(n / (spread([r.contacts_per_s for r in slow])[0] or 1))} (projected)",
                    "1",
                ],
                [
                    "engine, planner (bulk)",
                    fmt(spread([r.contacts_per_s for r in planner])[0]),
                    fmt(spread([r.requests for r in planner])[0]),
                    fmt(spread([r.wall for r in planner])[0]),
                    fmt(up.median),
                ],
                [
                    "engine, per-contact path",
                    fmt(spread([r.contacts_per_s for r in contact])[0]),
                    fmt(spread([r.requests for r in contact])[0]),
                    fmt(spread([r.wall for r in contact])[0]),
                    fmt(up_pc.median),
                ],
            ],
        )
    )
    result.notes.append(
        "The naive loop is strictly sequential (one request in flight), so its rate does not "
        f"depend on the source size: it migrates the first {bench.sizes.naive_sample} rows "
        "of the same source, and its figures for the whole source are projected from its "
        "measured rate and requests per contact. The engine migrates the whole source "
        "(concurrency 64, rate unlimited). Its planner first sends a probe activity of 25 "
        "contacts, each read before and after (one GET at a time), then one activity for "
        "the rest; the per-contact run is bound by C / (requests per contact × latency)."
    )
    result.data = {
        "naive": spread([r.contacts_per_s for r in slow])[0],
        "planner": spread([r.contacts_per_s for r in planner])[0],
        "per_contact": spread([r.contacts_per_s for r in contact])[0],
    }
    return result


# --- 8 ------------------------------------------------------------------------------------


def memory(bench: Bench) -> ScenarioResult:
    """8. Peak RSS of the engine process at a small and a large input, on each path."""
    result = ScenarioResult("memory", "8. Memory scaling")
    small, sizes = bench.sizes.memory_small, bench.sizes
    pairs = {
        "per-contact": (
            RunSpec(workload=Workload("new", small)),
            RunSpec(workload=Workload("new", sizes.memory_per_contact)),
        ),
        "bulk": (_bulk_spec(small), _bulk_spec(sizes.memory_bulk)),
    }
    table = []
    timelines = {}
    peaks: list[dict[str, object]] = []
    for path, (a, b) in pairs.items():
        little, big = bench.measure(a, b)
        for spec, runs in ((a, little), (b, big)):
            fig = result.figure(
                f"peak RSS, {path}, {spec.workload.rows:,} rows",
                "MB",
                [r.result["rss_peak_mb"] for r in runs],
                target=Target("<", 200, "< 200 MB"),
            )
            peaks.append(
                {
                    "name": f"{path}\n{spec.workload.rows:,} rows",
                    "median": fig.median,
                    "low": fig.low,
                    "high": fig.high,
                }
            )
            table.append(
                [
                    path,
                    f"{spec.workload.rows:,}",
                    fmt(spread([r.result["rss_base_mb"] for r in runs])[0]),
                    fmt(fig.median),
                    f"{fmt(fig.low)}–{fmt(fig.high)}",
                ]
            )
        result.figure(
            f"peak RSS ratio, {path}, {b.workload.rows:,} / {a.workload.rows:,} rows",
            "ratio",
            _pairs(big, little, lambda r: float(r.result["rss_peak_mb"])),
            target=Target("<=", 1.25, "≤ 1.25"),
        )
        timelines[f"{path}, {b.workload.rows:,} rows"] = big[0].result.get("timeline", [])
    result.tables.append(
        Table(
            "Peak resident memory of the engine process (MB)",
            ["path", "rows", "after imports", "peak (median)", "min–max"],
            table,
        )
    )
    result.notes.append(
        f"A fresh process per run; peak = the kernel's high-water mark of its resident set "
        f"(VmHWM), imports included. The per-contact path is measured at {small:,} vs "
        f"{sizes.memory_per_contact:,} new contacts, not 1,000,000: at about 1,700 contacts/s "
        "a million would take about 10 minutes per repetition. New contacts are its fastest kind; "
        "existing contacts carry fetched entries in the queues (their 10,000-row peak is in "
        "scenario 2's runs, results.json). The bulk path is measured at the full sizes "
        "(70% existing)."
    )
    result.data = {"peaks": peaks, "timelines": timelines}
    return result


# --- 9 ------------------------------------------------------------------------------------


def budget(bench: Bench) -> ScenarioResult:
    """9. Requests and days for 1,000,000 contacts (70% existing) at 10,000 requests/day."""
    result = ScenarioResult("budget", "9. Daily budget")
    rows = bench.sizes.budget_rows
    source = Workload("mix70", rows)
    naive_spec = RunSpec(client="naive", workload=source, limit=min(rows, 1000))
    engine_spec = RunSpec(workload=source)
    planner_spec = _bulk_spec(bench.sizes.bulk[1])
    slow, contact, planner = bench.measure(naive_spec, engine_spec, planner_spec)
    table = []
    plot = []
    for name, runs, spec in (
        ("naive per-contact", slow, naive_spec),
        ("engine, per-contact path", contact, engine_spec),
        ("engine, planner (bulk)", planner, planner_spec),
    ):
        rpc = result.figure(
            f"requests/contact, {name}", "requests", [r.requests_per_contact for r in runs]
        )
        assert rpc.median is not None
        total = rpc.median * BUDGET_CONTACTS
        days = max(1, math.ceil(total / DAILY_BUDGET))
        measured_on = spec.limit or spec.workload.rows
        table.append(
            [
                name,
                f"{measured_on:,} rows",
                fmt(rpc.median, 4),
                f"{total:,.0f}",
                f"{days:,}",
                fmt(total / 4 / 3600),
            ]
        )
        plot.append({"name": name, "requests": total, "days": days})
    result.tables.append(
        Table(
            "1,000,000 contacts, 70% existing, at 10,000 requests/day",
            [
                "strategy",
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
        "and the per-contact path without latency, the planner on scenario 5's largest run, "
        "polls included), multiplied out to 1,000,000 contacts. The planner's polls depend "
        "on how long activities take: the simulator's are short."
    )
    result.data = {"points": plot}
    return result


# --- profile ------------------------------------------------------------------------------


def profile(bench: Bench) -> ScenarioResult:
    """The per-contact path's hottest functions: py-spy if installed, else cProfile."""
    result = ScenarioResult("profile", "Profile of the per-contact path")
    spec = RunSpec(workload=Workload("existing", bench.sizes.per_contact), profile=True)
    ((run,),) = bench.measure(spec, reps=1)
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
                f"Top 10 functions by own time, engine process, {run.rows:,} existing "
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
                "Own time by package (top 10)",
                ["package", "share"],
                [*shares, ["everything else", f"{100 * rest / total:.1f}%"]],
            )
        )
        result.notes.append(
            "py-spy samples the engine process from outside: the run is barely slowed and "
            "coroutines are attributed to their own frames. C code (TLS, the XML parser, "
            "uvloop's loop) is counted in the Python function that called it (uvloop's in "
            "`Runner.run`); samples of worker threads waiting for work are left out. "
            "µs/contact = the run's CPU per contact × the share."
        )
        return result
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
            f"Top 10 functions by own time, engine process, {run.rows:,} existing contacts "
            f"(cProfile; {total_tt:.2f} s profiled)",
            ["function", "calls", "own", "own µs/contact", "cumulative ms"],
            table,
        )
    )
    result.notes.append(
        "cProfile (py-spy is not installed) slows the run down and attributes coroutine "
        "time loosely; its shares show roughly where the CPU goes."
    )
    return result


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
