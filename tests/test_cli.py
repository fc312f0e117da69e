"""The `migrate` and `lists` commands, in-process, against a simulator in its own thread."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.simulator import AccountStore, RunningSimulator, SimulatorConfig
from engine.simulator.testing import read_stats, serve_in_thread

API_KEY = "k3y-4a61d1c"
PASSWORD = "pw-S3cret-0f9e"  # must never be printed
CONFIG = SimulatorConfig(
    host="127.0.0.1", port=0, activity_delay=0.05, seed=7, api_key=API_KEY, password=PASSWORD
)


@contextmanager
def simulator_in_thread(store: AccountStore) -> Iterator[RunningSimulator]:
    """Serve `store` from a thread with its own loop (`main` runs `asyncio.run` itself)."""
    with serve_in_thread(CONFIG, store) as sim:
        yield sim


def stats(sim: RunningSimulator) -> dict[str, Any]:
    """The simulator's request counters."""
    return read_stats(sim)


def writes(sim: RunningSimulator) -> dict[str, int]:
    """The write requests (PUT, POST, DELETE) the simulator answered, by route."""
    routes: dict[str, int] = stats(sim)["by_route"]
    return {r: n for r, n in routes.items() if r.split()[0] in ("PUT", "POST", "DELETE")}


@pytest.fixture
def store() -> AccountStore:
    """An account with Customers (40 members), Newsletter (empty) and a Do Not Mail contact."""
    account = AccountStore(CONFIG)
    customers = account.create_list("Customers")
    account.create_list("Newsletter")
    for i in range(40):
        account.add_contact(f"member{i}@example.com", lists=[customers])
    account.add_contact("optedout@example.com", status="Do Not Mail")
    return account


@pytest.fixture
def sim(store: AccountStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningSimulator]:
    """The simulator, with the credentials in the environment as a user would set them."""
    monkeypatch.setenv("CTCT_USERNAME", CONFIG.username)
    monkeypatch.setenv("CTCT_API_KEY", API_KEY)
    monkeypatch.setenv("CTCT_PASSWORD", PASSWORD)
    with simulator_in_thread(store) as running:
        yield running


def source(tmp_path: Path, emails: list[str], lists: dict[str, str] | None = None) -> Path:
    """A CSV of the emails, with a Lists column (names for some emails, else empty)."""
    path = tmp_path / "contacts.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["Email Address", "First Name", "Lists"])
        writer.writerows(
            [email, f"N{i}", (lists or {}).get(email, "")] for i, email in enumerate(emails)
        )
    return path


def account_args(sim: RunningSimulator) -> list[str]:
    """The account options for the simulator: its URL, its CA, no real rate limit."""
    return [
        "--base-url",
        sim.base_url,
        "--ca-file",
        str(sim.ca_path),
        "--rate-limit",
        "10000",
        "--concurrency",
        "16",
    ]


def migrate_args(sim: RunningSimulator, path: Path, *extra: str) -> list[str]:
    """`migrate PATH` with fast polls and the account options."""
    return [
        "migrate",
        str(path),
        "--poll-initial",
        "0.02",
        "--poll-max",
        "0.1",
        *extra,
        *account_args(sim),
    ]


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    """Run `main(argv)`; return the exit status, stdout and stderr (never showing secrets)."""
    status = main(argv)
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err
    assert API_KEY not in out + err
    return status, out, err


def test_clean_migration_exits_0_and_writes_the_report(
    sim: RunningSimulator,
    store: AccountStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A clean run exits 0 and writes one JSON line per email with rows and lists_added."""
    emails = [f"member{i}@example.com" for i in range(30)] + ["new@example.org"]
    path = source(tmp_path, [*emails, "NEW@example.org"])
    report = tmp_path / "report.jsonl"

    status, out, err = run_cli(
        capsys, ["-v", *migrate_args(sim, path, "--list", "Newsletter", "--report", str(report))]
    )

    assert status == 0, err
    assert "32 rows (1 merged as duplicates)" in out
    assert f"report: {report}" in out
    assert "progress:" in err
    lines = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 31
    for line in lines:
        assert {"email", "outcome", "rows", "lists_added"} <= line.keys()
        assert line["lists_added"] == ["Newsletter"]
    assert {line["email"]: line["rows"] for line in lines}["new@example.org"] == [32, 33]
    assert sorted(r for line in lines for r in line["rows"]) == list(range(2, 34))
    newsletter = store.list_by_name("Newsletter")
    customers = store.list_by_name("Customers")
    assert newsletter is not None
    assert customers is not None
    assert store.member_count(newsletter.id) == 31
    assert store.member_count(customers.id) == 40
    assert PASSWORD not in caplog.text


def test_rejected_rows_exit_1(
    sim: RunningSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run in which some rows were rejected exits 1, and the valid rows are migrated."""
    path = source(tmp_path, ["member1@example.com", "not-an-email", "x@@example.com"])

    status, out, _ = run_cli(capsys, migrate_args(sim, path, "--list", "Newsletter", "--quiet"))

    assert status == 1
    assert "2 rejected" in out
    assert "1 updated" in out


def test_default_report_sits_beside_the_source(
    sim: RunningSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default report is SOURCE.report.jsonl; opted-out rows are skipped, exit 0."""
    path = source(tmp_path, ["optedout@example.com", "member2@example.com"])

    status, _out, _ = run_cli(
        capsys, migrate_args(sim, path, "--list", "Newsletter", "--quiet", "--no-bulk")
    )

    assert status == 0
    lines = [json.loads(line) for line in Path(f"{path}.report.jsonl").read_text().splitlines()]
    assert {line["email"]: (line["outcome"], line.get("reason")) for line in lines} == {
        "optedout@example.com": ("skipped", "opted-out"),
        "member2@example.com": ("updated", None),
    }


def test_unknown_list_exits_2_and_writes_nothing(
    sim: RunningSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown list exits 2, names the account's lists, and writes nothing."""
    path = source(tmp_path, ["member1@example.com"])

    status, _, err = run_cli(capsys, migrate_args(sim, path, "--list", "Newsleter", "--quiet"))

    assert status == 2
    assert "'Newsleter'" in err
    assert "'Customers'" in err
    assert "'Newsletter'" in err
    assert "nothing was written" in err
    assert writes(sim) == {}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("CTCT_PASSWORD", "Wr0ng-pw-77", id="wrong-password"),
        pytest.param("CTCT_API_KEY", "wrong-key-77", id="wrong-key"),
    ],
)
def test_bad_credentials_exit_2_and_explain_the_login(
    variable: str,
    value: str,
    sim: RunningSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bad credentials exit 2, explain APIKEY%username, print no secret, write nothing."""
    monkeypatch.setenv(variable, value)
    path = source(tmp_path, ["member1@example.com"])

    status, out, err = run_cli(capsys, migrate_args(sim, path, "--list", "Newsletter"))

    assert status == 2
    assert "APIKEY%username" in err
    assert value not in out + err
    assert writes(sim) == {}


def test_missing_credentials_exit_2_naming_the_variable(
    sim: RunningSimulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without CTCT_PASSWORD the command exits 2 and says which variable to set."""
    monkeypatch.delenv("CTCT_PASSWORD")
    path = source(tmp_path, ["member1@example.com"])

    status, _, err = run_cli(capsys, migrate_args(sim, path, "--list", "Newsletter"))

    assert status == 2
    assert "CTCT_PASSWORD" in err


def test_dry_run_prints_the_plan_and_writes_nothing(
    sim: RunningSimulator,
    store: AccountStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--dry-run` prints the columns it reads, contacts per path, requests and time at the
    rate; no writes."""
    emails = [f"member{i}@example.com" for i in range(30)]
    path = source(tmp_path, [*emails, "solo@example.org"], {"solo@example.org": "Customers"})
    before = {c.email: (c.status, set(c.lists)) for c in store.contacts()}

    status, out, _ = run_cli(
        capsys,
        [
            "migrate",
            str(path),
            "--list",
            "Newsletter",
            "--lists-column",
            "Lists",
            "--dry-run",
            "--lookup",
            *account_args(sim)[:-4],
            "--rate-limit",
            "4",
        ],
    )

    assert status == 0
    assert "rows read:              31" in out
    # The members are on another list: the probe's witnesses go first, in their own activity.
    assert "bulk path:              30 contacts in 2 activities (looked up)" in out
    assert "per-contact path:       1 contacts; 0 exist, 1 are new" in out
    assert "requests to send:" in out
    assert "time at 4 requests/s, each activity taking 120 s on the server:" in out
    assert "nothing was written." in out
    assert out.startswith("columns: ")  # which column feeds which field, first of all
    assert "-> EmailAddress" in out
    assert "'Lists' -> lists" in out
    assert writes(sim) == {}
    assert {c.email: (c.status, set(c.lists)) for c in store.contacts()} == before
    assert not Path(f"{path}.report.jsonl").exists()


def test_lists_prints_id_name_members_and_sort_order(
    sim: RunningSimulator, store: AccountStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lists` prints each list's id, member count, SortOrder and name."""
    status, out, _ = run_cli(capsys, ["lists", *account_args(sim)])

    assert status == 0
    rows = {line.split()[-1]: line.split() for line in out.splitlines() if "/lists/" in line}
    for item in store.lists():
        fields = rows[item.name]
        assert fields[0].endswith(f"/ws/customers/{CONFIG.username}/lists/{item.id}")
        assert fields[1] == str(store.member_count(item.id))
        assert fields[2] == str(item.sort_order)
    assert "(system list)" in out
    assert "SortOrder" in out.splitlines()[0]
    assert "not the SortOrder" in out
    assert writes(sim) == {}


def test_verbose_is_accepted_after_the_command_too() -> None:
    """`migrate FILE -v` (as the README writes it) and `-v migrate FILE` both log steps."""
    from engine.cli import _parser

    assert _parser().parse_args(["migrate", "in.csv", "-v"]).verbose is True
    assert _parser().parse_args(["-v", "migrate", "in.csv"]).verbose is True
    assert _parser().parse_args(["migrate", "in.csv"]).verbose is False


def test_an_error_without_uvloop_does_not_mention_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without uvloop installed, an error's traceback is not chained to the ImportError."""
    from engine.cli import _run

    monkeypatch.setitem(sys.modules, "uvloop", None)

    async def fail() -> int:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError) as caught:
        _run(fail)
    assert caught.value.__context__ is None


def test_output_piped_into_head_ends_quietly() -> None:
    """`python -m engine lists | head -1`: the closed pipe ends the command, no traceback."""
    script = (
        "import sys, engine.cli as cli\n"
        "async def many(args):\n"
        "    for i in range(200_000):\n"
        "        print(f'line {i}')\n"
        "    return 0\n"
        "cli._lists = many\n"
        "sys.exit(cli.main(['lists']))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CTCT_USERNAME": "u", "CTCT_API_KEY": "k", "CTCT_PASSWORD": "p"},
    )
    assert process.stdout is not None
    assert process.stderr is not None
    assert process.stdout.readline() == b"line 0\n"
    process.stdout.close()  # what `head -1` does after its line
    err = process.stderr.read().decode()
    process.stderr.close()
    assert process.wait(timeout=60) == 0, err
    assert "Traceback" not in err
    assert "BrokenPipeError" not in err


def test_copy_account_writes_a_state_to_rehearse_on(
    sim: RunningSimulator,
    store: AccountStore,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`copy-account --to FILE` copies lists, contacts, statuses and memberships into a
    simulator state (one request per 50 contacts and per 50 list members), writing nothing;
    a simulator on the copy then serves the same account."""
    store.add_contact("gone@example.com", status="Removed")
    two = store.create_list("Two")
    store.add_contact("both@example.com", lists=[two, store.list_by_name("Customers").id])  # type: ignore[union-attr]
    copy = tmp_path / "copy.json"
    status, out, err = run_cli(capsys, ["copy-account", "--to", str(copy), *account_args(sim)])
    assert status == 0, err
    assert "copied 3 lists, 43 contacts and 42 memberships" in out
    assert "list 'Customers': 41 members" in err
    assert writes(sim) == {}

    def view(account: AccountStore) -> dict[str, tuple[str, frozenset[str]]]:
        names = {item.id: item.name for item in account.lists()}
        return {
            c.email: (c.status, frozenset(names[i] for i in c.lists)) for c in account.contacts()
        }

    assert view(AccountStore.load(copy)) == view(store)
    # The lists, one page of members for each of the three lists, one page of 43 contacts.
    assert read_stats(sim)["total"] == 1 + 3 + 1


def test_rows_to_fix_writes_the_rejected_rows_with_their_columns_and_reasons(
    sim: RunningSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`rows-to-fix` writes each rejected row with its original columns, the reason, the
    spreadsheet's row number (a multi-line cell shifts lines) and the line; once fixed, the
    file migrates with the same options."""
    path = tmp_path / "contacts.csv"
    path.write_text(
        "Email Address,First Name,Lists\n"
        'ann@example.com,"Ann\nMarie",\n'
        "not-an-email,Bob,\n"
        "carl@example.com,Carl,\n",
        encoding="utf-8",
    )
    status, _, err = run_cli(capsys, migrate_args(sim, path, "--list", "Newsletter"))
    assert status == 1, err
    report = Path(f"{path}.report.jsonl")
    fix = tmp_path / "fix.csv"
    status, out, err = run_cli(
        capsys, ["rows-to-fix", "--report", str(report), "--source", str(path), "--to", str(fix)]
    )
    assert status == 0, err
    assert "1 rows to fix" in out
    with fix.open(encoding="utf-8", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["Email Address", "First Name", "Lists", "reason", "spreadsheet row", "line"]
    assert rows[1] == ["not-an-email", "Bob", "", "invalid email address 'not-an-email'", "3", "4"]

    fix.write_text(fix.read_text(encoding="utf-8").replace("not-an-email", "bob@example.com"))
    status, out, err = run_cli(capsys, migrate_args(sim, fix, "--list", "Newsletter"))
    assert status == 0, out + err
    assert "1 created" in out


def test_the_rate_limit_is_a_ceiling_unless_discover_rate() -> None:
    """`--rate-limit` is never exceeded by default; with `--discover-rate` it is where the
    search for the account's limit starts."""
    from engine.cli import _governor, _parser

    capped = _governor(_parser().parse_args(["migrate", "in.csv", "--rate-limit", "6"]))
    assert (capped._probe.rate, capped._probe.ceiling) == (6.0, 6.0)
    found = _governor(_parser().parse_args(["migrate", "in.csv", "--discover-rate"]))
    assert (found._probe.rate, found._probe.ceiling) == (4.0, None)


def test_the_program_collects_garbage_less_often_and_the_library_never_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`python -m engine` tunes the process (`tune_process`: the collector's thresholds
    raised and what is alive frozen, the allocator's threshold fixed) before it runs a
    command; `main` (what a program embedding the CLI calls) changes none of it."""
    import gc

    import engine.cli
    from engine.process import GC_THRESHOLDS, tune_gc

    calls: list[str] = []
    monkeypatch.setattr(engine.cli, "tune_process", lambda: calls.append("tuned"))
    monkeypatch.setattr(engine.cli, "main", lambda: calls.append("main") or 0)
    assert engine.cli.run_program() == 0
    assert calls == ["tuned", "main"]
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
