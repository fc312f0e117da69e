"""Helpers of the durability suites: the simulator and the engine as real subprocesses, a
seeded scenario that exercises both paths, and the whole-account checks (I1, I2, I3, one
contact per email, the write count).

The simulator runs as `python -m engine simulate --state FILE` and saves the whole account to
that file when it gets SIGTERM, so a test reads the final account exactly as the server holds
it. The engine runs as `python -m engine migrate …` with the credentials in `CTCT_*`, so it
can be killed with SIGKILL (or by `CTCT_ENGINE_CRASH_AT`) like a real process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence, Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from engine.simulator import AccountStore, RunningSimulator, SimulatorConfig
from engine.simulator.testing import (  # re-exported for the test modules
    read_stats as sim_stats_sync,  # noqa: F401
    serve_in_thread as simulator_in_thread,  # noqa: F401
)
from engine.simulator.v1.store import ContactInput

USERNAME = "durable"
API_KEY = "dur-key-5e1"
PASSWORD = "dur-pass-9b2"

#: Simulator options for quick runs: activities finish in 0.06–0.24 s, out of order.
SIM_FAST = ("--activity-delay", "0.15", "--activity-jitter", "0.6", "--seed", "11")
#: Engine options for quick runs: no real rate limit, quick polls, no progress display.
ENGINE_FAST = (
    "--rate-limit",
    "10000",
    "--concurrency",
    "16",
    "--poll-initial",
    "0.05",
    "--poll-max",
    "0.2",
    "--quiet",
)
#: The routes that change the account (the engine never sends DELETE; I2).
WRITE_ROUTES = ("PUT contacts/{id}", "POST contacts", "POST activities")
SUCCESSES = frozenset({"created", "updated", "unchanged", "bulk_added"})


# --- the simulator as a subprocess ------------------------------------------------------


@dataclass(frozen=True)
class SimProcess:
    """A running `python -m engine simulate`.

    Attributes:
        base_url: the API base it printed.
        ca_path: its CA file.
        process: the process.
        state_path: the state file it loaded and saves to on SIGTERM.
        log_path: its stderr.
    """

    base_url: str
    ca_path: Path
    process: subprocess.Popen[str]
    state_path: Path
    log_path: Path

    @property
    def stats_url(self) -> str:
        """The `/_sim/stats` URL."""
        return self.base_url.split("/ws/", 1)[0] + "/_sim/stats"

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def stats(self) -> dict[str, Any]:
        """The request counters: `total`, `by_route`, `by_status`."""
        with urllib.request.urlopen(self.stats_url, context=self._context(), timeout=30) as answer:
            result: dict[str, Any] = json.load(answer)
        return result

    def reset_stats(self) -> None:
        """Zero the request counters."""
        request = urllib.request.Request(self.stats_url, method="DELETE")
        urllib.request.urlopen(request, context=self._context(), timeout=30).close()

    def writes(self) -> int:
        """PUT contacts, POST contacts and POST activities answered so far."""
        return writes_of(self.stats())

    def account_args(self) -> list[str]:
        """`--base-url` and `--ca-file` for the engine."""
        return ["--base-url", self.base_url, "--ca-file", str(self.ca_path)]

    def stop(self) -> AccountStore:
        """Stop with SIGTERM (the simulator saves the account) and return the saved account."""
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("the simulator did not stop on SIGTERM") from None
        assert status == 0, f"the simulator exited {status}: {self.log_path.read_text()[-2000:]}"
        return AccountStore.load(self.state_path, SimulatorConfig(username=USERNAME))


def writes_of(stats: Mapping[str, Any]) -> int:
    """The writes in a stats document (every answer of a write route, whatever its status)."""
    routes: Mapping[str, int] = stats["by_route"]
    assert not [r for r in routes if r.startswith("DELETE")], f"I2: DELETE sent: {routes}"
    return sum(routes.get(route, 0) for route in WRITE_ROUTES)


@contextmanager
def simulator_process(
    folder: Path,
    seed: Path | None,
    *args: str,
    username: str = USERNAME,
    api_key: str = API_KEY,
    password: str = PASSWORD,
) -> Iterator[SimProcess]:
    """Start the simulator on 127.0.0.1:0 with a copy of the `seed` state; kill it on exit
    (unless the test stopped it with `SimProcess.stop`)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = folder / "sim-state.json"
    if seed is not None:
        shutil.copyfile(seed, state)
    command = [sys.executable, "-m", "engine", "simulate", "--host", "127.0.0.1", "--port", "0"]
    command += ["--ca-dir", str(folder), "--state", str(state)]
    command += ["--username", username, "--api-key", api_key, "--password", password, *args]
    log_path = folder / "sim-stderr.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("serving "):
            process.kill()
            process.wait(timeout=30)
            raise AssertionError(f"the simulator did not start: {line!r} {log_path.read_text()}")
        parts = line.split()
        ca = next(p[3:] for p in parts if p.startswith("ca="))
        yield SimProcess(parts[1], Path(ca), process, state, log_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


# --- the engine as a subprocess ---------------------------------------------------------


@dataclass(frozen=True)
class EngineResult:
    """What a `python -m engine …` process did.

    Attributes:
        returncode: its exit status (-9 when it was killed with SIGKILL).
        stdout: what it printed.
        stderr: what it logged.
        seconds: how long it ran.
    """

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def killed(self) -> bool:
        """True when the process died of SIGKILL."""
        return self.returncode == -signal.SIGKILL

    @property
    def output(self) -> str:
        """stdout and stderr together."""
        return self.stdout + self.stderr


def engine_env(
    *,
    crash_at: str | None = None,
    username: str = USERNAME,
    api_key: str = API_KEY,
    password: str = PASSWORD,
) -> dict[str, str]:
    """The environment of an engine process: this one's, the credentials, a crash point."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTCT_")}
    env.update(CTCT_USERNAME=username, CTCT_API_KEY=api_key, CTCT_PASSWORD=password)
    if crash_at is not None:
        env["CTCT_ENGINE_CRASH_AT"] = crash_at
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@contextmanager
def engine_process(
    args: Sequence[str], *, env: Mapping[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """Start `python -m engine ARGS`; yields (process, stdout file, stderr file); the process
    is killed on exit if it still runs."""
    with tempfile.TemporaryDirectory(prefix="engine-run-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with out.open("wb") as out_file, err.open("wb") as err_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "engine", *args],
                stdout=out_file,
                stderr=err_file,
                env=dict(env if env is not None else engine_env()),
                start_new_session=True,
            )
        try:
            yield process, out, err
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


def run_engine(
    args: Sequence[str],
    *,
    crash_at: str | None = None,
    kill_after: float | None = None,
    timeout: float = 90.0,
    env: Mapping[str, str] | None = None,
) -> EngineResult:
    """Run `python -m engine ARGS` to its end, or SIGKILL it after `kill_after` seconds.

    Raises:
        AssertionError: it did not end within `timeout` seconds (it is killed).
    """
    started = time.monotonic()
    with engine_process(args, env=env or engine_env(crash_at=crash_at)) as (process, out, err):
        try:
            if kill_after is not None:
                try:
                    process.wait(timeout=kill_after)
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(
                f"the engine did not finish in {timeout}s: {err.read_text(errors='replace')}"
            ) from None
        return EngineResult(
            returncode,
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
            time.monotonic() - started,
        )


# --- a seeded scenario --------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A seeded account and a source file that exercise both paths.

    Attributes:
        seed: the account before the run, as a simulator state file.
        source: the CSV source (header `Email Address,First Name,Lists`).
        rows: every data line number of the source.
        targets: email -> list names it must end up on (valid rows only, duplicates unioned).
        rejected_rows: line numbers of the rows the engine must reject.
        opted_out: the source's Do Not Mail emails (to be skipped, never changed).
    """

    seed: Path
    source: Path
    rows: tuple[int, ...]
    targets: dict[str, frozenset[str]]
    rejected_rows: tuple[int, ...]
    opted_out: frozenset[str]

    def before(self) -> AccountStore:
        """The seeded account."""
        return AccountStore.load(self.seed, SimulatorConfig(username=USERNAME))

    def migrate_args(self, sim: SimProcess, report: Path, *extra: str) -> list[str]:
        """The `migrate` command line of this scenario on `sim`."""
        return [
            "migrate",
            str(self.source),
            "--lists-column",
            "Lists",
            "--report",
            str(report),
            *sim.account_args(),
            *ENGINE_FAST,
            *extra,
        ]


LIST_NAMES = ("Alpha", "Beta", "Gamma", "Delta", "Epsilon")
#: Target sets with fewer than 25 contacts each: the per-contact path.
SMALL_SETS = (
    "Alpha;Delta",
    "Gamma;Delta",
    "Epsilon;Beta",
    "Alpha;Epsilon",
    "Beta;Delta",
    "Gamma;Epsilon",
    "Alpha;Beta;Gamma",
    "Delta;Epsilon",
)


def build_scenario(
    folder: Path, *, bulk: tuple[int, int, int] = (450, 300, 250), per_set: int = 20
) -> Scenario:
    """Seed an account and write its source: by default about 1,200 rows.

    Three bulk target sets (`bulk` contacts each: Beta, Beta;Gamma, Delta; half of them
    already on other lists), eight per-contact sets of `per_set` contacts, Do Not Mail and
    Removed contacts, duplicated emails (some with another list), five invalid rows, and
    bystanders the source does not name.
    """
    folder.mkdir(parents=True, exist_ok=True)
    store = AccountStore(SimulatorConfig(username=USERNAME, seed=3))
    ids = {name: store.create_list(name) for name in LIST_NAMES}
    rows: list[tuple[str, str, str]] = []  # (email, first name, lists)

    def existing(email: str, i: int) -> str:
        # Existing contacts sit on other lists, some already on a target.
        lists = [["Alpha"], ["Alpha", "Gamma"], ["Epsilon"], ["Beta", "Alpha"]][i % 4]
        store.add_contact(email, lists=[ids[n] for n in lists], fields={"FirstName": f"Old{i}"})
        return email

    groups = dict(zip(("Beta", "Beta;Gamma", "Delta"), bulk, strict=True))
    for g, (lists, size) in enumerate(groups.items()):
        for i in range(size):
            email = f"g{g}-{i}@example.com"
            if i % 2 == 0:
                existing(email, i)
            rows.append((email.upper() if i % 7 == 0 else email, f"G{g}N{i}", lists))
    for s, lists in enumerate(SMALL_SETS):
        for i in range(per_set):
            email = f"s{s}-{i}@example.org"
            if i % 2 == 1:
                existing(email, i)
            rows.append((email, f"S{s}N{i}", lists))
    opted_out = []
    for i in range(8):
        email = f"optedout{i}@example.net"
        store.add_contact(email, status="Do Not Mail")
        opted_out.append(email)
        rows.append((email, "", "Beta" if i % 2 else "Alpha;Delta"))
    for i in range(6):
        email = f"removed{i}@example.net"
        store.add_contact(email, status="Removed")
        rows.append((email, "", "Beta" if i % 2 else "Gamma;Delta"))
    # Duplicates: the same email again, with another list (unioned with the first row's).
    for i in range(0, min(40, bulk[0]), 4):
        rows.append((f"g0-{i}@example.com", f"Again{i}", "Gamma"))
        rows.append((f"s0-{i % per_set}@example.org", "", "Alpha;Delta"))
    invalid = ["not-an-email", "two@@example.com", "", "spaces in@example.com", "x@-bad-.com"]
    for i, email in enumerate(invalid):
        rows.append((email, f"Invalid{i}", "Beta"))
    for i in range(30):  # contacts that exist but are in no source row must not change
        store.add_contact(f"bystander{i}@example.com", lists=[ids["Alpha"], ids["Delta"]])

    source = folder / "contacts.csv"
    with source.open("w", encoding="utf-8", newline="") as file:
        file.write("Email Address,First Name,Lists\n")
        for email, name, lists in rows:
            file.write(f"{email},{name},{lists}\n")
    seed = folder / "seed.json"
    store.save(seed)

    targets: dict[str, set[str]] = {}
    rejected = []
    for line, (email, _, lists) in enumerate(rows, start=2):
        normal = email.strip().lower()
        if normal in [e.lower() for e in invalid] or not normal:
            rejected.append(line)
            continue
        targets.setdefault(normal, set()).update(lists.split(";"))
    return Scenario(
        seed=seed,
        source=source,
        rows=tuple(range(2, len(rows) + 2)),
        targets={e: frozenset(t) for e, t in targets.items()},
        rejected_rows=tuple(rejected),
        opted_out=frozenset(opted_out),
    )


# --- checks -------------------------------------------------------------------------------


def read_report(path: Path) -> list[dict[str, Any]]:
    """A JSON Lines report; every line must be whole JSON, the last one included."""
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "the report ends in half a line"
    return [json.loads(line) for line in text.splitlines()]


def memberships(store: AccountStore) -> dict[str, tuple[str, frozenset[str]]]:
    """email -> (status, list names) for every contact of the account."""
    names = {item.id: item.name for item in store.lists()}
    return {c.email: (c.status, frozenset(names[i] for i in c.lists)) for c in store.contacts()}


def check_migration(
    scenario: Scenario,
    after: AccountStore,
    report: Path,
    *,
    complete: bool = True,
    exempt: frozenset[str] = frozenset(),
    since_seed: bool = True,
) -> list[dict[str, Any]]:
    """Assert I1, I2, I3 and one contact per email over the whole account; return the report.

    Args:
        scenario: what was seeded and migrated.
        after: the account after the run(s).
        report: the final report.
        complete: every valid row must be done (not only accounted for).
        exempt: emails excused from "no list lost" (another writer removed their lists).
        since_seed: the report covers every write since the seed; False after `--restart`,
            whose report starts over (a contact written before it is `unchanged` then).
    """
    lines = read_report(report)
    was = memberships(scenario.before())
    now = memberships(after)

    # I1: no contact lost a list; every contact reported done is on before ∪ targets.
    for email, (_, lists) in was.items():
        if email not in exempt:
            lost = lists - now[email][1]
            assert not lost, f"I1: {email} lost {sorted(lost)}"
    outcome_of: dict[str, str] = {}
    for line in lines:
        if line.get("path"):
            assert line["email"] not in outcome_of, f"I3: {line['email']} reported twice"
            outcome_of[line["email"]] = line["outcome"]
        email = line["email"]
        if line.get("path") and email not in exempt and since_seed:
            # I3, true outcomes: `unchanged` only for a contact already on every target, and
            # the engine's own additions never reported as lists it had before (a write sent
            # by a killed run is the next run's `created`/`updated`, not `unchanged`).
            was_on = was.get(email, ("", frozenset()))[1]
            if line["outcome"] == "unchanged":
                assert scenario.targets[email] <= was_on, f"I3: {email} is unchanged: {line}"
            before = frozenset(line.get("lists_before") or ())
            claimed = (before & scenario.targets.get(email, frozenset())) - was_on
            assert not claimed, f"I3: {email} reports {sorted(claimed)} as before: {line}"
        if line["outcome"] in SUCCESSES:
            kept = was.get(email, ("", frozenset()))[1] if email not in exempt else frozenset()
            need = scenario.targets[email] | kept
            missing = need - now[email][1]
            assert not missing, f"I1: {email} is {line['outcome']} but lacks {sorted(missing)}"
        else:
            assert line.get("reason"), f"I3: {line} has no reason"

    # I2: Do Not Mail contacts are skipped and unchanged.
    for email in scenario.opted_out:
        assert now[email] == was[email], f"I2: the Do Not Mail contact {email} changed"
        if complete:
            assert outcome_of.get(email) == "skipped", f"I2: {email} is {outcome_of.get(email)}"

    # I3: every source row in exactly one report line.
    seen = sorted(row for line in lines for row in line["rows"])
    assert seen == sorted(scenario.rows), (
        f"I3: rows missing {sorted(set(scenario.rows) - set(seen))[:10]}, "
        f"doubled {[r for r, n in Counter(seen).items() if n > 1][:10]}"
    )
    rejected = sorted(r for line in lines if line["outcome"] == "rejected" for r in line["rows"])
    assert rejected == sorted(scenario.rejected_rows)
    if complete:
        for email in scenario.targets.keys() - scenario.opted_out:
            assert outcome_of.get(email) in SUCCESSES, f"{email} is {outcome_of.get(email)}"

    # One contact per email, and none the source does not name.
    emails = [c.email for c in after.contacts()]
    assert len(emails) == len(set(emails)), "an email is in the account twice"
    assert set(emails) == set(was) | set(scenario.targets), "contacts appeared or vanished"
    return lines


async def sim_stats(sim: RunningSimulator) -> dict[str, Any]:
    """The request counters of an in-process simulator (`GET /_sim/stats`)."""
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(sim.ca_path)))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(sim.stats_url) as response,
    ):
        stats: dict[str, Any] = await response.json()
    return stats


def set_lists(store: AccountStore, email: str, names: AbstractSet[str]) -> None:
    """Another client's PUT of `email`, with the lists `names` as its whole membership set."""
    contact = store.contact_by_email(email)
    assert contact is not None, f"{email} is not in the account"
    uri = f"http://{store.config.id_host}/ws/customers/{store.config.username}/lists/{{}}"
    ids = sorted(item.id for item in store.lists() if item.name in names)
    assert len(ids) == len(names), f"unknown lists in {names}"
    store.update_contact(
        contact.id,
        ContactInput(
            email,
            fields=dict(contact.fields),
            lists=[uri.format(i) for i in ids],
            opt_in_source="ACTION_BY_CUSTOMER",
        ),
    )


def journal_outcomes(path: Path) -> int:
    """The outcomes a journal holds, after an integrity check of the SQLite file."""
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (count,) = db.execute("SELECT COUNT(*) FROM outcomes").fetchone()
    finally:
        db.close()
    return int(count)
