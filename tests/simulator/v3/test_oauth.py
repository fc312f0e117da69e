"""The simulated authorization server: device flow, refresh rotation, limits, revocation."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from engine.simulator.v3 import RunningSimulator

from .conftest import FakeClock, V3Starter, get_json, open_session

DEVICE = "urn:ietf:params:oauth:grant-type:device_code"
CLIENT = "demo-client"


async def token_call(sim: RunningSimulator, **form: str) -> tuple[int, dict[str, Any]]:
    """POST the token endpoint with a form body."""
    async with (
        open_session(sim, base=sim.origin) as session,
        session.post(sim.token_url, data=form) as response,
    ):
        return response.status, await response.json()


async def start_device(sim: RunningSimulator, scope: str = "contact_data offline_access") -> Any:
    async with (
        open_session(sim, base=sim.origin) as session,
        session.post(sim.device_url, data={"client_id": CLIENT, "scope": scope}) as response,
    ):
        assert response.status == 200
        return await response.json()


async def poll(sim: RunningSimulator, device_code: str) -> tuple[int, dict[str, Any]]:
    return await token_call(sim, client_id=CLIENT, device_code=device_code, grant_type=DEVICE)


async def test_device_flow_pending_slow_down_then_tokens(
    start_v3: V3Starter, clock: FakeClock
) -> None:
    """Polling before approval answers authorization_pending, too fast slow_down (interval
    +5 s); after approval it yields a token pair once, then invalid_grant."""
    async with start_v3() as (sim, _):
        start = await start_device(sim)
        assert start["interval"] == 5
        assert start["expires_in"] == 600
        assert start["verification_uri_complete"].endswith(f"user_code={start['user_code']}")
        status, body = await poll(sim, start["device_code"])
        assert (status, body["error"]) == (400, "authorization_pending")
        clock.advance(2)
        assert (await poll(sim, start["device_code"]))[1]["error"] == "slow_down"
        clock.advance(6)  # the interval is 10 s now
        assert (await poll(sim, start["device_code"]))[1]["error"] == "slow_down"
        clock.advance(16)
        assert (await poll(sim, start["device_code"]))[1]["error"] == "authorization_pending"
        sim.approve(start["user_code"])
        clock.advance(16)
        status, tokens = await poll(sim, start["device_code"])
        assert status == 200
        assert tokens["token_type"] == "Bearer"
        assert tokens["expires_in"] == 86400
        assert set(tokens["scope"].split()) == {"contact_data", "offline_access"}
        assert tokens["refresh_token"]
        async with open_session(sim, tokens["access_token"]) as api:
            assert await get_json(api, "contact_lists") == {"lists": [], "_links": {}}
        clock.advance(16)
        assert (await poll(sim, start["device_code"]))[1]["error"] == "invalid_grant"


async def test_device_flow_denied_and_expired(start_v3: V3Starter, clock: FakeClock) -> None:
    """A denied user code gives access_denied; an undecided one expires into expired_token."""
    async with start_v3() as (sim, _):
        denied, late = await start_device(sim), await start_device(sim)
        async with (
            open_session(sim, base=sim.origin) as session,
            session.post(
                "/_sim/device", json={"user_code": denied["user_code"], "decision": "deny"}
            ) as response,
        ):
            assert response.status == 204
        assert (await poll(sim, denied["device_code"]))[1]["error"] == "access_denied"
        clock.advance(601)
        assert (await poll(sim, late["device_code"]))[1]["error"] == "expired_token"


async def test_verification_page_approves_a_user_code(v3: tuple[RunningSimulator, Any]) -> None:
    """A person can approve a user code on the /activate page; unknown codes are refused."""
    sim, _ = v3
    start = await start_device(sim)
    async with open_session(sim, base=sim.origin) as session:
        async with session.get(start["verification_uri_complete"]) as page:
            assert page.status == 200
            assert start["user_code"] in await page.text()
        form = {"user_code": start["user_code"], "decision": "approve"}
        async with session.post("/activate", data=form) as answer:
            assert answer.status == 200
            assert "Device activated" in await answer.text()
        async with session.post("/activate", data=form) as again:
            assert again.status == 400
    status, tokens = await poll(sim, start["device_code"])
    assert status == 200
    assert "refresh_token" in tokens


async def test_refresh_rotation_kills_the_old_token(start_v3: V3Starter, clock: FakeClock) -> None:
    """Rotating refresh tokens are single use: the new one works, the old one gets
    invalid_grant (400, the G2 body)."""
    async with start_v3() as (sim, _):
        first = sim.issue_tokens()
        assert first.refresh_token is not None
        status, second = await token_call(
            sim, client_id=CLIENT, grant_type="refresh_token", refresh_token=first.refresh_token
        )
        assert status == 200
        assert second["refresh_token"] != first.refresh_token
        clock.advance(2)
        status, error = await token_call(
            sim, client_id=CLIENT, grant_type="refresh_token", refresh_token=first.refresh_token
        )
        assert status == 400
        assert error == {
            "error": "invalid_grant",
            "error_description": "The refresh token is invalid or expired.",
        }
        clock.advance(2)
        status, third = await token_call(
            sim, client_id=CLIENT, grant_type="refresh_token", refresh_token=second["refresh_token"]
        )
        assert status == 200
        assert third["access_token"] != second["access_token"]


async def test_long_lived_refresh_and_idle_expiry(start_v3: V3Starter, clock: FakeClock) -> None:
    """Long-lived refresh tokens come back unchanged; 180 days without use expire them."""
    async with start_v3(refresh_mode="long_lived") as (sim, _):
        tokens = sim.issue_tokens()
        refresh = tokens.refresh_token
        assert refresh is not None
        status, body = await token_call(
            sim, client_id=CLIENT, grant_type="refresh_token", refresh_token=refresh
        )
        assert (status, body["refresh_token"]) == (200, refresh)
        clock.advance(181 * 86400)
        status, body = await token_call(
            sim, client_id=CLIENT, grant_type="refresh_token", refresh_token=refresh
        )
        assert (status, body["error"]) == (400, "invalid_grant")


async def test_no_refresh_token_without_offline_access(v3: tuple[RunningSimulator, Any]) -> None:
    """Without offline_access the token response simply has no refresh_token."""
    sim, _ = v3
    sim.approve((start := await start_device(sim, "contact_data"))["user_code"])
    status, body = await poll(sim, start["device_code"])
    assert status == 200
    assert "refresh_token" not in body
    assert body["scope"] == "contact_data"


async def test_token_endpoint_allows_one_request_per_second(
    start_v3: V3Starter, clock: FakeClock
) -> None:
    """A second token request within the same second gets 429 (Okta's body by default)."""
    async with start_v3(token_rps=1.0) as (sim, _):
        refresh = sim.issue_tokens().refresh_token
        assert refresh is not None
        status, body = await token_call(
            sim, client_id=CLIENT, grant_type="refresh_token", refresh_token=refresh
        )
        assert status == 200
        status, refused = await token_call(
            sim, client_id=CLIENT, grant_type="refresh_token", refresh_token=body["refresh_token"]
        )
        assert status == 429
        assert refused["errorCode"] == "E0000047"
        clock.advance(1.0)
        status, _ = await token_call(
            sim, client_id=CLIENT, grant_type="refresh_token", refresh_token=body["refresh_token"]
        )
        assert status == 200


async def test_access_token_expiry_forced_mid_run(start_v3: V3Starter, clock: FakeClock) -> None:
    """With a short access_ttl the API answers 401 once the token expires; a refreshed one
    works again."""
    async with start_v3(access_ttl=60) as (sim, api):
        await get_json(api, "contact_lists")
        tokens = sim.issue_tokens()
        clock.advance(61)
        async with api.get("contact_lists") as response:
            assert response.status == 401
        status, fresh = await token_call(
            sim, client_id=CLIENT, grant_type="refresh_token", refresh_token=tokens.refresh_token
        )
        assert status == 200
        async with open_session(sim, fresh["access_token"]) as again:
            await get_json(again, "contact_lists")


async def test_revocation(v3: tuple[RunningSimulator, Any]) -> None:
    """`/v1/revoke` answers 200 for any token and kills a real one; `/_sim/revoke` kills all."""
    sim, api = v3
    tokens = sim.issue_tokens()
    async with open_session(sim, base=sim.origin) as session:
        for token in ("not-a-token", tokens.access_token):
            async with session.post(sim.auth_url + "revoke", data={"token": token}) as answer:
                assert answer.status == 200
        async with open_session(sim, tokens.access_token) as revoked, revoked.get("contacts") as r:
            assert r.status == 401
        async with session.post("/_sim/revoke") as answer:
            assert answer.status == 204
    async with api.get("contacts") as response:
        assert response.status == 401


async def test_authorization_code_with_pkce(start_v3: V3Starter) -> None:
    """The PKCE flow: authorize redirects with a code, the exchange checks the verifier, and
    a code is single use."""
    async with start_v3(auto_approve=True) as (sim, _):
        verifier = "v" * 50
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        params = {
            "client_id": CLIENT,
            "redirect_uri": sim.config.redirect_uris[0],
            "response_type": "code",
            "scope": "contact_data+offline_access",
            "state": "xyz",
            "code_challenge": challenge.decode().rstrip("="),
            "code_challenge_method": "S256",
        }

        async def new_code() -> str:
            async with (
                open_session(sim, base=sim.origin) as session,
                session.get(sim.auth_url + "authorize", params=params, allow_redirects=False) as r,
            ):
                assert r.status == 302
                query = parse_qs(urlsplit(r.headers["Location"]).query)
            assert query["state"] == ["xyz"]
            return query["code"][0]

        exchange = {
            "client_id": CLIENT,
            "grant_type": "authorization_code",
            "redirect_uri": sim.config.redirect_uris[0],
        }
        status, body = await token_call(sim, **exchange, code=await new_code(), code_verifier="w")
        assert (status, body["error"]) == (400, "invalid_grant")
        code = await new_code()
        status, body = await token_call(sim, **exchange, code=code, code_verifier=verifier)
        assert status == 200
        assert "refresh_token" in body
        assert (await token_call(sim, **exchange, code=code, code_verifier=verifier))[0] == 400


async def test_tokens_never_leak(v3: tuple[RunningSimulator, Any]) -> None:
    """Tokens appear in no repr, no stats output and no saved state."""
    sim, api = v3
    tokens = sim.issue_tokens()
    assert tokens.refresh_token is not None
    await get_json(api, "contacts")
    async with open_session(sim, base=sim.origin) as session, session.get("/_sim/stats") as r:
        stats = await r.text()
    exposed = repr(tokens) + repr(sim) + repr(sim.store.auth) + stats
    exposed += json.dumps(sim.store.to_json())
    for secret in (tokens.access_token, tokens.refresh_token):
        assert secret not in exposed
    assert "access_token=" not in repr(tokens)


async def test_unknown_client_is_invalid_client(v3: tuple[RunningSimulator, Any]) -> None:
    """A token request for another client_id is 401 invalid_client."""
    sim, _ = v3
    status, body = await token_call(sim, client_id="other", grant_type="refresh_token")
    assert (status, body["error"]) == (401, "invalid_client")


async def test_token_request_in_the_query_string(v3: tuple[RunningSimulator, Any]) -> None:
    """Parameters may come in the query string of the POST, as CC's own example sends them."""
    sim, _ = v3
    refresh = sim.issue_tokens().refresh_token
    assert refresh is not None
    query = {"client_id": CLIENT, "grant_type": "refresh_token", "refresh_token": refresh}
    async with (
        open_session(sim, base=sim.origin) as session,
        session.post(sim.token_url, params=query) as response,
    ):
        assert response.status == 200
        assert isinstance(await response.json(), dict)


def test_scopes_accept_plus_and_space() -> None:
    """Scopes separated by `+` or spaces parse the same."""
    from engine.simulator.v3 import AuthServer

    assert AuthServer.parse_scopes("contact_data+offline_access") == (
        "contact_data",
        "offline_access",
    )
    assert AuthServer.parse_scopes("contact_data  offline_access") == (
        "contact_data",
        "offline_access",
    )


async def test_basic_auth_confidential_client(start_v3: V3Starter) -> None:
    """A confidential client authenticates with Basic; a wrong secret is invalid_client."""
    async with start_v3(client_secret="s3cret") as (sim, _):
        refresh = sim.issue_tokens().refresh_token
        assert refresh is not None
        form = {"grant_type": "refresh_token", "refresh_token": refresh}
        async with open_session(sim, base=sim.origin) as session:
            for secret, expected in (("wrong", 401), ("s3cret", 200)):
                headers = {"Authorization": aiohttp.encode_basic_auth(CLIENT, secret)}
                async with session.post(sim.token_url, data=form, headers=headers) as response:
                    assert response.status == expected
