"""The progress display: plain lines when not on a terminal, a live panel on one."""

from __future__ import annotations

import dataclasses
import io

import pytest

from engine.pipeline.stats import ActivityWait, Progress, RunStats, WaitingActivity
from engine.progress import ProgressDisplay, describe


def progress(done: int, *, final: bool = False) -> Progress:
    """A progress event half-way through 1,000 rows."""
    return Progress(
        elapsed=10.0,
        rows_read=1000,
        rows_total=1000,
        rows_done=done,
        outcomes={"updated": done},
        stages={"fetch": (50, 3), "put": (8, 0), "bulk": (0, 0)},
        requests=2 * done,
        retries=4,
        throttles=1,
        rate=3.5,
        activities=0,
        final=final,
    )


def test_describe_names_pace_eta_requests_retries_throttles_and_stages() -> None:
    """One line carries rows, pace, ETA, requests, the rate limit, retries, throttles, stages."""
    line = describe(progress(500))
    assert "500/1000 rows" in line
    assert "50/s" in line
    assert "ETA 0m10s" in line
    assert "1000 requests (limit 3.5/s)" in line
    assert "4 retries, 1 throttled" in line
    assert "fetch 50+3q" in line


def test_plain_lines_are_spaced_and_the_final_one_always_shown() -> None:
    """Off a terminal, a line is printed at most every `every` seconds, and the last always."""
    out = io.StringIO()
    with ProgressDisplay(out, every=3600, terminal=False) as display:
        display(progress(100))
        display(progress(200))
        display(progress(1000, final=True))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("progress: 100/1000 rows")
    assert lines[1].startswith("progress: 1000/1000 rows")


def test_a_terminal_gets_the_live_panel() -> None:
    """On a terminal the display draws rich's live panel with each stage's queue."""
    out = io.StringIO()
    with ProgressDisplay(out, terminal=True) as display:
        display(progress(500))
    text = out.getvalue()
    assert "fetch" in text
    assert "500 / 1000" in text


def test_the_first_plain_line_is_shown_on_a_freshly_booted_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first progress line is printed even when the monotonic clock is still near zero."""
    monkeypatch.setattr("engine.progress.time.monotonic", lambda: 3.0)
    out = io.StringIO()
    with ProgressDisplay(out, every=3600, terminal=False) as display:
        display(progress(100))
    assert out.getvalue().startswith("progress: 100/1000 rows")


def waiting_for(*items: tuple[str, str, float, float]) -> Progress:
    """A progress event while activities are polled."""
    return dataclasses.replace(
        progress(100), waiting=tuple(WaitingActivity(*item) for item in items)
    )


def test_a_plain_line_names_each_waiting_activity_with_its_status_and_age() -> None:
    """Each activity being polled shows on the line with its status, age and time unchanged."""
    line = describe(
        waiting_for(("a07e1aaa", "RUNNING", 190.0, 65.0), ("a07e1bbb", "PENDING", 20.0, 20.0))
    )
    assert "waiting for a07e1aaa RUNNING 3m10s (unchanged 1m05s)" in line
    assert "a07e1bbb PENDING 0m20s (unchanged 0m20s)" in line


def test_a_plain_line_counts_waiting_activities_beyond_four() -> None:
    """Past four waiting activities, the line counts the others instead of naming them."""
    line = describe(waiting_for(*((f"a{i}", "PENDING", 5.0, 5.0) for i in range(6))))
    assert "a3 PENDING" in line
    assert "a4 PENDING" not in line
    assert "+2 more" in line


def test_the_live_panel_shows_each_waiting_activity() -> None:
    """On a terminal, the panel has a table of the waiting activities and their ages."""
    out = io.StringIO()
    with ProgressDisplay(out, terminal=True) as display:
        display(waiting_for(("a07e1aaa", "RUNNING", 190.0, 65.0)))
    text = out.getvalue()
    assert "a07e1aaa" in text
    assert "RUNNING" in text
    assert "3m10s" in text
    assert "1m05s" in text


def test_the_panel_and_the_line_show_activities_polls_and_elapsed_time() -> None:
    """Both renderings carry the activities submitted, the polls sent and the time elapsed."""
    event = dataclasses.replace(progress(500), activities=3, polls=17, elapsed=125.0)
    assert "3 activities, 17 polls, 2m05s elapsed" in describe(event)
    out = io.StringIO()
    with ProgressDisplay(out, terminal=True) as display:
        display(event)
    text = out.getvalue()
    for heading in ("activities", "polls", "elapsed"):
        assert heading in text
    assert "2m05s" in text


def test_the_eta_of_a_per_contact_run_is_the_rows_left_at_its_pace() -> None:
    """With no activity, the ETA is the rows left at the pace so far."""
    stats = RunStats(rows_total=100, rows_read=100)
    stats.path_rows["contact"] = 20
    stats.stages["fetch"].busy = 80
    assert stats.eta(now=50.0, rows_done=20, elapsed=10.0) == pytest.approx(40.0)


def test_the_eta_of_a_bulk_run_waits_for_its_activities_not_for_the_first_rows_pace() -> None:
    """The probe's 25 rows settled, one activity of 975 rows in flight for 10 s: the ETA is
    what is left of its expected time, not the 975 rows at the probe's pace (minutes)."""
    stats = RunStats(rows_total=1000, rows_read=1000, activity_seconds=120.0, bulk_verified=True)
    stats.path_rows["bulk"] = 25
    stats.stages["bulk"].busy = 975
    stats.batches_open = stats.batches_seen = 1
    stats.waiting["a1"] = ActivityWait("a1", "RUNNING", since=70.0, changed=70.0, rows=975)
    stats.activity_finished(20.0)  # the probe's activity took 20 s: so will this one
    assert stats.eta(now=80.0, rows_done=25, elapsed=40.0) == pytest.approx(10.0)

    stats.activity_time = (0, 0.0)  # nothing timed yet: `activity_seconds` is expected
    assert stats.eta(now=80.0, rows_done=25, elapsed=40.0) == pytest.approx(110.0)


def test_while_the_probe_runs_the_rest_of_its_batch_is_an_activity_still_to_come() -> None:
    """The probe activity in flight (10 s of an expected 120) and its batch's rest after it."""
    stats = RunStats(rows_total=1000, rows_read=1000, activity_seconds=120.0)
    stats.stages["bulk"].busy = 1000
    stats.batches_open = stats.batches_seen = 1
    stats.waiting["probe"] = ActivityWait("probe", "RUNNING", since=0.0, changed=0.0, rows=25)
    stats.path_rows["contact"] = 5  # a small list set, done
    assert stats.eta(now=10.0, rows_done=5, elapsed=10.0) == pytest.approx(110.0 + 120.0)


def test_the_eta_of_a_mixed_run_is_the_slower_path() -> None:
    """The per-contact path at its pace; the bulk path's open batches in waves of
    `bulk_limit` activities, each as long as expected."""
    stats = RunStats(rows_total=2000, rows_read=2000, activity_seconds=60.0, bulk_limit=1)
    stats.path_rows.update(contact=100, bulk=900)
    stats.stages["put"].busy = 100
    stats.stages["bulk"].busy = 900
    stats.batches_open, stats.batches_seen = 3, 6
    # Per-contact: 100 left at 10/s = 10 s; bulk: three activities, one at a time = 180 s.
    assert stats.eta(now=100.0, rows_done=1000, elapsed=10.0) == pytest.approx(180.0)
    events = dataclasses.replace(progress(500), eta_by_path=180.0)
    assert events.eta == 180.0
