"""The command line: `python -m engine {migrate,lists,simulate,demo}`.

Thin by design: it parses arguments, builds the configuration, runs the library with
`asyncio.run`, prints results and maps errors to exit statuses:

- 0: every row done, or skipped for a documented reason;
- 1: some rows were rejected or failed, or the run stopped part way (quota, lost account);
- 2: a usage, configuration or authentication error; nothing was written.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

from engine.audit import audit
from engine.backend.v1 import Account, Credentials, RateGovernor, RetryPolicy
from engine.errors import (
    AccessDeniedError,
    AuthenticationError,
    ConfigError,
    EngineError,
    SourceError,
    UnsupportedMediaError,
)
from engine.journal import Journal
from engine.pipeline.config import MigrationConfig, StageLimits
from engine.pipeline.dryrun import plan_migration
from engine.pipeline.read import ReadOptions, describe_columns
from engine.pipeline.run import migrate
from engine.progress import ProgressDisplay

__all__ = ["main"]

EXIT_OK, EXIT_ROWS, EXIT_USAGE = 0, 1, 2


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _column(text: str) -> tuple[str, str]:
    header, sep, element = text.partition("=")
    if not sep or not header.strip() or not element.strip():
        raise argparse.ArgumentTypeError(
            f"expected HEADER=FIELD, e.g. 'Mail=EmailAddress', not {text!r}"
        )
    return header.strip(), element.strip()


def _add_account_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "account",
        "credentials come from CTCT_USERNAME, CTCT_API_KEY and CTCT_PASSWORD; the password is "
        "never taken from the command line",
    )
    group.add_argument("--username", help="Constant Contact username (default: $CTCT_USERNAME)")
    group.add_argument("--api-key", help="API key (default: $CTCT_API_KEY)")
    group.add_argument(
        "--base-url",
        help="API base URL (default: https://api.constantcontact.com/ws/customers/USERNAME/)",
    )
    group.add_argument("--ca-file", type=Path, help="CA bundle to trust (e.g. the simulator's)")
    group.add_argument(
        "--allow-http",
        action="store_true",
        help="allow a plain-http base URL on a loopback host (a local simulator without TLS)",
    )
    group.add_argument(
        "--rate-limit",
        type=_positive_float,
        default=4.0,
        help="requests per second (default: 4, the API's documented limit)",
    )
    group.add_argument(
        "--concurrency", type=_positive_int, default=8, help="requests in flight (default: 8)"
    )
    group.add_argument(
        "--daily-budget",
        type=_positive_int,
        default=None,
        help="stop after this many requests today (the API allows 10,000/day per key)",
    )
    group.add_argument(
        "--timeout", type=_positive_float, default=60.0, help="seconds per request (default: 60)"
    )


def _account(args: argparse.Namespace) -> Account:
    credentials = Credentials.from_env(username=args.username, api_key=args.api_key)
    return Account(
        credentials,
        base_url=args.base_url,
        ca_file=args.ca_file,
        allow_http=args.allow_http,
        governor=RateGovernor(
            rate=args.rate_limit, concurrency=args.concurrency, daily_budget=args.daily_budget
        ),
        retry=RetryPolicy(),
        timeout=args.timeout,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="Migrate contacts onto Constant Contact lists (legacy v1 API) without "
        "removing any membership they already have.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("migrate", help="put the contacts of a CSV or JSON file on lists")
    run.add_argument(
        "source", type=Path, help="CSV file, JSON array or JSON Lines file of contacts"
    )
    run.add_argument(
        "--list",
        dest="lists",
        action="append",
        default=[],
        metavar="NAME",
        help="a list every contact must be on (repeatable)",
    )
    run.add_argument("--lists-column", metavar="COL", help="column of per-row list names")
    run.add_argument(
        "--list-separator", default=";", help="separator in the lists column (default: ';')"
    )
    run.add_argument(
        "--column",
        dest="columns",
        action="append",
        type=_column,
        default=[],
        metavar="HEADER=FIELD",
        help="map a source column to a v1 field (EmailAddress, FirstName, …); repeatable",
    )
    run.add_argument("--encoding", default="utf-8", help="source encoding (default: utf-8)")
    run.add_argument(
        "--truncate-long-fields",
        action="store_true",
        help="cut a field over the API's limit to the limit (default: leave it out); either "
        "way the contact goes to its lists and its report line says so",
    )
    run.add_argument(
        "--report",
        type=Path,
        help="JSON Lines report, one line per email (default: SOURCE.report.jsonl)",
    )
    run.add_argument(
        "--journal",
        type=Path,
        help="the resume journal (default: next to the report, REPORT.journal.sqlite)",
    )
    run.add_argument("--no-journal", action="store_true", help="keep no journal (no resume)")
    run.add_argument(
        "--restart", action="store_true", help="delete the journal and start from the beginning"
    )
    run.add_argument(
        "--snapshot",
        action="store_true",
        help="before the first run, record every list's members (one request per 50 members) "
        "so `audit` can prove no membership was lost on the bulk path too",
    )
    run.add_argument(
        "--bulk-threshold",
        type=_positive_int,
        default=25,
        help="batches of at least N contacts use bulk activities (default: 25)",
    )
    run.add_argument(
        "--no-bulk", action="store_true", help="never use bulk activities; contact by contact"
    )
    run.add_argument(
        "--verify-writes",
        choices=("stale", "all", "off"),
        default="stale",
        help="guard against other writers: re-read entries older than --stale-after seconds "
        "before the PUT (stale, the default), re-read every entry before and after its PUT "
        "(all: two more requests per updated contact), or never (off)",
    )
    run.add_argument(
        "--stale-after", type=_positive_float, default=2.0, help="seconds (default: 2)"
    )
    run.add_argument("--create-lists", action="store_true", help="create missing target lists")
    run.add_argument(
        "--skip-removed",
        action="store_true",
        help="leave contacts in Removed status alone instead of re-adding them",
    )
    run.add_argument(
        "--lists-only",
        action="store_true",
        help="change no field of an existing contact, only its lists (new contacts get "
        "their fields; the bulk path then searches its contacts, one request per 50)",
    )
    run.add_argument(
        "--dry-run", action="store_true", help="read and plan, print the plan, write nothing"
    )
    run.add_argument(
        "--lookup", action="store_true", help="with --dry-run: search contacts to count existing"
    )
    run.add_argument("--fetch-limit", type=_positive_int, default=4, help="fetch workers")
    run.add_argument("--put-limit", type=_positive_int, default=8, help="put workers")
    run.add_argument("--bulk-limit", type=_positive_int, default=4, help="activities in flight")
    run.add_argument(
        "--poll-initial", type=_positive_float, default=5.0, help="first activity poll, seconds"
    )
    run.add_argument(
        "--poll-max", type=_positive_float, default=30.0, help="longest poll interval, seconds"
    )
    run.add_argument(
        "--activity-stall-timeout",
        type=_positive_float,
        default=900.0,
        metavar="S",
        help="an activity whose status has not changed for S seconds is stuck: its contacts "
        "go contact by contact (default: 900)",
    )
    run.add_argument(
        "--poll-timeout",
        type=_positive_float,
        default=10800.0,
        metavar="S",
        help="give up an activity that has not finished after S seconds (default: 10800)",
    )
    run.add_argument(
        "--activity-seconds",
        type=_positive_float,
        default=120.0,
        metavar="S",
        help="how long an activity is expected to take on the server, for the dry run's time "
        "and the ETA until the run has timed its own (default: 120)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress display")
    _add_account_arguments(run)

    show = commands.add_parser("lists", help="show the account's lists: id, name, members")
    _add_account_arguments(show)

    fix = commands.add_parser(
        "rows-to-fix",
        help="write the rejected and failed rows of a CSV source, with a reason column, to "
        "fix and migrate again",
    )
    fix.add_argument("--report", type=Path, required=True, help="the migration's report")
    fix.add_argument("--source", type=Path, required=True, help="the CSV source it read")
    fix.add_argument("--to", type=Path, required=True, help="the CSV file to write")
    fix.add_argument("--encoding", default="utf-8", help="the source's encoding")

    copy = commands.add_parser(
        "copy-account",
        help="read the account (lists, contacts, statuses, memberships) into a simulator "
        "state file, to rehearse on",
    )
    copy.add_argument("--to", type=Path, required=True, help="the state file to write")
    _add_account_arguments(copy)

    check = commands.add_parser(
        "audit", help="re-read every contact a migration touched and check no list was lost"
    )
    check.add_argument("--report", type=Path, required=True, help="the migration's report")
    check.add_argument(
        "--journal",
        type=Path,
        help="the migration's journal, for its --snapshot (default: REPORT.journal.sqlite if "
        "it exists)",
    )
    _add_account_arguments(check)

    from engine.simulator.cli import add_arguments as add_simulator_arguments

    sim = commands.add_parser("simulate", help="run the v1 API simulator")
    add_simulator_arguments(sim)

    demo = commands.add_parser("demo", help="a zero-configuration migration on the simulator")
    demo.add_argument(
        "--contacts", type=_positive_int, default=5000, help="existing contacts (default: 5000)"
    )
    demo.add_argument("--keep", type=Path, help="keep the demo's files in this folder")
    for sub in (run, show, fix, copy, check, demo):
        # Also after the command (`migrate … -v`), as the README shows it; SUPPRESS keeps
        # the top-level `-v` when the subcommand has none.
        sub.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help="log each step to stderr",
        )
    return parser


async def _migrate(args: argparse.Namespace) -> int:
    config = MigrationConfig(
        lists=tuple(args.lists),
        read=ReadOptions(
            columns=dict(args.columns),
            lists_column=args.lists_column,
            list_separator=args.list_separator,
            encoding=args.encoding,
            truncate=args.truncate_long_fields,
        ),
        bulk_threshold=None if args.no_bulk else args.bulk_threshold,
        create_lists=args.create_lists,
        skip_removed=args.skip_removed,
        lists_only=args.lists_only,
        limits=StageLimits(fetch=args.fetch_limit, put=args.put_limit, bulk=args.bulk_limit),
        poll_initial=args.poll_initial,
        poll_max=max(args.poll_max, args.poll_initial),
        stall_timeout=args.activity_stall_timeout,
        poll_timeout=args.poll_timeout,
        activity_seconds=args.activity_seconds,
        verify_writes=args.verify_writes,
        stale_after=args.stale_after,
    )
    account = _account(args)
    if args.source.is_file():
        # Which column feeds which field, before anything is read or sent: a wrong guess is
        # cheaper to see here than in the report.
        try:
            columns = describe_columns(args.source, config.read)
        except SourceError:
            columns = ""  # the run itself says what is wrong, with the whole story
        if columns:
            print(columns, file=sys.stdout if args.dry_run else sys.stderr)
    async with account:
        if args.dry_run:
            plan = await plan_migration(
                account,
                args.source,
                config=config,
                lookup=args.lookup,
                daily_budget=args.daily_budget,
                snapshot=args.snapshot,
            )
            print(plan.describe())
            return EXIT_OK
        report_path = args.report or args.source.with_name(args.source.name + ".report.jsonl")
        journal = None if args.no_journal else args.journal or journal_path(report_path)
        stop = anyio.Event()
        with ProgressDisplay(every=5.0) as display, _stop_on_signals(stop):
            report = await migrate(
                account,
                args.source,
                config=config,
                report=report_path,
                journal=journal,
                restart=args.restart,
                snapshot=args.snapshot,
                stop=stop,
                on_progress=None if args.quiet else display,
            )
    print(report.summary())
    for warning in report.warnings:
        print(f"WARNING: {warning}")
    print(f"report: {report.report_path}")
    if report.journal_path is not None:
        print(f"journal: {report.journal_path}")
    return EXIT_OK if report.ok else EXIT_ROWS


def journal_path(report: Path) -> Path:
    """The default journal of a report: beside it."""
    return report.with_name(report.name.removesuffix(".jsonl") + ".journal.sqlite")


@contextmanager
def _stop_on_signals(stop: anyio.Event) -> Iterator[None]:
    """First SIGINT/SIGTERM: stop taking work, finish what is in flight, write the journal.
    A second one: stop at once (the journal still has everything written so far)."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        print(
            "\nstopping: finishing requests in flight and writing the journal "
            "(press Ctrl-C again to stop at once)",
            file=sys.stderr,
        )
        stop.set()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no such API
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _audit(args: argparse.Namespace) -> int:
    journal_file = args.journal or journal_path(args.report)
    snapshot: dict[str, list[str]] | None = None
    if args.journal is not None or journal_file.is_file():
        journal = await Journal.open_for_reading(journal_file)
        try:
            snapshot = await journal.snapshot() or None
        finally:
            await journal.aclose()
    async with _account(args) as account:
        result = await audit(account, args.report, snapshot=snapshot)
    for finding in result.findings:
        parts = []
        if finding.missing_targets:
            parts.append(f"missing targets {', '.join(finding.missing_targets)}")
        if finding.lost_lists:
            parts.append(f"LOST lists {', '.join(finding.lost_lists)}")
        status = f" (status {finding.status})" if finding.status else " (no such contact)"
        print(f"{finding.email}: {'; '.join(parts) or 'not found'}{status}")
    verdict = "no violation" if result.ok else f"{len(result.findings)} violation(s)"
    print(
        f"audit: {result.checked} contacts re-read ({result.with_before} with their lists before "
        f"the run known), {verdict}; {result.requests} requests."
    )
    if snapshot is None:
        print("note: without a --snapshot, contacts of the bulk path are checked for targets only")
    return EXIT_OK if result.ok else EXIT_ROWS


async def _copy_account(args: argparse.Namespace) -> int:
    from engine.copy_account import copy_account

    async with _account(args) as account:
        summary = await copy_account(
            account, args.to, on_progress=lambda line: print(line, file=sys.stderr)
        )
    print(summary.describe())
    return EXIT_OK


async def _lists(args: argparse.Namespace) -> int:
    async with _account(args) as account:
        lists = await account.lists()
    print(f"{'id':<70} {'members':>8} {'SortOrder':>9}  name")
    for item in lists:
        count = "" if item.contact_count is None else str(item.contact_count)
        order = "" if item.sort_order is None else str(item.sort_order)
        kind = "  (system list)" if item.is_system else ""
        print(f"{item.id:<70} {count:>8} {order:>9}  {item.name}{kind}")
    print("Use the id (not the SortOrder) wherever the API wants a list.")
    return EXIT_OK


def _run(coro: Callable[[], Coroutine[Any, Any, int]]) -> int:
    runner: Callable[[Coroutine[Any, Any, int]], int] = asyncio.run
    try:
        import uvloop  # the `fast` extra: more requests per CPU second

        runner = uvloop.run
    except ImportError:
        pass  # run outside the except block: no "No module named 'uvloop'" on errors

    async def settled() -> int:
        try:
            return await coro()
        except (ConfigError, SourceError):
            raise  # stopped by a check, with no request in flight
        except Exception:
            # A run stopped mid-flight leaves the https connections of its cancelled requests
            # closing (TLS close_notify): a moment for them, or closing the loop fails
            # (uvloop: "Device or resource busy") and hides the error that stopped the run.
            await asyncio.sleep(0.25)
            raise

    return runner(settled())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "simulate":
            from engine.simulator.cli import run as run_simulator

            return run_simulator(args)
        if args.command == "demo":
            from engine.demo import run_demo

            return _run(lambda: run_demo(contacts=args.contacts, keep=args.keep))
        if args.command == "lists":
            return _run(lambda: _lists(args))
        if args.command == "copy-account":
            return _run(lambda: _copy_account(args))
        if args.command == "rows-to-fix":
            from engine.fixes import write_rows_to_fix

            count = write_rows_to_fix(
                args.report, args.source, args.to, ReadOptions(encoding=args.encoding)
            )
            print(
                f"{count} rows to fix written to {args.to} (with 'reason', 'spreadsheet row' "
                f"and 'line' columns); fix them and migrate {args.to} with the same options"
            )
            return EXIT_OK
        if args.command == "audit":
            return _run(lambda: _audit(args))
        return _run(lambda: _migrate(args))
    except (ConfigError, SourceError) as exc:
        # Both are raised before the first write: say so, it is what a user worries about
        # (only where there was something to write).
        writes = args.command in ("migrate", "demo")
        print(f"error: {exc}" + ("\nnothing was written." if writes else ""), file=sys.stderr)
        return EXIT_USAGE
    except (AuthenticationError, AccessDeniedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UnsupportedMediaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ROWS
    except EngineError as exc:
        print(f"error: the run stopped: {exc}", file=sys.stderr)
        return EXIT_ROWS
    except KeyboardInterrupt:
        print("stopped by the user.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `python -m engine lists | head`: the reader left; not an error of ours. stdout is
        # pointed at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
