"""Showing a run's progress: a live panel on a terminal, plain log lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from engine.pipeline.stats import Progress

__all__ = ["ProgressDisplay"]

_STAGES = ("read", "fetch", "merge", "put", "bulk", "record")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


#: Waiting activities named one by one on a progress line; the rest are counted.
_SHOWN_WAITING = 4


def _waiting(p: Progress) -> str:
    """The activities being waited for: id, status, age and time without a change."""
    if not p.waiting:
        return ""
    shown = [
        f"{w.key} {w.status or '?'} {_duration(w.age)} (unchanged {_duration(w.unchanged)})"
        for w in p.waiting[:_SHOWN_WAITING]
    ]
    more = len(p.waiting) - _SHOWN_WAITING
    if more > 0:
        shown.append(f"+{more} more")
    return " | waiting for " + ", ".join(shown)


def describe(p: Progress) -> str:
    """One line: rows done, pace, ETA, requests, retries, throttles, stages, and each
    activity being waited for with its status, age and time without a change."""
    total = f"/{p.rows_total}" if p.rows_total is not None else ""
    rate = "unlimited" if p.rate is None else f"{p.rate:.1f}/s"
    busy = " ".join(
        f"{name} {p.stages[name][0]}+{p.stages[name][1]}q" for name in _STAGES if name in p.stages
    )
    return (
        f"{p.rows_done}{total} rows, {p.rows_per_second:.0f}/s, ETA {_duration(p.eta)} | "
        f"{p.requests} requests (limit {rate}), {p.retries} retries, {p.throttles} throttled, "
        f"{p.activities} activities, {p.polls} polls, {_duration(p.elapsed)} elapsed | "
        f"{busy}{_waiting(p)}"
    )


class ProgressDisplay:
    """A progress callback for `migrate`: rich's live panel on a terminal, else a log line
    every `every` seconds. Use it as a context manager around the run.

    Args:
        stream: where to draw (standard error by default, so stdout stays for results).
        every: seconds between plain lines when the stream is not a terminal.
        terminal: force the live panel (True) or plain lines (False); None detects it.
    """

    def __init__(
        self, stream: TextIO | None = None, *, every: float = 5.0, terminal: bool | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.every = every
        self._console = Console(
            file=self.stream, stderr=self.stream is sys.stderr, force_terminal=terminal
        )
        self._live: Live | None = None
        self._last: float | None = None  # no line yet (monotonic time may start near 0)

    def __enter__(self) -> ProgressDisplay:
        if self._console.is_terminal:
            self._live = Live(console=self._console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def __call__(self, progress: Progress) -> None:
        """Show one progress event."""
        if self._live is not None:
            self._live.update(self._table(progress))
            return
        now = time.monotonic()
        if progress.final or self._last is None or now - self._last >= self.every:
            self._last = now
            print(f"progress: {describe(progress)}", file=self.stream, flush=True)

    @staticmethod
    def _table(p: Progress) -> Table:
        # Figure per row: fits a narrow terminal whatever the number of figures.
        table = Table(title="migration", show_header=False, expand=False)
        table.add_column("figure")
        table.add_column("value", justify="right")
        total = f" / {p.rows_total}" if p.rows_total is not None else ""
        for figure, value in (
            ("rows", f"{p.rows_done}{total}"),
            ("pace", f"{p.rows_per_second:.0f}/s"),
            ("ETA", _duration(p.eta)),
            ("elapsed", _duration(p.elapsed)),
            ("requests", str(p.requests)),
            ("retries", str(p.retries)),
            ("throttled", str(p.throttles)),
            ("rate limit", "none" if p.rate is None else f"{p.rate:.1f}/s"),
            ("activities", str(p.activities)),
            ("polls", str(p.polls)),
        ):
            table.add_row(figure, value)
        stages = Table(show_header=True, expand=False)
        stages.add_column("stage")
        stages.add_column("in flight")
        stages.add_column("queued")
        for name in _STAGES:
            busy, queued = p.stages.get(name, (0, 0))
            stages.add_row(name, str(busy), str(queued))
        outer = Table.grid()
        outer.add_row(table)
        outer.add_row(stages)
        if p.waiting:
            waiting = Table(title="activities being waited for", show_header=True, expand=False)
            waiting.add_column("activity")
            waiting.add_column("status")
            waiting.add_column("waiting")
            waiting.add_column("unchanged")
            for w in p.waiting:
                waiting.add_row(w.key, w.status or "?", _duration(w.age), _duration(w.unchanged))
            outer.add_row(waiting)
        outer.add_row(", ".join(f"{v} {k}" for k, v in sorted(p.outcomes.items())) or "-")
        return outer
