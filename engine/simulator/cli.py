"""`python -m engine simulate`: run the simulator until SIGINT or SIGTERM.

The command line is a public contract. On start it prints exactly one line to stdout,
`serving <base URL> ca=<CA file>` (without ` ca=…` when TLS is off), and nothing else; logs go
to stderr. The password and API key are never printed.

`--api v3` runs the V3 simulator instead (`engine.simulator.v3.cli`), whose line is
`serving <base URL> auth=<auth URL> ca=<CA file>`; the default is `--api v1`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from ._shared import run_until_signalled
from .v1.config import SimulatorConfig
from .v1.server import RunningSimulator, serve
from .v1.store import AccountStore
from .v3 import cli as v3_cli

__all__ = ["add_arguments", "main", "run"]

log = logging.getLogger("engine.simulator")


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `simulate` options to a parser.

    Args:
        parser: The (sub)parser of the `simulate` command.
    """
    defaults = SimulatorConfig()
    parser.add_argument(
        "--api",
        choices=("v1", "v3"),
        default="v1",
        help="which API to simulate: the v1 XML API (default) or the V3 REST API",
    )
    net = parser.add_argument_group("listening")
    net.add_argument("--host", default=defaults.host, help="address to bind (default %(default)s)")
    net.add_argument("--port", type=int, default=0, help="https port; 0 picks a free one")
    net.add_argument("--no-tls", action="store_true", help="serve plain http (loopback only)")
    net.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="with TLS, also listen for plain http here and refuse it (0 = free port)",
    )
    net.add_argument(
        "--ca-dir",
        type=Path,
        default=None,
        help="folder of the CA: made there once, reused at every later start (so https "
        "clients that trust its file survive a restart); default: a new CA in a temporary "
        "folder",
    )

    account = parser.add_argument_group("account")
    account.add_argument("--username", default=defaults.username)
    account.add_argument("--api-key", default=defaults.api_key)
    account.add_argument("--password", default=defaults.password)
    account.add_argument(
        "--state",
        type=Path,
        default=None,
        help="JSON state file: loaded if present, saved as it changes and on exit",
    )
    account.add_argument(
        "--save-every",
        type=_non_negative,
        default=1.0,
        help="with --state: seconds between saves of a changed state (0: only on exit)",
    )

    faults = parser.add_argument_group("faults and limits")
    faults.add_argument("--latency-ms", type=_non_negative, default=0.0)
    faults.add_argument("--latency-jitter-ms", type=_non_negative, default=0.0)
    faults.add_argument("--latency-lognormal", action="store_true")
    faults.add_argument("--error-rate", type=_probability, default=0.0, help="500/503 share")
    faults.add_argument("--reset-rate", type=_probability, default=0.0, help="dropped share")
    faults.add_argument("--rate-limit", type=float, default=None, help="requests/s per key")
    faults.add_argument("--rate-burst", type=int, default=None)
    faults.add_argument("--daily-quota", type=int, default=None, help="requests/day per key")
    faults.add_argument("--throttle-status", type=int, choices=(403, 429, 503), default=403)
    faults.add_argument("--retry-after", type=_non_negative, default=None)
    faults.add_argument("--search-miss-500", action="store_true")
    faults.add_argument(
        "--lose-answer-rate",
        type=_probability,
        default=0.0,
        help="share of successful writes applied and then left unanswered (connection aborted)",
    )
    faults.add_argument("--seed", type=int, default=defaults.seed)

    bulk = parser.add_argument_group("activities")
    bulk.add_argument(
        "--activity-delay",
        type=_non_negative,
        default=None,
        help=f"mean seconds to an activity's end (default {defaults.activity_delay}; v3: "
        "seconds to processing, default 2)",
    )
    bulk.add_argument("--activity-jitter", type=_probability, default=defaults.activity_jitter)
    bulk.add_argument("--activity-error-rate", type=_probability, default=0.0)
    bulk.add_argument(
        "--unfinished-activities",
        choices=("run", "error"),
        default="run",
        help="activities left unfinished in --state: run them to the end (default), or mark "
        "them ERROR (a server that lost its queue)",
    )
    bulk.add_argument("--bulk-semantics", choices=("append", "replace"), default="append")
    bulk.add_argument("--bulk-max-rows", type=int, default=defaults.bulk_max_rows)
    bulk.add_argument("--bulk-max-bytes", type=int, default=defaults.bulk_max_bytes)

    variants = parser.add_argument_group("variants of unknown behaviour")
    variants.add_argument("--plain-http-status", type=int, choices=(401, 403), default=403)
    variants.add_argument("--username-mismatch-status", type=int, choices=(401, 403), default=401)
    variants.add_argument("--dnm-put-rule", choices=("adding-lists", "any"), default="adding-lists")
    variants.add_argument(
        "--bare-list-entry",
        action="store_true",
        help="answer GET lists/{id} with a ContactList without namespace or id (one captured "
        "response has it; default: the namespaced form of the lists feed)",
    )
    variants.add_argument("--no-location-headers", action="store_true")

    v3_cli.add_arguments(parser)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Build the `SimulatorConfig` the parsed options describe.

    Raises:
        ValueError: An option value the config rejects (the message names the field).
    """
    return SimulatorConfig(
        host=args.host,
        port=args.port,
        tls=not args.no_tls,
        http_port=args.http_port,
        ca_dir=args.ca_dir,
        username=args.username,
        api_key=args.api_key,
        password=args.password,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        latency_lognormal=args.latency_lognormal,
        error_rate=args.error_rate,
        reset_rate=args.reset_rate,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        daily_quota=args.daily_quota,
        throttle_status=args.throttle_status,
        retry_after=args.retry_after,
        search_miss_500=args.search_miss_500,
        lose_answer_rate=args.lose_answer_rate,
        seed=args.seed,
        activity_delay=(
            SimulatorConfig().activity_delay if args.activity_delay is None else args.activity_delay
        ),
        activity_jitter=args.activity_jitter,
        activity_error_rate=args.activity_error_rate,
        unfinished_activities=args.unfinished_activities,
        bulk_semantics=args.bulk_semantics,
        bulk_max_rows=args.bulk_max_rows,
        bulk_max_bytes=args.bulk_max_bytes,
        plain_http_status=args.plain_http_status,
        username_mismatch_status=args.username_mismatch_status,
        dnm_put_rule=args.dnm_put_rule,
        location_headers=not args.no_location_headers,
        bare_list_entry=args.bare_list_entry,
    )


def _announce(sim: RunningSimulator) -> None:
    line = f"serving {sim.base_url}"
    if sim.ca_path is not None:
        line += f" ca={sim.ca_path}"
    print(line, flush=True)
    if sim.http_base_url is not None:
        log.info("refusing plain http at %s", sim.http_base_url)


def run(args: argparse.Namespace) -> int:
    """Run the simulator with parsed options until SIGINT or SIGTERM.

    Args:
        args: Options added by `add_arguments`.

    Returns:
        The exit status: 0 after a clean stop, 2 for an invalid setting or state file.
    """
    if getattr(args, "api", "v1") == "v3":
        return v3_cli.run(args)
    return run_until_signalled(
        lambda: config_from_args(args),
        lambda path, config: AccountStore.load(path, config),
        AccountStore,
        serve,
        _announce,
        args.state,
        args.save_every,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point with its own parser (the same options as `simulate`).

    Args:
        argv: Arguments without the program name; `sys.argv[1:]` when `None`.

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(
        prog="engine-simulate",
        description="Run the Constant Contact v1 (or, with --api v3, V3) API simulator.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
