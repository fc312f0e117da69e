"""Invariants I7 and I8: the password and the API key never appear in any output, log,
report, journal or exception text, and credentials never travel over plain http to another
host (nor follow a redirect)."""

from __future__ import annotations

import socket
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from engine.backend.v1 import Account, Credentials, RateGovernor, RetryPolicy
from engine.errors import AuthenticationError, ConfigError, ConnectionLostError, FatalApiError
from engine.simulator import AccountStore, SimulatorConfig, serve

from .conftest import (
    SIM_FAST,
    USERNAME,
    build_scenario,
    engine_env,
    plain_http_server,
    run_engine,
    simulator_process,
)

PASSWORD = "Pw-SECRET-9f3a"
API_KEY = "Key-SECRET-77c1"
SECRETS = (PASSWORD, API_KEY)


def leaks(text: str | bytes) -> list[str]:
    """The secrets found in `text` (also in their common encodings)."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    found = []
    for secret in SECRETS:
        forms = {secret.encode(), secret.encode("utf-16-le"), secret.lower().encode()}
        if any(form in data or form in data.lower() for form in forms):
            found.append(secret)
    return found


def error_text(exc: BaseException) -> str:
    """Everything an exception can show: str, repr, args, attributes, the whole traceback."""
    parts = [str(exc), repr(exc), repr(exc.args), repr(vars(exc))]
    parts += traceback.format_exception(exc)
    return "\n".join(parts)


@pytest.mark.timeout(180)
def test_no_secret_in_any_output_report_journal_or_log(tmp_path: Path) -> None:
    """Password and key appear in no output, log, report or journal of verbose runs."""
    scenario = build_scenario(tmp_path / "scenario", bulk=(60, 40, 30), per_set=8)
    work = tmp_path / "work"
    work.mkdir()
    report = work / "report.jsonl"
    faults = ("--error-rate", "0.05", "--reset-rate", "0.05")
    with simulator_process(
        tmp_path / "sim", scenario.seed, *SIM_FAST, *faults, api_key=API_KEY, password=PASSWORD
    ) as sim:
        args = ["-v", *scenario.migrate_args(sim, report)]
        env = engine_env(api_key=API_KEY, password=PASSWORD)
        crashed = run_engine(args, env={**env, "CTCT_ENGINE_CRASH_AT": "put:20"})
        final = run_engine(args, env=env)
        wrong = run_engine(args, env=engine_env(api_key=API_KEY, password="Not-The-Pw-1"))
        sim_log = sim.log_path.read_text()
    assert crashed.killed
    assert final.returncode == 1, final.output  # 1: the invalid rows
    assert "retry" in final.stderr, "no retry was logged: the log paths were not exercised"
    assert "INFO" in final.stderr
    assert wrong.returncode == 2
    assert "authentication failed" in wrong.stderr
    for name, text in [
        ("crashed run", crashed.output),
        ("final run", final.output),
        ("wrong-password run", wrong.output),
        ("simulator log", sim_log),
    ]:
        assert not leaks(text), f"{leaks(text)} in the {name}'s output"
    written = [p for p in work.iterdir() if p.is_file()]
    assert {p.name for p in written} >= {"report.jsonl", "report.journal.sqlite"}
    for path in written:
        assert not leaks(path.read_bytes()), f"{leaks(path.read_bytes())} in {path.name}"


@asynccontextmanager
async def simulator() -> AsyncIterator[tuple[str, Path | None]]:
    """A simulator with the distinctive credentials; yields (base URL, CA file)."""
    config = SimulatorConfig(
        host="127.0.0.1", port=0, username=USERNAME, api_key=API_KEY, password=PASSWORD
    )
    async with serve(config, AccountStore(config)) as sim:
        yield sim.base_url, sim.ca_path


def account(base_url: str, ca: Path | None, *, api_key: str, password: str) -> Account:
    """An `Account` with the given key and password; one attempt, no waits."""
    return Account(
        Credentials(USERNAME, api_key, password),
        base_url=base_url,
        ca_file=ca,
        governor=RateGovernor(rate=None),
        retry=RetryPolicy(attempts=1, wait_initial=0, wait_max=0, wait_jitter=0),
        allow_http=base_url.startswith("http://"),
    )


@pytest.mark.parametrize(
    ("api_key", "password"),
    [
        pytest.param(API_KEY, "Pw-SECRET-wrong", id="wrong-password"),
        pytest.param("Key-SECRET-wrong", PASSWORD, id="wrong-key"),
    ],
)
async def test_bad_credentials_errors_show_no_secret(api_key: str, password: str) -> None:
    """Errors of bad credentials show no key or password in str, repr, args or traceback."""
    async with (
        simulator() as (base_url, ca),
        account(base_url, ca, api_key=api_key, password=password) as client,
    ):
        with pytest.raises(AuthenticationError) as caught:
            await client.verify()
        shown = repr(client) + repr(client.credentials) + str(client.credentials)
    text = error_text(caught.value)
    assert "APIKEY%username" in text
    for secret in (api_key, password, API_KEY, PASSWORD, "SECRET"):
        assert secret not in text
        assert secret not in shown


async def test_connection_errors_show_no_secret() -> None:
    """A connection error names the URL but shows no credentials."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ws/customers/{USERNAME}/"
    async with account(url, None, api_key=API_KEY, password=PASSWORD) as client:
        with pytest.raises(ConnectionLostError) as caught:
            await client.verify()
    text = error_text(caught.value)
    assert f"127.0.0.1:{port}" in text
    assert not leaks(text)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://example.org/ws/customers/durable/", id="plain-http-remote-host"),
        pytest.param("http://10.0.0.8/ws/customers/durable/", id="plain-http-private-address"),
        pytest.param("http://api.constantcontact.com/ws/customers/durable/", id="plain-http-api"),
    ],
)
def test_plain_http_to_another_host_is_refused(url: str) -> None:
    """Plain http to a non-loopback host is refused, even with allow_http (I8)."""
    for allow in (False, True):
        with pytest.raises(ConfigError, match="refusing plain http to a non-loopback host"):
            Account(Credentials(USERNAME, API_KEY, PASSWORD), base_url=url, allow_http=allow)


def test_credentials_in_the_url_and_plain_http_loopback_without_consent_are_refused() -> None:
    """Userinfo in the URL is refused unechoed; plain http to loopback needs allow_http."""
    credentials = Credentials(USERNAME, API_KEY, PASSWORD)
    with pytest.raises(ConfigError) as caught:
        Account(credentials, base_url=f"https://u:{PASSWORD}@127.0.0.1/ws/customers/durable/")
    assert not leaks(error_text(caught.value))
    with pytest.raises(ConfigError, match="--allow-http"):
        Account(credentials, base_url="http://127.0.0.1:8080/ws/customers/durable/")


def test_cli_refuses_plain_http_to_another_host(tmp_path: Path) -> None:
    """migrate --base-url http://example.org/… exits 2 with the https message, no secret shown."""
    source = tmp_path / "in.csv"
    source.write_text("Email Address\nann@example.com\n")
    env = engine_env(api_key=API_KEY, password=PASSWORD)
    url = "http://example.org/ws/customers/durable/"
    for extra in ((), ("--allow-http",)):
        args = ["migrate", str(source), "--list", "Beta", "--base-url", url, *extra]
        result = run_engine(args, env=env, timeout=60)
        assert result.returncode == 2, result.output
        assert "refusing plain http to a non-loopback host" in result.stderr
        assert "Traceback" not in result.stderr
        assert not leaks(result.output)


async def test_redirects_are_not_followed() -> None:
    """A redirect to another host is not followed: that host never sees a request."""
    seen: list[web.Request] = []

    async def steal(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(text="ok")

    async with plain_http_server(web.get("/{tail:.*}", steal)) as thief:

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(f"{thief}/steal")

        async with plain_http_server(web.get("/{tail:.*}", redirect)) as origin:
            url = f"{origin}/ws/customers/{USERNAME}/"
            async with account(url, None, api_key=API_KEY, password=PASSWORD) as client:
                with pytest.raises(FatalApiError) as caught:
                    await client.verify()
    assert caught.value.status == 302
    assert seen == []
    assert not leaks(error_text(caught.value))
