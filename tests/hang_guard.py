"""A per-test timeout that ends a test hung inside any event loop (uvloop included).

pytest-timeout's `signal` method raises `pytest.fail` from its SIGALRM handler. That is a
`BaseException` that uvloop catches and logs as "exception in callback" when the signal
arrives while its loop waits (it re-raises only `KeyboardInterrupt` and `SystemExit`), so a
test hung inside `engine.cli.main` (which runs on uvloop when installed) was never ended: it
stalled CI until the whole job was killed. This plugin replaces pytest-timeout's timer
through its `pytest_timeout_set_timer` hook, keeping its settings (`timeout` in pyproject,
`@pytest.mark.timeout(N)`, `--timeout`):

1. at the timeout, the stacks of every thread are written to the test's captured stderr
   (faulthandler) and `TestHung`, a `SystemExit`, is raised in the main thread: every event
   loop lets that through, the test fails, and the session goes on;
2. if the test is still running `HARD_STOP_AFTER` seconds later (the exception was caught,
   or the main thread is stuck in C code), pytest-timeout's thread method takes over: it
   writes the stacks to the terminal and ends the pytest process with status 1.

The whole session is bounded by pytest-timeout's `session_timeout` (pyproject): no test
starts after it, and every test is bounded as above, so a stall is reported with its stacks
well inside CI's limit instead of using it up.

Kept as a plugin module of its own (loaded by `tests/conftest.py`) so that the test proving
it works can load it into a pytest run of its own.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
from typing import Any

import pytest
import pytest_timeout

#: Seconds between the soft stop (TestHung) and ending the process (the test of this
#: plugin shortens it through the environment).
HARD_STOP_AFTER = float(os.environ.get("CTCT_TEST_HARD_STOP_AFTER", "20"))


class TestHung(SystemExit):
    """Raised in a test that ran past its timeout.

    A `SystemExit` because it is the one exception that every event loop (asyncio, uvloop)
    and anyio let through from a signal handler; pytest reports it as the test's failure.
    """

    __test__ = False  # not a test class, despite its name


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """Arm the soft stop (SIGALRM -> TestHung) and the hard stop (a thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None  # signals reach only the main thread: pytest-timeout's own thread method
    timeout = float(settings.timeout)

    def on_alarm(signum: int, frame: Any) -> None:
        sys.stderr.write(f"\n+++ the test ran for more than {timeout:g} s: stacks +++\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        raise TestHung(
            f"the test ran for more than {timeout:g} s and was stopped "
            "(the stacks of every thread are in its captured stderr)"
        )

    hard = threading.Timer(
        timeout + HARD_STOP_AFTER, pytest_timeout.timeout_timer, (item, settings)
    )
    hard.name = f"hard timeout {item.nodeid}"
    hard.daemon = True
    previous = signal.signal(signal.SIGALRM, on_alarm)

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        hard.cancel()

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # pytest-timeout's protocol
    signal.setitimer(signal.ITIMER_REAL, timeout)
    hard.start()
    return True
