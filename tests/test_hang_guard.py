"""The per-test timeout ends a test hung inside the engine's event loop, with and without
uvloop, and prints where it hung; a test that swallows the stop ends the process instead.

Each case runs pytest in a subprocess on a deliberately hanging test, with the project's
`hang_guard` plugin and a short timeout, and checks that it fails within the limit.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TIMEOUT = 4.0

CONFTEST = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from hang_guard import pytest_timeout_set_timer  # noqa: F401
"""

# A migration through `engine.cli.main` whose activity never finishes, with a stall limit
# of an hour: the engine polls until then, inside its own event loop.
HANGS_IN_THE_CLI = """
import sys

import pytest

from engine.cli import main
from engine.simulator import AccountStore, SimulatorConfig
from engine.simulator.testing import serve_in_thread


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_hangs(loop, tmp_path, monkeypatch):
    if loop == "asyncio":
        monkeypatch.setitem(sys.modules, "uvloop", None)  # the CLI falls back to asyncio
    else:
        pytest.importorskip("uvloop")
    config = SimulatorConfig(activity_delay=100_000.0)
    store = AccountStore(config)
    store.create_list("News")
    source = tmp_path / "contacts.csv"
    source.write_text("email\\n" + "".join(f"p{i}@example.com\\n" for i in range(40)))
    monkeypatch.setenv("CTCT_USERNAME", "demo")
    monkeypatch.setenv("CTCT_API_KEY", "demo-key")
    monkeypatch.setenv("CTCT_PASSWORD", "demo-password")
    with serve_in_thread(config, store) as sim:
        main([
            "migrate", str(source), "--list", "News", "--quiet",
            "--base-url", sim.base_url, "--ca-file", str(sim.ca_path),
            "--poll-initial", "0.05", "--poll-max", "0.2", "--activity-stall-timeout", "3600",
        ])
"""

SWALLOWS_THE_STOP = """
import time


def test_swallows():
    while True:
        try:
            time.sleep(100)
        except BaseException:
            pass
"""


def run_pytest(
    tmp_path: Path, test: str, *, hard_stop_after: float = 20.0
) -> tuple[int, str, float]:
    """Run pytest on `test` with the hang guard; (exit status, output, seconds)."""
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_hanging.py").write_text(textwrap.dedent(test))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "CTCT_TEST_HARD_STOP_AFTER": str(hard_stop_after)}
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-c",
            str(tmp_path / "pytest.ini"),
            "--rootdir",
            str(tmp_path),
            "--timeout",
            str(TIMEOUT),
            str(tmp_path / "test_hanging.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


@pytest.mark.timeout(150)
def test_a_test_hung_in_the_cli_fails_within_its_timeout_with_and_without_uvloop(
    tmp_path: Path,
) -> None:
    """Both hung runs of `engine.cli.main` fail at the timeout, with every thread's stack."""
    status, output, seconds = run_pytest(tmp_path, HANGS_IN_THE_CLI)
    assert status == 1, output
    # One error line per test; the short summary may repeat it, depending on the terminal width.
    stopped = re.findall(r"^E\s+hang_guard\.TestHung: the test ran for more than 4 s", output, re.M)
    assert len(stopped) == 2, output
    assert set(re.findall(r"^FAILED \S*test_hangs\[(\w+)\]", output, re.M)) == {"uvloop", "asyncio"}
    assert "2 failed" in output, output
    assert "Most recent call first" in output or "most recent call first" in output, output
    assert "poll" in output  # the stacks show where: the engine's activity poll
    # Two tests of 4 s each plus start-up; the hard stop (20 s later) never fired.
    assert seconds < 2 * TIMEOUT + 40, output


@pytest.mark.timeout(150)
def test_a_test_that_swallows_the_stop_ends_the_process_with_its_stacks(tmp_path: Path) -> None:
    """When the soft stop is caught, the process ends soon after, printing every stack."""
    status, output, seconds = run_pytest(tmp_path, SWALLOWS_THE_STOP, hard_stop_after=2.0)
    assert status == 1, output
    assert "Timeout" in output
    assert "test_swallows" in output  # the stack of the hung test
    assert seconds < TIMEOUT + 2.0 + 30, output
