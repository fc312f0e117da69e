"""The command line: `python -m engine {migrate,lists,audit,login,logout,simulate,demo,…}`.

Thin by design: it parses arguments, builds the configuration and the backend (`--backend
v1`, the legacy XML API, or `v3`, the V3 REST API after `login`), runs the library with
`asyncio.run`, prints results and maps errors to exit statuses:

- 0: every row done, or skipped for a documented reason;
- 1: some rows were rejected or failed, or the run stopped part way (quota, lost account);
- 2: a usage, configuration or authentication error; nothing was written.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import platformdirs

from engine.audit import audit
from engine.backend import Backend, ListInfo
from engine.backend.v1 import Account, Credentials, RateGovernor, RetryPolicy, V1Backend
from engine.backend.v3 import (
    DEFAULT_AUTH_URL,
    DEFAULT_BASE_URL,
    DeviceCode,
    FileTokenStore,
    OAuthEndpoints,
    V3Auth,
    V3Backend,
    V3Client,
    default_token_path,
    device_login,
)
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
from engine.process import tune_process
from engine.progress import ProgressDisplay

__all__ = ["main"]

EXIT_OK, EXIT_ROWS, EXIT_USAGE = 0, 1, 2


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
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


#: The backends `--backend` (or `CTCT_BACKEND`) chooses from.
BACKENDS = ("v1", "v3")
#: Options of one backend only, by backend: given to the other one, they are a mistake.
_BACKEND_OPTIONS = {
    "v1": (("username", "--username"), ("api_key", "--api-key")),
    "v3": (
        ("client_id", "--client-id"),
        ("token_file", "--token-file"),
        ("auth_url", "--auth-url"),
    ),
}
#: The folder of the V3 token files: the user's config folder (`~/.config/ctct-migrate` on
#: Linux, `$XDG_CONFIG_HOME` honoured).
CONFIG_APP = "ctct-migrate"


def _add_account_arguments(parser: argparse.ArgumentParser, *, v3: bool = True) -> None:
    """The account and connection options; `v3=False` for a command that speaks v1 only."""
    if v3:
        parser.add_argument_group(
            "backend",
            "which API the account is reached through; each has its own options below",
        ).add_argument(
            "--api",
            "--backend",
            dest="backend",
            choices=BACKENDS,
            default=None,
            help="v3 (the V3 REST API every account uses today; log in first with `python -m "
            "engine login`) or v1 (the legacy XML API); default: $CTCT_BACKEND, else the one "
            "whose credentials are present (a V3 login or CTCT_V3_* tokens; CTCT_USERNAME "
            "and CTCT_API_KEY for v1)",
        )
    v1 = parser.add_argument_group(
        "v1 account" if v3 else "account",
        "credentials come from CTCT_USERNAME, CTCT_API_KEY and CTCT_PASSWORD; the password is "
        "never taken from the command line",
    )
    v1.add_argument("--username", help="Constant Contact username (default: $CTCT_USERNAME)")
    v1.add_argument("--api-key", help="API key (default: $CTCT_API_KEY)")
    if v3:
        group = parser.add_argument_group(
            "v3 account",
            "log in once with `python -m engine login --client-id ID`, which saves the tokens "
            "in the token file; a headless run may instead take CTCT_V3_REFRESH_TOKEN (or "
            "CTCT_V3_ACCESS_TOKEN) from the environment, never from the command line",
        )
        _add_v3_arguments(group)
    connection = parser.add_argument_group("connection") if v3 else v1
    connection.add_argument(
        "--base-url",
        help="API base URL (default: https://api.constantcontact.com/ws/customers/USERNAME/"
        + (f"; with --backend v3: {DEFAULT_BASE_URL}" if v3 else "")
        + ")",
    )
    _add_tls_arguments(connection)
    connection.add_argument(
        "--rate-limit",
        type=_positive_float,
        default=4.0,
        help="requests per second (default: 4, the API's documented limit); never exceeded "
        "unless --discover-rate",
    )
    connection.add_argument(
        "--discover-rate",
        action="store_true",
        help="start at --rate-limit and look above it for the account's real limit (for an "
        "account whose limit was raised): a faster rate is tried only after a busy stretch "
        "at the current one passed with no throttle, at most twice what the server accepted",
    )
    connection.add_argument(
        "--concurrency", type=_positive_int, default=8, help="requests in flight (default: 8)"
    )
    connection.add_argument(
        "--daily-budget",
        type=_positive_int,
        default=None,
        help="stop after this many requests today (the API allows 10,000/day per key"
        + (", per application on V3" if v3 else "")
        + ")",
    )
    connection.add_argument(
        "--timeout", type=_positive_float, default=60.0, help="seconds per request (default: 60)"
    )


def _add_v3_arguments(group: argparse._ActionsContainer) -> None:
    """`--client-id`, `--token-file` and `--auth-url`: who logs in, where the tokens are."""
    group.add_argument(
        "--client-id",
        help="the V3 application's client id (its API key in the developer portal; default: "
        "$CTCT_V3_CLIENT_ID)",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        help="the token file (default: v3-CLIENT_ID.json in "
        f"{platformdirs.user_config_dir(CONFIG_APP)})",
    )
    group.add_argument(
        "--auth-url",
        help=f"the OAuth2 authorization server (default: {DEFAULT_AUTH_URL})",
    )


def _add_tls_arguments(group: argparse._ActionsContainer) -> None:
    group.add_argument("--ca-file", type=Path, help="CA bundle to trust (e.g. the simulator's)")
    group.add_argument(
        "--allow-http",
        action="store_true",
        help="allow plain http to a loopback host (a local simulator without TLS); never "
        "to another host",
    )


def _account(args: argparse.Namespace) -> Account:
    credentials = Credentials.from_env(username=args.username, api_key=args.api_key)
    return Account(
        credentials,
        base_url=args.base_url,
        ca_file=args.ca_file,
        allow_http=args.allow_http,
        governor=_governor(args),
        retry=RetryPolicy(),
        timeout=args.timeout,
    )


def _governor(args: argparse.Namespace) -> RateGovernor:
    return RateGovernor(
        rate=args.rate_limit,
        discover=args.discover_rate,
        concurrency=args.concurrency,
        daily_budget=args.daily_budget,
    )


def _backend_name(args: argparse.Namespace) -> str:
    """`--api`, else `$CTCT_BACKEND`, else the API whose options or credentials are present
    (`_detected_backend`); options of the other API refused.

    Raises:
        ConfigError: an unknown `$CTCT_BACKEND`, an option of the other API, or credentials
            of both APIs (or of none) with no choice made.
    """
    name: str | None = args.backend
    if name is None:
        name = os.environ.get("CTCT_BACKEND", "").strip().lower() or None
        if name is not None and name not in BACKENDS:
            raise ConfigError(f"CTCT_BACKEND is {name!r}; set it to v1 or v3 (or pass --api v1|v3)")
    if name is None:
        return _detected_backend(args)
    for other, options in _BACKEND_OPTIONS.items():
        if other == name:
            continue
        for attr, option in options:
            if getattr(args, attr, None) is not None:
                raise ConfigError(
                    f"{option} is an option of --api {other}, and the API is {name} "
                    "(from --api or CTCT_BACKEND)"
                )
    return name


#: The environment variables that mean "this account is reached through v1".
_V1_ENV = ("CTCT_USERNAME", "CTCT_API_KEY", "CTCT_PASSWORD")
#: The environment variables that mean "this account is reached through V3".
_V3_ENV = ("CTCT_V3_REFRESH_TOKEN", "CTCT_V3_ACCESS_TOKEN")


def _detected_backend(args: argparse.Namespace) -> str:
    """The API no option names, from what is present: an option of one API only (v1's
    `--username`; V3's `--client-id`…), else credentials (v1's `CTCT_USERNAME`,
    `CTCT_API_KEY`, `CTCT_PASSWORD`; V3's tokens in the environment, or a login's token
    file). A user who has run `login` needs no flag.

    Raises:
        ConfigError: both APIs' credentials are present, or neither's.
    """
    named = {
        name
        for name, options in _BACKEND_OPTIONS.items()
        if any(getattr(args, attr, None) is not None for attr, _ in options)
    }
    if len(named) == 1:
        return named.pop()
    if named:
        raise ConfigError(
            "options of both APIs are given (--username/--api-key are v1's; --client-id, "
            "--token-file and --auth-url are V3's): pass the ones of one API"
        )
    v1 = [name for name in _V1_ENV if os.environ.get(name, "").strip()]
    v3 = [name for name in _V3_ENV if os.environ.get(name, "").strip()]
    logins = _logins()
    if v1 and (v3 or logins):
        found = ", ".join(v3) or f"a V3 login ({logins[0]})"
        raise ConfigError(
            f"credentials of both APIs are present ({', '.join(v1)} for v1; {found} for V3): "
            "pass --api v3 or --api v1"
        )
    if v1:
        return "v1"
    if v3 or logins:
        return "v3"
    raise ConfigError(
        "no account: log in to the V3 API (the one every account uses today) with "
        "`python -m engine login --client-id ID`, or, for the legacy v1 API, set "
        "CTCT_USERNAME, CTCT_API_KEY and CTCT_PASSWORD"
    )


def _logins() -> list[Path]:
    """The token files `login` saved in the user's config folder."""
    folder = Path(platformdirs.user_config_dir(CONFIG_APP))
    try:
        return sorted(folder.glob("v3-*.json"))
    except OSError:
        return []


def _open_backend(args: argparse.Namespace) -> AbstractAsyncContextManager[Backend]:
    """The backend the options name, built (every configuration check, before any request)
    but not opened: `async with _open_backend(args) as backend`.

    Raises:
        ConfigError: missing credentials or tokens, a base URL that would put them at risk,
            a missing CA file…: saying what to do.
    """
    if _backend_name(args) == "v1":
        return _opened_v1(_account(args))
    return _opened_v3(_v3_client(args))


@asynccontextmanager
async def _opened_v1(account: Account) -> AsyncIterator[Backend]:
    async with account:
        yield V1Backend(account)


@asynccontextmanager
async def _opened_v3(client: V3Client) -> AsyncIterator[Backend]:
    async with client:
        yield V3Backend(client)


def _client_id(args: argparse.Namespace) -> str:
    """`--client-id`, else `$CTCT_V3_CLIENT_ID`.

    Raises:
        ConfigError: neither is set.
    """
    client_id = (args.client_id or os.environ.get("CTCT_V3_CLIENT_ID") or "").strip()
    if client_id:
        return client_id
    logins = _logins() if getattr(args, "token_file", None) is None else []
    if len(logins) == 1:  # the one application logged in: `v3-<client id>.json`
        return logins[0].stem.removeprefix("v3-")
    if len(logins) > 1:
        ids = ", ".join(p.stem.removeprefix("v3-") for p in logins)
        raise ConfigError(f"several V3 logins are saved ({ids}): pass --client-id ID to say which")
    raise ConfigError(
        "no V3 client id: pass --client-id ID or set CTCT_V3_CLIENT_ID (the API key of "
        "your application in the V3 developer portal)"
    )


def _token_file(args: argparse.Namespace, client_id: str) -> Path:
    """`--token-file`, else `v3-<client_id>.json` in the user's config folder."""
    if args.token_file is not None:
        return Path(args.token_file)
    return default_token_path(client_id, platformdirs.user_config_dir(CONFIG_APP))


def _login_command(args: argparse.Namespace, client_id: str) -> str:
    """The `login` command line for these options (what a missing or dead token needs)."""
    parts = ["python -m engine login", f"--client-id {client_id}"]
    if args.token_file is not None:
        parts.append(f"--token-file {args.token_file}")
    if args.auth_url is not None:
        parts.append(f"--auth-url {args.auth_url}")
    if args.ca_file is not None:
        parts.append(f"--ca-file {args.ca_file}")
    if args.allow_http:
        parts.append("--allow-http")
    return " ".join(parts)


def _endpoints(args: argparse.Namespace, client_id: str) -> OAuthEndpoints:
    return OAuthEndpoints(
        client_id,
        auth_url=args.auth_url or DEFAULT_AUTH_URL,
        ca_file=args.ca_file,
        allow_http=args.allow_http,
        timeout=args.timeout,
    )


def _v3_client(args: argparse.Namespace) -> V3Client:
    """The V3 client: tokens from the token file, else from `$CTCT_V3_REFRESH_TOKEN` or
    `$CTCT_V3_ACCESS_TOKEN` (a headless run; a refresh token's rotated successor is saved in
    the token file, since the one given is spent by its first use).

    Raises:
        ConfigError: no client id, no tokens, a URL that would send them over plain http…
    """
    client_id = _client_id(args)
    endpoints = _endpoints(args, client_id)
    store = FileTokenStore(_token_file(args, client_id))
    refresh_token = os.environ.get("CTCT_V3_REFRESH_TOKEN", "").strip() or None
    access_token = os.environ.get("CTCT_V3_ACCESS_TOKEN", "").strip() or None
    if store.load() is None and refresh_token is None and access_token is None:
        raise ConfigError(
            f"no V3 tokens: the token file {store.path} does not exist. Log in first: "
            f"`{_login_command(args, client_id)}` (or, for a headless run, set "
            "CTCT_V3_REFRESH_TOKEN in the environment)"
        )
    auth = V3Auth(endpoints, store=store, refresh_token=refresh_token, access_token=access_token)
    return V3Client(
        auth,
        base_url=args.base_url or DEFAULT_BASE_URL,
        ca_file=args.ca_file,
        allow_http=args.allow_http,
        governor=_governor(args),
        retry=RetryPolicy(),
        timeout=args.timeout,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="Migrate contacts onto Constant Contact lists (the legacy v1 API or the "
        "V3 API) without removing any membership they already have.",
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
        "--revive-deleted",
        action="store_true",
        help="V3: bring deleted contacts back onto the target lists (by default they are "
        "left alone and reported skipped, reason deleted)",
    )
    run.add_argument(
        "--no-append",
        action="store_true",
        help="V3: send each existing contact's own PUT instead of batching its id into "
        "add_list_memberships appends (500 a request, append only)",
    )
    run.add_argument(
        "--append-linger",
        type=_non_negative_float,
        default=30.0,
        metavar="S",
        help="V3: seconds an unfilled append batch waits for more contacts (default: 30; a "
        "full batch or the end of the input sends it at once)",
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

    login = commands.add_parser(
        "login",
        help="log in to a V3 account (OAuth2 device flow) and save its tokens in the token file",
        description="Log in to a V3 account with the OAuth2 device flow: open the URL it "
        "prints, check the code, approve; the tokens (scope contact_data offline_access) are "
        "saved in the token file (folder 0700, file 0600) and never printed.",
    )
    logout = commands.add_parser(
        "logout",
        help="revoke the saved V3 tokens and delete the token file",
        description="Revoke the refresh and access tokens of the token file at the "
        "authorization server, then delete the file.",
    )
    for sub in (login, logout):
        sub.add_argument(
            "--api",
            "--backend",
            dest="backend",
            choices=("v3",),
            default="v3",
            help="only v3 logs in (v1 takes its credentials from the environment)",
        )
        _add_v3_arguments(sub)
        _add_tls_arguments(sub)
        sub.add_argument(
            "--timeout",
            type=_positive_float,
            default=30.0,
            help="seconds per request (default: 30)",
        )

    from engine.simulator.cli import add_arguments as add_simulator_arguments

    sim = commands.add_parser(
        "simulate", help="run the API simulator (v1; the V3 one with --api v3)"
    )
    add_simulator_arguments(sim)

    demo = commands.add_parser(
        "demo",
        help="a zero-configuration migration on the simulator (V3, with its device login; "
        "--api v1 for the legacy API)",
    )
    demo.add_argument(
        "--api",
        choices=("v3", "v1"),
        default="v3",
        help="v3 (default): the V3 simulator, logged in with the OAuth2 device flow (the "
        "approval scripted); v1: the legacy v1 simulator",
    )
    demo.add_argument(
        "--contacts",
        type=_positive_int,
        default=None,
        help="existing contacts to seed (default: 5000; at least 300 on v3, 4100 on v1)",
    )
    demo.add_argument(
        "--keep",
        type=Path,
        help="keep the demo's files in this folder (the CSV, the report; on v3 the token file too)",
    )
    for sub in (run, show, fix, copy, check, login, logout, demo):
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
        revive_deleted=args.revive_deleted,
        append_writes=not args.no_append,
        append_linger=args.append_linger,
        limits=StageLimits(fetch=args.fetch_limit, put=args.put_limit, bulk=args.bulk_limit),
        poll_initial=args.poll_initial,
        poll_max=max(args.poll_max, args.poll_initial),
        stall_timeout=args.activity_stall_timeout,
        poll_timeout=args.poll_timeout,
        activity_seconds=args.activity_seconds,
        verify_writes=args.verify_writes,
        stale_after=args.stale_after,
    )
    opened = _open_backend(args)
    if args.source.is_file():
        # Which column feeds which field, before anything is read or sent: a wrong guess is
        # cheaper to see here than in the report.
        try:
            columns = describe_columns(args.source, config.read)
        except SourceError:
            columns = ""  # the run itself says what is wrong, with the whole story
        if columns:
            print(columns, file=sys.stdout if args.dry_run else sys.stderr)
    async with opened as backend:
        if args.dry_run:
            plan = await plan_migration(
                backend,
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
                backend,
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
    async with _open_backend(args) as backend:
        result = await audit(backend, args.report, snapshot=snapshot)
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
    from engine.copy_account import copy_account, copy_v3_account

    def say(line: str) -> None:
        print(line, file=sys.stderr)

    async with _open_backend(args) as backend:
        if isinstance(backend, V1Backend):
            summary = await copy_account(backend.account, args.to, on_progress=say)
        else:
            assert isinstance(backend, V3Backend)
            summary = await copy_v3_account(backend, args.to, on_progress=say)
    described = summary.describe()
    if not isinstance(backend, V1Backend):
        described = described.replace("simulate --state", "simulate --api v3 --state")
    print(described)
    return EXIT_OK


async def _lists(args: argparse.Namespace) -> int:
    async with _open_backend(args) as backend:
        if not isinstance(backend, V1Backend):
            return _print_lists(await backend.lists())
        lists = await backend.account.lists()
    print(f"{'id':<70} {'members':>8} {'SortOrder':>9}  name")
    for item in lists:
        count = "" if item.contact_count is None else str(item.contact_count)
        order = "" if item.sort_order is None else str(item.sort_order)
        kind = "  (system list)" if item.is_system else ""
        print(f"{item.id:<70} {count:>8} {order:>9}  {item.name}{kind}")
    print("Use the id (not the SortOrder) wherever the API wants a list.")
    return EXIT_OK


def _print_lists(lists: Sequence[ListInfo]) -> int:
    """A V3 account's lists: list_id, members, name."""
    print(f"{'list_id':<36} {'members':>8}  name")
    for item in lists:
        count = "" if item.members is None else str(item.members)
        print(f"{item.id:<36} {count:>8}  {item.name}")
    return EXIT_OK


async def _login(args: argparse.Namespace) -> int:
    """The OAuth2 device flow: show the URL and code, wait for the approval, save the tokens.

    A login the user was asked for and that did not complete (denied, expired, refused
    while waiting) is exit 1; a refusal before that (an unknown client id, a server that
    does not answer) is a configuration error.
    """
    client_id = _client_id(args)
    store = FileTokenStore(_token_file(args, client_id))
    endpoints = _endpoints(args, client_id)
    shown = False

    def show(code: DeviceCode) -> None:
        nonlocal shown
        shown = True
        url = code.verification_uri_complete or code.verification_uri
        seconds = round(code.expires_in)
        lasts = f"{seconds} seconds" if seconds < 120 else f"{round(seconds / 60)} minutes"
        print(
            f"To log in, open {url}\n"
            f"check that the page shows the code {code.user_code} and approve it "
            f"(the code expires in {lasts}).\n"
            "Waiting for the approval…",
            file=sys.stderr,
            flush=True,
        )

    try:
        tokens = await device_login(endpoints, store=store, show=show)
    except AuthenticationError as exc:
        if not shown:
            raise
        print(f"error: not logged in: {exc}", file=sys.stderr)
        return EXIT_ROWS
    print(f"logged in; the tokens are saved in {store.path} (readable by you only).")
    if not tokens.refresh_token:
        print(
            "note: no refresh token came back (the application may not allow offline_access): "
            "log in again when the access token expires" + _expiry(tokens.expires_at) + "."
        )
    return EXIT_OK


def _expiry(expires_at: float) -> str:
    if math.isinf(expires_at):
        return ""
    return time.strftime(", at %Y-%m-%d %H:%M:%S UTC", time.gmtime(expires_at))


async def _logout(args: argparse.Namespace) -> int:
    """Revoke the token file's tokens (RFC 7009) and delete it."""
    client_id = _client_id(args)
    endpoints = _endpoints(args, client_id)
    store = FileTokenStore(_token_file(args, client_id))
    if not store.path.exists():
        print(f"no token file at {store.path}: not logged in, nothing to do.")
        return EXIT_OK
    try:
        auth = V3Auth(endpoints, store=store)
    except ConfigError as exc:  # not a token set: nothing to revoke, but remove it
        store.delete()
        print(f"deleted {store.path}, which held no tokens to revoke ({exc}).")
        return EXIT_OK
    try:
        await auth.revoke()
    except AuthenticationError as exc:
        store.delete()
        print(
            f"error: the tokens could not be revoked ({exc}); {store.path} is deleted anyway, "
            "so this machine keeps no token (the refresh token dies after 180 days unused)",
            file=sys.stderr,
        )
        return EXIT_ROWS
    # A refusal is logged as a warning above (RFC 7009 servers answer 200 even for a token
    # they no longer know).
    print(
        "logged out: the authorization server was asked to revoke the refresh and access "
        f"tokens, and {store.path} is deleted."
    )
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


def run_program() -> int:
    """`python -m engine` and `ctct-migrate`: the command line as a program of its own,
    which also sets the process up for a long run (`tune_process`)."""
    tune_process()
    return main()


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

            return _run(lambda: run_demo(api=args.api, contacts=args.contacts, keep=args.keep))
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
        if args.command == "login":
            return _run(lambda: _login(args))
        if args.command == "logout":
            return _run(lambda: _logout(args))
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
