"""Helpers of the durability suites: the simulator and the engine as real subprocesses, a
seeded scenario that exercises both paths (on a v1 or a V3 account), and the backend-neutral
whole-account checks (I1, I2, I3, one contact per email, I7; the write count).

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
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence, Set as AbstractSet
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from engine.simulator import AccountStore, RunningSimulator, SimulatorConfig, v3
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

#: The backends a scenario can seed: the v1 simulator's account or the V3 simulator's.
BACKENDS = ("v1", "v3")
#: An account reduced to what the invariants talk about: email -> (status, list names).
#: Statuses are the simulator's own (v1: Active, Do Not Mail, Removed; V3: active,
#: unsubscribed, deleted…); list names are the same on both.
AccountView = dict[str, tuple[str, frozenset[str]]]
#: Whatever `memberships` can reduce: a v1 or V3 store, a state file of either, a view.
Account = AccountStore | v3.AccountStore | Path | Mapping[str, tuple[str, frozenset[str]]]


@dataclass(frozen=True)
class Scenario:
    """A seeded account and a source file that exercise both paths.

    Attributes:
        seed: the account before the run, as a simulator state file (of `backend`).
        source: the CSV source (header `Email Address,First Name,Lists`).
        rows: every data line number of the source.
        targets: email -> list names it must end up on (valid rows only, duplicates unioned).
        rejected_rows: line numbers of the rows the engine must reject.
        opted_out: the source's Do Not Mail (v1) or unsubscribed (V3) emails (to be skipped,
            never changed).
        backend: `v1` or `v3`: which simulator's account `seed` is.
        deleted: the source's deleted V3 contacts (to be skipped, never revived; v1's
            Removed contacts are re-added by design and are not here).
    """

    seed: Path
    source: Path
    rows: tuple[int, ...]
    targets: dict[str, frozenset[str]]
    rejected_rows: tuple[int, ...]
    opted_out: frozenset[str]
    backend: str = "v1"
    deleted: frozenset[str] = frozenset()

    def before(self) -> AccountStore | v3.AccountStore:
        """The seeded account."""
        return load_account(self.seed)

    def migrate_args(self, sim: Any, report: Path, *extra: str) -> list[str]:
        """The `migrate` command line of this scenario on `sim` (a `SimProcess`, or any
        simulator handle with `account_args()`, such as a V3 one)."""
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


class _Seeder:
    """Seeds the same account on either simulator's store (lists by name)."""

    def __init__(self, backend: str) -> None:
        assert backend in BACKENDS, backend
        self.backend = backend
        self.v1: AccountStore | None = None
        self.v3: v3.AccountStore | None = None
        if backend == "v1":
            self.v1 = AccountStore(SimulatorConfig(username=USERNAME, seed=3))
        else:
            self.v3 = v3.AccountStore(v3.SimulatorConfig(seed=3))
        self.ids: dict[str, Any] = {}

    def create_list(self, name: str) -> None:
        if self.v1 is not None:
            self.ids[name] = self.v1.create_list(name)
        else:
            assert self.v3 is not None
            self.ids[name] = self.v3.add_list(name)

    def add(
        self, email: str, lists: Sequence[str] = (), first_name: str | None = None, **kind: bool
    ) -> None:
        """A contact on `lists`; `opted_out=True` or `removed=True` for those statuses."""
        opted_out, removed = kind.get("opted_out", False), kind.get("removed", False)
        ids = [self.ids[n] for n in lists]
        if self.v1 is not None:
            status = "Do Not Mail" if opted_out else "Removed" if removed else "Active"
            fields = {"FirstName": first_name} if first_name else None
            self.v1.add_contact(email, lists=ids, status=status, fields=fields)
            return
        assert self.v3 is not None
        self.v3.add_contact(
            email,
            lists=ids,
            permission="unsubscribed" if opted_out else "implicit",
            first_name=first_name,
            deleted=removed,
        )

    def save(self, path: Path) -> None:
        if self.v1 is not None:
            self.v1.save(path)
        else:
            assert self.v3 is not None
            self.v3.save(path)


def build_scenario(
    folder: Path,
    *,
    bulk: tuple[int, int, int] = (450, 300, 250),
    per_set: int = 20,
    backend: str = "v1",
) -> Scenario:
    """Seed an account (of the `backend` simulator) and write its source: by default about
    1,200 rows.

    Three bulk target sets (`bulk` contacts each: Beta, Beta;Gamma, Delta; half of them
    already on other lists), eight per-contact sets of `per_set` contacts, Do Not Mail
    (V3: unsubscribed) and Removed (V3: deleted) contacts, duplicated emails (some with
    another list), five invalid rows, and bystanders the source does not name.
    """
    folder.mkdir(parents=True, exist_ok=True)
    seeder = _Seeder(backend)
    for name in LIST_NAMES:
        seeder.create_list(name)
    rows: list[tuple[str, str, str]] = []  # (email, first name, lists)

    def existing(email: str, i: int) -> str:
        # Existing contacts sit on other lists, some already on a target.
        lists = [["Alpha"], ["Alpha", "Gamma"], ["Epsilon"], ["Beta", "Alpha"]][i % 4]
        seeder.add(email, lists, first_name=f"Old{i}")
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
        seeder.add(email, opted_out=True)
        opted_out.append(email)
        rows.append((email, "", "Beta" if i % 2 else "Alpha;Delta"))
    removed = []
    for i in range(6):
        email = f"removed{i}@example.net"
        seeder.add(email, removed=True)
        removed.append(email)
        rows.append((email, "", "Beta" if i % 2 else "Gamma;Delta"))
    # Duplicates: the same email again, with another list (unioned with the first row's).
    for i in range(0, min(40, bulk[0]), 4):
        rows.append((f"g0-{i}@example.com", f"Again{i}", "Gamma"))
        rows.append((f"s0-{i % per_set}@example.org", "", "Alpha;Delta"))
    invalid = ["not-an-email", "two@@example.com", "", "spaces in@example.com", "x@-bad-.com"]
    for i, email in enumerate(invalid):
        rows.append((email, f"Invalid{i}", "Beta"))
    for i in range(30):  # contacts that exist but are in no source row must not change
        seeder.add(f"bystander{i}@example.com", ["Alpha", "Delta"])

    source = folder / "contacts.csv"
    with source.open("w", encoding="utf-8", newline="") as file:
        file.write("Email Address,First Name,Lists\n")
        for email, name, lists in rows:
            file.write(f"{email},{name},{lists}\n")
    seed = folder / "seed.json"
    seeder.save(seed)

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
        backend=backend,
        # A deleted V3 contact is never revived (I2); a Removed v1 contact is re-added.
        deleted=frozenset(removed) if backend == "v3" else frozenset(),
    )


# --- checks -------------------------------------------------------------------------------


def read_report(path: Path) -> list[dict[str, Any]]:
    """A JSON Lines report; every line must be whole JSON, the last one included."""
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "the report ends in half a line"
    return [json.loads(line) for line in text.splitlines()]


def load_account(path: Path) -> AccountStore | v3.AccountStore:
    """A simulator's saved state file, read by the loader of its own dialect (the V3 state
    names its format; the v1 one does not)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and str(data.get("format", "")).startswith("ctct-v3"):
        return v3.AccountStore.load(path)
    return AccountStore.load(path, SimulatorConfig(username=USERNAME))


def memberships(account: Account) -> AccountView:
    """email -> (status, list names) for every contact of the account (a v1 or V3 store, or
    either's state file); an email held by two contacts fails here."""
    if isinstance(account, Mapping):
        return dict(account)
    if isinstance(account, Path):
        account = load_account(account)
    view: AccountView = {}
    if isinstance(account, v3.AccountStore):
        v3_names = {item.id: item.name for item in account.lists("all")}
        for contact in account.contacts():
            assert contact.email is not None, f"contact {contact.id} lost its email address"
            email = contact.email.strip().lower()
            assert email not in view, f"{email} is in the account twice"
            view[email] = (contact.status, frozenset(v3_names[i] for i in contact.lists))
        return view
    v1_names = {item.id: item.name for item in account.lists()}
    for c in account.contacts():
        email = c.email.strip().lower()
        assert email not in view, f"{email} is in the account twice"
        view[email] = (c.status, frozenset(v1_names[i] for i in c.lists))
    return view


#: V3 write-log endpoints a list-safe migration never calls (I2): they remove memberships,
#: contacts or lists, or assert the contact's own consent (`sign_up_form`).
FORBIDDEN_V3_ENDPOINTS = frozenset(v3.DESTRUCTIVE_ENDPOINTS)


def check_v3_writes(writes: Iterable[Mapping[str, Any] | tuple[Any, ...]]) -> None:
    """I2 on V3: the write log (`/_sim/writes`, or the store's `writes`) holds no DELETE and
    no `sign_up_form`, `remove_list_memberships`, `contact_delete` or `list_delete`."""
    for write in writes:
        record = write if isinstance(write, Mapping) else write._asdict()  # type: ignore[union-attr]
        assert record["method"] != "DELETE", f"I2: DELETE sent: {record}"
        assert record["endpoint"] not in FORBIDDEN_V3_ENDPOINTS, f"I2: {record} sent"
        for name in ("sign_up_form", "remove_list_memberships", "contact_delete", "list_delete"):
            assert name not in record["path"], f"I2: {record} sent"


def secret_forms(secret: str) -> set[bytes]:
    """How a secret can show in a file: as is, lower-cased, UTF-16 (SQLite text may be)."""
    return {secret.encode(), secret.lower().encode(), secret.encode("utf-16-le")}


def check_no_secrets(secrets: Iterable[str], *outputs: str | bytes | Path) -> None:
    """I7: no secret in any of the texts, files, or files under the folders given."""
    forms = {f"secret #{n}": secret_forms(s) for n, s in enumerate(secrets, 1) if s}
    assert forms, "no secret to look for"

    def blobs() -> Iterator[tuple[str, bytes]]:
        for output in outputs:
            if isinstance(output, Path):
                files = sorted(output.rglob("*")) if output.is_dir() else [output]
                for file in files:
                    if file.is_file():
                        yield str(file), file.read_bytes()
            else:
                yield "a text", output.encode() if isinstance(output, str) else output

    for where, data in blobs():
        lowered = data.lower()
        for secret, variants in forms.items():
            shown = any(v in data or v in lowered for v in variants)
            assert not shown, f"I7: {secret} is in {where}"


def check_migration(
    scenario: Scenario,
    after: Account,
    report: Path,
    *,
    complete: bool = True,
    exempt: frozenset[str] = frozenset(),
    since_seed: bool = True,
    writes: Iterable[Mapping[str, Any] | tuple[Any, ...]] | None = None,
    secrets: Sequence[str] = (),
    outputs: Sequence[str | bytes | Path] = (),
) -> list[dict[str, Any]]:
    """Assert I1, I2, I3, one contact per email over the whole account, and I7; return the
    report. Backend-neutral: the scenario says which simulator's account `after` is.

    Args:
        scenario: what was seeded and migrated.
        after: the account after the run(s): a store, a saved state file, or a view.
        report: the final report.
        complete: every valid row must be done (not only accounted for).
        exempt: emails excused from "no list lost" (another writer removed their lists).
        since_seed: the report covers every write since the seed; False after `--restart`,
            whose report starts over (a contact written before it is `unchanged` then).
        writes: the V3 simulator's write log (required on V3: I2 is also what was sent).
        secrets: credentials or tokens that must be in no output (I7): the report, the
            journal beside it and every one of `outputs` (texts, files or folders).
        outputs: what else the runs left (stdout, stderr, logs, folders of them).
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

    # I2: Do Not Mail (unsubscribed) contacts are skipped and unchanged; deleted V3 contacts
    # are skipped and stay deleted, on no list (never revived); V3 sent nothing destructive.
    for email in scenario.opted_out | scenario.deleted:
        assert now[email] == was[email], f"I2: the contact {email} changed: {now[email]}"
        if complete:
            assert outcome_of.get(email) == "skipped", f"I2: {email} is {outcome_of.get(email)}"
    if scenario.backend == "v3":
        assert writes is not None, "a V3 check needs the simulator's write log"
        check_v3_writes(writes)

    # I3: every source row in exactly one report line.
    seen = sorted(row for line in lines for row in line["rows"])
    assert seen == sorted(scenario.rows), (
        f"I3: rows missing {sorted(set(scenario.rows) - set(seen))[:10]}, "
        f"doubled {[r for r, n in Counter(seen).items() if n > 1][:10]}"
    )
    rejected = sorted(r for line in lines if line["outcome"] == "rejected" for r in line["rows"])
    assert rejected == sorted(scenario.rejected_rows)
    if complete:
        by_email = {line["email"]: line for line in lines if line.get("path")}
        for email in scenario.targets.keys() - scenario.opted_out - scenario.deleted:
            assert outcome_of.get(email) in SUCCESSES, f"{email}: {by_email.get(email)}"

    # One contact per email (`memberships` checks it), and none the source does not name.
    assert set(now) == set(was) | set(scenario.targets), "contacts appeared or vanished"

    # I7: no secret in the report, the journal, or anything else the runs left.
    if secrets:
        journal = report.with_name(report.name.removesuffix(".jsonl") + ".journal.sqlite")
        files = [p for p in report.parent.glob(journal.name + "*") if p.is_file()]
        check_no_secrets(secrets, report, *files, *outputs)
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


@asynccontextmanager
async def plain_http_server(route: web.RouteDef) -> AsyncIterator[str]:
    """A tiny plain-http server on 127.0.0.1:0 with one route; yields its origin."""
    app = web.Application()
    app.add_routes([route])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        await web.SockSite(runner, sock).start()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
        sock.close()
