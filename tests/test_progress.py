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
    stats = RunStats(rows_total=100)
    stats.path_rows["contact"] = 20
    assert stats.eta(now=50.0, rows_done=20, elapsed=10.0) == pytest.approx(40.0)


def test_the_eta_of_a_bulk_run_waits_for_its_activity_not_for_the_first_rows_pace() -> None:
    """One activity of 975 rows in flight for 30 s, expected to take 120 s: 90 s are left,
    not the 975 rows at the pace of the 25 the probe settled (over 10 minutes)."""
    stats = RunStats(rows_total=1000, activity_seconds=120.0)
    stats.path_rows["bulk"] = 25
    stats.activities = 2
    stats.activity_finished(20.0)  # the probe's activity took 20 s: that is what is expected
    stats.waiting["a1"] = ActivityWait("a1", "RUNNING", since=70.0, changed=70.0, rows=975)
    assert stats.eta(now=80.0, rows_done=25, elapsed=40.0) == pytest.approx(10.0)

    stats.activity_time = (0, 0.0)  # nothing timed yet: `activity_seconds` is expected
    assert stats.eta(now=80.0, rows_done=25, elapsed=40.0) == pytest.approx(110.0)


def test_the_eta_of_a_mixed_run_is_the_slower_path() -> None:
    """Rows left split as so far; the per-contact path at its pace, the bulk path in waves of
    activities as large as its activities so far, `bulk_limit` at a time."""
    stats = RunStats(rows_total=2000, activity_seconds=60.0, bulk_limit=1)
    stats.path_rows.update(contact=100, bulk=900)
    stats.activities = 3  # 300 rows each
    # 1,000 rows left: 100 per-contact at 10/s = 10 s; 900 bulk = 3 activities one at a
    # time = 180 s.
    assert stats.eta(now=100.0, rows_done=1000, elapsed=10.0) == pytest.approx(180.0)
    events = dataclasses.replace(progress(500), eta_by_path=180.0)
    assert events.eta == 180.0
