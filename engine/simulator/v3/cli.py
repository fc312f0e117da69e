"""`python -m engine simulate --api v3`: run the V3 simulator until SIGINT or SIGTERM.

The start line is a public contract: exactly one line on stdout,
`serving <base URL> auth=<auth URL> ca=<CA file>` (without ` ca=…` when TLS is off), and
nothing else; logs go to stderr. Tokens and the client secret are never printed.

The options shared with v1 (`--host`, `--port`, `--state`, the faults…) keep their names;
`add_arguments` adds the V3-only ones, which v1 ignores.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .._shared import run_until_signalled
from .config import SimulatorConfig
from .server import RunningSimulator, serve
from .store import AccountStore

__all__ = ["add_arguments", "config_from_args", "run"]

log = logging.getLogger("engine.simulator.v3")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"{text} is not > 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the V3-only options of `simulate` to a parser.

    Args:
        parser: The (sub)parser of the `simulate` command.
    """
    defaults = SimulatorConfig()
    group = parser.add_argument_group(
        "V3 API (with --api v3)",
        "with --api v3, --rate-limit and --daily-quota default to CC's 4/s and 10,000/day, "
        "--activity-delay to 2 s, and --activity-error-rate makes activities end `failed`",
    )
    group.add_argument("--client-id", default=defaults.client_id, help="the OAuth2 client_id")
    group.add_argument(
        "--client-secret", default=None, help="secret of a confidential client (Basic auth)"
    )
    group.add_argument(
        "--auto-approve",
        action="store_true",
        help="approve every device code and authorization request at once (no person needed)",
    )
    group.add_argument(
        "--access-ttl", type=_positive, default=defaults.access_ttl, help="access-token seconds"
    )
    group.add_argument(
        "--refresh-mode", choices=("rotating", "long_lived"), default=defaults.refresh_mode
    )
    group.add_argument("--device-interval", type=int, default=defaults.device_interval)
    group.add_argument("--device-expires-in", type=int, default=defaults.device_expires_in)
    group.add_argument(
        "--token-rps",
        type=_positive,
        default=defaults.token_rps,
        help="token-endpoint requests/s per client (default %(default)s)",
    )
    group.add_argument(
        "--no-limits",
        action="store_true",
        help="no 4/s, daily quota or token-endpoint limit (for benchmarks)",
    )
    group.add_argument(
        "--activity-rows-per-second",
        type=_positive,
        default=defaults.activity_rows_per_second,
    )


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Build the V3 `SimulatorConfig` the parsed `simulate` options describe.

    Raises:
        ValueError: An option value the config rejects (the message names the field).
    """
    defaults = SimulatorConfig()
    no_limits: bool = args.no_limits
    rps = None if no_limits else (defaults.rps if args.rate_limit is None else args.rate_limit)
    quota = None if no_limits else args.daily_quota
    if quota is None and not no_limits:
        quota = defaults.daily_quota
    return SimulatorConfig(
        host=args.host,
        port=args.port,
        tls=not args.no_tls,
        ca_dir=args.ca_dir,
        client_id=args.client_id,
        client_secret=args.client_secret,
        auto_approve=args.auto_approve,
        access_ttl=args.access_ttl,
        refresh_mode=args.refresh_mode,
        device_interval=args.device_interval,
        device_expires_in=args.device_expires_in,
        token_rps=None if no_limits else args.token_rps,
        rps=rps,
        daily_quota=quota,
        retry_after_header=args.retry_after is not None,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        error_rate=args.error_rate,
        reset_rate=args.reset_rate,
        lose_answer_rate=args.lose_answer_rate,
        seed=args.seed,
        activity_delay=defaults.activity_delay
        if args.activity_delay is None
        else args.activity_delay,
        activity_jitter=args.activity_jitter,
        activity_fail_rate=args.activity_error_rate,
        activity_rows_per_second=args.activity_rows_per_second,
        unfinished_activities="fail" if args.unfinished_activities == "error" else "run",
    )


def _announce(sim: RunningSimulator) -> None:
    line = f"serving {sim.base_url} auth={sim.auth_url}"
    if sim.ca_path is not None:
        line += f" ca={sim.ca_path}"
    sys.stdout.write(line + "\n")  # the start contract (no print: T20 is on here)
    sys.stdout.flush()
    log.info("device verification page: %s/activate", sim.origin)


def run(args: argparse.Namespace) -> int:
    """Run the V3 simulator with parsed `simulate` options until SIGINT or SIGTERM.

    Returns:
        The exit status: 0 after a clean stop, 2 for an invalid setting or state file.
    """
    return run_until_signalled(
        lambda: config_from_args(args),
        lambda path, config: AccountStore.load(path, config),
        AccountStore,
        serve,
        _announce,
        args.state,
        args.save_every,
    )
