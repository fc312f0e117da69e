"""The bad-input suite, through the command line (in-process; the simulator in a thread):
each bad input gets a clear, specific message, loses nothing (every row is in the report,
or the run stops before any write), and no traceback reaches the user."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.simulator import AccountStore, RunningSimulator, SimulatorConfig
from engine.simulator.v1.store import StoredActivity

from .conftest import (
    API_KEY,
    PASSWORD,
    USERNAME,
    read_report,
    sim_stats_sync,
    simulator_in_thread,
    writes_of,
)

CONFIG = SimulatorConfig(
    host="127.0.0.1",
    port=0,
    username=USERNAME,
    api_key=API_KEY,
    password=PASSWORD,
    activity_delay=0.02,
    seed=17,
)
HEADER = "Email Address,First Name\n"
#: Cells a spreadsheet would run as formulas ("CSV injection").
FORMULAS = ("=cmd()", '=HYPERLINK("http://x","y")', "@SUM(A1)", "+SUM(1,2)", "-2+3+cmd|'/C'!A0")


@dataclass
class Served:
    """The served account and what reached it.

    Attributes:
        sim: the running simulator.
        store: its account: lists Alpha and Beta, ten members of Alpha.
        activities: the `data` of every activity submitted.
    """

    sim: RunningSimulator
    store: AccountStore
    activities: list[str]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """A simulator in its own thread, its credentials in `CTCT_*`, a spy on activities."""
    monkeypatch.setenv("CTCT_USERNAME", USERNAME)
    monkeypatch.setenv("CTCT_API_KEY", API_KEY)
    monkeypatch.setenv("CTCT_PASSWORD", PASSWORD)
    store = AccountStore(CONFIG)
    alpha = store.create_list("Alpha")
    store.create_list("Beta")
    for i in range(10):
        store.add_contact(f"member{i}@example.com", lists=[alpha])
    data: list[str] = []
    submit = store.submit_activity

    def spy(activity_type: str, body: str | None, *args: Any, **kw: Any) -> StoredActivity:
        data.append(body or "")
        return submit(activity_type, body, *args, **kw)

    # An instance attribute shadows the method the app calls: a spy, no simulator edit.
    store.submit_activity = spy  # type: ignore[method-assign]
    with simulator_in_thread(CONFIG, store) as sim:
        yield Served(sim, store, data)


@dataclass(frozen=True)
class Run:
    """One `migrate` through the CLI.

    Attributes:
        status: its exit status.
        out: stdout.
        err: stderr.
        report: the report's lines (None when no report was written).
        writes: writes the simulator answered.
    """

    status: int
    out: str
    err: str
    report: list[dict[str, Any]] | None
    writes: int

    def rows(self) -> list[int]:
        """Every row number of the report, sorted."""
        assert self.report is not None, f"no report: {self.out}{self.err}"
        return sorted(row for line in self.report for row in line["rows"])

    def outcomes(self) -> dict[str, str]:
        """email (or `row N` for a row without one) -> outcome."""
        assert self.report is not None
        return {line["email"] or f"row {line['rows'][0]}": line["outcome"] for line in self.report}

    def reasons(self) -> list[str]:
        """The reasons of the report, in order."""
        assert self.report is not None
        return [line.get("reason", "") for line in self.report]

    def notes(self) -> list[str]:
        """The notes of the report, in order."""
        assert self.report is not None
        return [line.get("note", "") for line in self.report]


def migrate(
    served: Served,
    source: Path,
    capsys: pytest.CaptureFixture[str],
    *extra: str,
    lists: Sequence[str] = ("Beta",),
) -> Run:
    """Run `python -m engine migrate SOURCE --list …` in-process; no traceback allowed."""
    report = source.with_name(source.name + ".report.jsonl")
    args = ["migrate", str(source), "--report", str(report), "--quiet"]
    for name in lists:
        args += ["--list", name]
    args += ["--base-url", served.sim.base_url, "--ca-file", str(served.sim.ca_path)]
    args += ["--rate-limit", "10000", "--poll-initial", "0.02", "--poll-max", "0.1", *extra]
    status = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    stats = sim_stats_sync(served.sim)
    lines = read_report(report) if report.exists() else None
    return Run(status, out, err, lines, writes_of(stats))


def write(path: Path, data: str | bytes) -> Path:
    """Write a source file as these exact bytes (str: UTF-8, no newline translation)."""
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def csv_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """CSV with the standard quoting (fields with commas, quotes or breaks are quoted)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue()


def lists_of(store: AccountStore, email: str) -> set[str]:
    """The list names of a contact."""
    contact = store.contact_by_email(email)
    assert contact is not None, f"{email} is not in the account"
    return {store.get_list(i).name for i in contact.lists}


# --- inputs that stop the run before any write ------------------------------------------

STOPS = [
    pytest.param("empty.csv", b"", ("Beta",), ("is empty",), id="empty-file"),
    pytest.param(
        "header.csv", HEADER, ("Beta",), ("has a header but no data rows",), id="header-only"
    ),
    pytest.param(
        "blank.csv",
        HEADER + "\n\n  \n",
        ("Beta",),
        ("has a header but no data rows",),
        id="header-and-blank-lines",
    ),
    pytest.param(
        "names.csv",
        "Name,Phone\nAnn,555\n",
        ("Beta",),
        ("no email column: the header has 'Name', 'Phone'", "--column 'HEADER=EmailAddress'"),
        id="no-email-column",
    ),
    pytest.param(
        "ok.csv",
        HEADER + "ann@example.com,Ann\n",
        ("Beta", "Newsletter"),
        ("unknown list name(s) 'Newsletter'", "the account has: 'Alpha', 'Beta'", "--create-lists"),
        id="unknown-list",
    ),
    pytest.param(
        "column.csv",
        "Email Address,Lists\nann@example.com,Alpha\nbob@example.com,Nope;Beta\n",
        (),
        ("unknown list name(s) 'Nope'",),
        id="unknown-list-in-the-lists-column",
    ),
]


@pytest.mark.parametrize(("name", "data", "lists", "messages"), STOPS)
def test_bad_input_stops_before_any_write(
    name: str,
    data: str | bytes,
    lists: tuple[str, ...],
    messages: tuple[str, ...],
    served: Served,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The input cannot be migrated at all: exit 2, a specific message, nothing written."""
    source = write(tmp_path / name, data)
    extra = ("--lists-column", "Lists") if not lists else ()
    run = migrate(served, source, capsys, *extra, lists=lists)
    assert run.status == 2, run.out + run.err
    for message in messages:
        assert message in run.err
    assert "nothing was written" in run.err
    assert run.writes == 0
    assert [c.email for c in served.store.contacts()] == [
        f"member{i}@example.com" for i in range(10)
    ]


# --- inputs whose rows are each accounted for --------------------------------------------


def test_a_field_over_the_csv_modules_limit_rejects_only_its_row(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 200,000-character cell (over csv's 128 KiB default) does not stop the run: the field
    is left out with a note, its contact and the rest are migrated."""
    source = write(
        tmp_path / "huge.csv", HEADER + "big@example.com," + "x" * 200_000 + "\nok@example.com,Ok\n"
    )
    run = migrate(served, source, capsys)
    assert run.status == 0, run.out + run.err
    assert "Traceback" not in run.err
    assert run.outcomes() == {"big@example.com": "created", "ok@example.com": "created"}
    assert run.notes()[0].startswith("FirstName left out: 200000 characters, the API's limit is 50")


def test_bom_and_crlf(served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A UTF-8 BOM and CRLF line ends: the header is recognised and every row is done."""
    rows = "".join(f"bom{i}@example.com,Name{i}\r\n" for i in range(5))
    source = write(tmp_path / "bom.csv", "\ufeff" + HEADER.replace("\n", "\r\n") + rows)
    run = migrate(served, source, capsys)
    assert run.status == 0, run.out + run.err
    assert run.rows() == [2, 3, 4, 5, 6]
    assert set(run.outcomes().values()) == {"created"}
    assert served.store.contact_by_email("bom0@example.com").fields["FirstName"] == "Name0"  # type: ignore[union-attr]


def test_latin1_bytes(served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Latin-1 bytes: the row is rejected naming line, bytes and --encoding; latin-1 reads all."""
    data = (HEADER + "jose@example.com,José\nann@example.com,Ann\n").encode("latin-1")
    source = write(tmp_path / "latin.csv", data)
    run = migrate(served, source, capsys)
    assert run.status == 1
    assert run.rows() == [2, 3]
    assert run.outcomes() == {"row 2": "rejected", "ann@example.com": "created"}
    assert run.reasons()[0] == (
        "line 2 has bytes b'\\xe9' that are not utf-8; re-save the file as UTF-8 or pass "
        "--encoding (e.g. latin-1)"
    )
    assert "1 rejected" in run.out

    again = migrate(served, source, capsys, "--encoding", "latin-1", "--no-journal")
    assert again.status == 0, again.out + again.err
    assert again.outcomes() == {"jose@example.com": "created", "ann@example.com": "unchanged"}
    assert served.store.contact_by_email("jose@example.com").fields["FirstName"] == "José"  # type: ignore[union-attr]


@pytest.mark.parametrize("count", [pytest.param(5, id="per-contact"), pytest.param(30, id="bulk")])
def test_quotes_commas_and_embedded_newlines(
    count: int, served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Quotes and commas inside fields arrive intact, a line break as a space on both paths;
    a quoted break is one row."""
    names = ['Smith, "Jr."', 'O"Brien', "a,b,,c", "Ann\nMarie", ' "quoted" ']
    rows = [[f"q{i}@example.com", names[i % 5], f"Last{i}"] for i in range(count)]
    source = write(
        tmp_path / "quotes.csv", csv_text(["Email Address", "First Name", "Last Name"], rows)
    )
    run = migrate(served, source, capsys)
    assert run.status == 0, run.out + run.err
    first_lines, line = [], 2
    for row in rows:
        first_lines.append(line)
        line += 1 + row[1].count("\n")
    assert run.rows() == first_lines
    assert len(run.report or []) == count
    for i in range(count):
        stored = served.store.contact_by_email(f"q{i}@example.com")
        assert stored is not None
        assert stored.fields["LastName"] == f"Last{i}"
        # The bulk data is line-based, so a break becomes a space, on both paths alike: the
        # same row gives the same contact whichever path it takes.
        assert stored.fields["FirstName"] == names[i % 5].strip().replace("\n", " ")


def test_over_long_fields_and_addresses(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fields over the API's limits are left out naming field and limit, their contacts
    migrated; an email over its limit rejects its row."""
    rows = [
        ["long@example.com", "x" * 51, "Ok"],
        ["a" * 75 + "@example.com", "Ok", "Ok"],
        ["note@example.com", "Ok", "y" * 501],
        ["fine@example.com", "x" * 50, "y" * 500],
    ]
    source = write(tmp_path / "long.csv", csv_text(["Email Address", "First Name", "Notes"], rows))
    run = migrate(served, source, capsys)
    assert run.status == 1
    assert run.rows() == [2, 3, 4, 5]
    assert run.report is not None
    line = {tuple(item["rows"]): item for item in run.report}
    assert line[(3,)]["reason"] == "email address longer than 80 characters"
    assert line[(2,)]["note"].startswith("FirstName left out: 51 characters, the API's limit")
    assert line[(4,)]["note"].startswith("Note left out: 501 characters, the API's limit is 500")
    outcomes = run.outcomes()
    assert [outcomes[e] for e in ("long@example.com", "note@example.com")] == ["created"] * 2
    assert outcomes["fine@example.com"] == "created"
    assert run.writes == 3
    long = served.store.contact_by_email("long@example.com")
    assert long is not None
    assert "FirstName" not in long.fields


def test_100000_duplicates_of_one_email(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """100,000 rows of one email: one contact, one write, one report line naming every row."""
    rows = "".join(f"{'Same' if i % 2 else 'same'}@Example.com,N{i}\n" for i in range(100_000))
    source = write(tmp_path / "dups.csv", HEADER + rows)
    run = migrate(served, source, capsys)
    assert run.status == 0, run.out + run.err
    assert run.report is not None
    assert len(run.report) == 1
    assert run.rows() == list(range(2, 100_002))
    assert "100000 rows (99999 merged as duplicates) -> 100000 created" in run.out
    assert run.writes == 1
    assert lists_of(served.store, "same@example.com") == {"Beta"}


def test_invalid_and_internationalised_addresses(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Invalid addresses are rejected with a reason; an IDN domain is sent as punycode."""
    emails = [
        "not-an-email",
        "two@@example.com",
        "",
        "spaces in@example.com",
        "user@bücher.de",
        "jörg@example.com",
        "Mixed.Case@Example.COM",
        "trailing.dot.@example.com",
    ]
    source = write(
        tmp_path / "emails.csv",
        csv_text(["Email Address", "First Name"], [[e, "N"] for e in emails]),
    )
    run = migrate(served, source, capsys)
    assert run.status == 1
    assert run.rows() == list(range(2, 10))
    reasons = {line["rows"][0]: line.get("reason", "") for line in run.report or []}
    assert reasons[2] == "invalid email address 'not-an-email'"
    assert reasons[3] == "invalid email address 'two@@example.com'"
    assert reasons[4] == "no email address"
    assert reasons[5] == "invalid email address 'spaces in@example.com'"
    assert reasons[7] == (
        "invalid email address 'jörg@example.com': the API accepts ASCII local parts only"
    )
    assert reasons[9] == "invalid email address 'trailing.dot.@example.com'"
    assert run.outcomes()["user@xn--bcher-kva.de"] == "created"
    assert run.outcomes()["mixed.case@example.com"] == "created"
    assert lists_of(served.store, "user@xn--bcher-kva.de") == {"Beta"}
    assert run.writes == 2


@pytest.mark.parametrize("count", [pytest.param(5, id="per-contact"), pytest.param(40, id="bulk")])
def test_formula_cells_are_never_written_unescaped(
    count: int, served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Formula-like cells never reach the activity data (CSV) unescaped; phones stay as they are."""
    rows = [
        [f"f{i}@example.com", FORMULAS[i % len(FORMULAS)], "=1+2", f"+1 555 01{i:02d}"]
        for i in range(count)
    ]
    header = ["Email Address", "First Name", "Last Name", "Home Phone"]
    source = write(tmp_path / "formulas.csv", csv_text(header, rows))
    run = migrate(served, source, capsys)
    assert run.status == 0, run.out + run.err
    assert run.rows() == list(range(2, count + 2))
    assert (tmp_path / "formulas.csv.report.jsonl").read_text().startswith("{")
    if count >= 25:
        assert served.activities, "the bulk path was not taken"
    for data in served.activities:
        table = list(csv.reader(io.StringIO(data)))
        for record in table[1:]:
            _email, *cells = record
            for cell in cells:
                assert cell[:1] not in ("=", "@"), f"unescaped formula {cell!r} in {record}"
                if cell[:1] in ("+", "-"):
                    assert cell[1:].replace(" ", "").isdigit(), f"unescaped formula {cell!r}"
        phones = {record[table[0].index("Home Phone")] for record in table[1:]}
        assert phones == {f"+1 555 01{i:02d}" for i in range(count)}
