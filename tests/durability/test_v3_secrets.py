"""Invariants I7 and I8 on a V3 account: access and refresh tokens never appear in stdout,
stderr, the report, the journal, exception text or `repr`; they never travel over plain
http to another host, nor follow a redirect.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine.backend.governor import RateGovernor
from engine.backend.retry import RetryPolicy
from engine.backend.v3 import (
    FileTokenStore,
    OAuthEndpoints,
    TokenSet,
    V3Auth,
    V3Backend,
    V3Client,
)
from engine.errors import AuthenticationError, FatalApiError

from .conftest import (
    Scenario,
    build_scenario,
    check_no_secrets,
    plain_http_server,
    run_engine,
)
from .test_v3_faults import assert_completes
from .v3_support import CLIENT_ID, v3_backend, v3_env, v3_served, v3_simulator

#: Made-up tokens of a token file no server issued (they must not be shown either).
MADE_UP_ACCESS = "AT-durable-3f9c1e7a-never-shown"
MADE_UP_REFRESH = "RT-durable-b8e2d4c6-never-shown"
#: One attempt, no waits.
ONCE = RetryPolicy(attempts=1, wait_initial=0, wait_max=0, wait_jitter=0)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """A V3 account and a source of about 230 rows, both paths."""
    return build_scenario(
        tmp_path_factory.mktemp("v3-scenario"), bulk=(60, 40, 30), per_set=8, backend="v3"
    )


def error_text(exc: BaseException) -> str:
    """Everything an exception can show: str, repr, args, attributes, the whole traceback."""
    parts = [str(exc), repr(exc), repr(exc.args), repr(vars(exc))]
    parts += traceback.format_exception(exc)
    return "\n".join(parts)


def made_up_token_file(folder: Path) -> Path:
    """A token file with the made-up tokens, valid for a day."""
    path = folder / "tokens" / f"v3-{CLIENT_ID}.json"
    FileTokenStore(path).save(
        TokenSet(MADE_UP_ACCESS, MADE_UP_REFRESH, time.time() + 86400, "contact_data")
    )
    return path


def test_v3_tokens_never_shown(scenario: Scenario, tmp_path: Path) -> None:
    """Verbose runs (killed, 5xx, refreshes) show no token in stdout, stderr, report, journal."""
    report = tmp_path / "run" / "report.jsonl"
    report.parent.mkdir()
    faults: dict[str, Any] = {"error_rate": 0.03, "access_ttl": 3.0}
    with v3_simulator(tmp_path / "sim", scenario.seed, **faults) as sim:
        args = ["-v", *scenario.migrate_args(sim, report)]
        killed = run_engine(args, env=v3_env(crash_at="put:10"))
        final = run_engine(args, env=v3_env())
        assert killed.killed
        assert "INFO" in final.stderr
        logged = killed.stderr + final.stderr
        assert "refreshed" in logged, "no refresh: its log was not tried"
        assert "retry" in logged, "no retry: its log was not tried"
        # check_migration looks for every token issued or saved, and their signatures.
        assert_completes(scenario, sim, report, killed, final)


async def test_v3_refused_tokens_show_in_no_error_or_repr(
    scenario: Scenario, tmp_path: Path
) -> None:
    """invalid_grant's error (str, repr, args, traceback) and the backend's reprs show no token."""
    token_file = tmp_path / "tokens" / "v3.json"
    async with (
        v3_served(scenario.seed) as sim,
        v3_backend(sim, token_file, retry=ONCE) as backend,
    ):
        await backend.verify()
        tokens = backend.client.auth.tokens
        sim.store.auth.revoke_all()
        with pytest.raises(AuthenticationError) as caught:
            await backend.verify()
        client = backend.client
        parts = [backend, client, client.auth, client.auth.endpoints, tokens]
        shown = " ".join([*map(repr, parts), str(tokens), backend.identity])
    text = error_text(caught.value)
    assert "python -m engine login" in text
    check_no_secrets([t for t in (tokens.access_token, tokens.refresh_token) if t], text, shown)


@pytest.mark.parametrize(
    "option",
    [
        pytest.param(("--base-url", "http://example.org/v3/"), id="api-over-http"),
        pytest.param(("--auth-url", "http://example.org/oauth2/default/v1/"), id="auth-over-http"),
    ],
)
def test_v3_cli_refuses_plain_http_to_another_host(option: tuple[str, str], tmp_path: Path) -> None:
    """An http URL of another host: exit 2 before any request, even with --allow-http (I8)."""
    source = tmp_path / "in.csv"
    source.write_text("Email Address\nann@example.com\n")
    token_file = made_up_token_file(tmp_path)
    base = ["migrate", str(source), "--list", "Beta", "--backend", "v3", "--client-id", CLIENT_ID]
    base += ["--token-file", str(token_file), *option]
    for extra in ((), ("--allow-http",)):
        result = run_engine([*base, *extra], env=v3_env(), timeout=60)
        assert result.returncode == 2, result.output
        assert "refusing plain http to a non-loopback host" in result.stderr
        assert "Traceback" not in result.stderr
        check_no_secrets([MADE_UP_ACCESS, MADE_UP_REFRESH], result.output)


async def test_v3_redirects_are_not_followed(tmp_path: Path) -> None:
    """A redirect to another host is not followed: it never sees the token; no token shown."""
    seen: list[web.Request] = []

    async def steal(request: web.Request) -> web.Response:
        seen.append(request)
        return web.Response(text="ok")

    async with plain_http_server(web.route("*", "/{tail:.*}", steal)) as thief:

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(f"{thief}/steal")

        async with plain_http_server(web.route("*", "/{tail:.*}", redirect)) as origin:
            endpoints = OAuthEndpoints(
                CLIENT_ID, auth_url=f"{origin}/oauth2/default/v1/", allow_http=True
            )
            auth = V3Auth(endpoints, store=FileTokenStore(made_up_token_file(tmp_path)))
            async with V3Client(
                auth,
                base_url=f"{origin}/v3/",
                allow_http=True,
                governor=RateGovernor(rate=None),
                retry=ONCE,
            ) as client:
                with pytest.raises(FatalApiError) as caught:
                    await V3Backend(client).verify()
    assert caught.value.status in (302, 307)
    assert seen == []
    check_no_secrets([MADE_UP_ACCESS, MADE_UP_REFRESH], error_text(caught.value))
