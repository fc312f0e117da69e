"""The API gateway: bearer check, error shapes, 415, rate limits and the daily quota."""

from __future__ import annotations

from typing import Any

import aiohttp

from engine.simulator.v3 import RunningSimulator

from .conftest import FakeClock, V3Starter, get_json, open_session, post_json

THROTTLED = {"error_key": "throttled", "error_message": "Too Many Requests"}
QUOTA = {"error_key": "quota_exceeded", "error_message": "Limit Exceeded"}


async def test_missing_or_bad_bearer_is_401_with_an_object_body(
    v3: tuple[RunningSimulator, Any],
) -> None:
    """No token, a wrong scheme or an unknown token: 401 `{"error_key":"unauthorized"}`."""
    sim, _ = v3
    for token in (None, "made-up"):
        async with open_session(sim, token) as session, session.get("contacts") as response:
            assert response.status == 401
            assert await response.json() == {
                "error_key": "unauthorized",
                "error_message": "Unauthorized",
            }
    async with open_session(sim) as session:
        headers = {"Authorization": "Basic ZGVtbzpkZW1v"}
        async with session.get("contacts", headers=headers) as response:
            assert response.status == 401


async def test_unauthorized_array_variant(start_v3: V3Starter) -> None:
    """With `unauthorized_shape="array"` the 401 body is an array."""
    async with (
        start_v3(unauthorized_shape="array") as (sim, _),
        open_session(sim) as session,
        session.get("contacts") as response,
    ):
        assert response.status == 401
        assert isinstance(await response.json(), list)


async def test_scope_and_deactivation_give_403(start_v3: V3Starter) -> None:
    """A token without contact_data, or any token of a deactivated application, gets 403."""
    async with start_v3() as (sim, _):
        token = sim.issue_tokens(("account_read",)).access_token
        async with open_session(sim, token) as session, session.get("contacts") as response:
            assert response.status == 403
            assert (await response.json())[0]["error_key"] == "forbidden"
    async with start_v3(deactivated=True) as (_, api), api.get("contacts") as response:
        assert response.status == 403


async def test_missing_privilege_gives_403(start_v3: V3Starter) -> None:
    """A user without `contacts:write` cannot create contacts but can still read them."""
    async with start_v3(privileges=frozenset({"contacts:read"})) as (_, api):
        await get_json(api, "contacts")
        status, body = await post_json(api, "contacts", {"create_source": "Account"})
        assert status == 403
        assert isinstance(body, list)


async def test_paths_outside_v3_are_forbidden(v3: tuple[RunningSimulator, Any]) -> None:
    """The gateway answers 403 {"message":"Forbidden"} outside /v3 and the auth server."""
    sim, api = v3
    async with api.get(sim.origin + "/v2/contacts") as response:
        assert response.status == 403
        assert await response.json() == {"message": "Forbidden"}


async def test_json_endpoints_need_the_json_content_type(v3: tuple[RunningSimulator, Any]) -> None:
    """A POST with `text/plain` gets 415; malformed JSON (a trailing comma) gets 400; both
    as arrays."""
    _, api = v3
    body = '{"create_source": "Account", "first_name": "A",}'
    async with api.post("contacts", data=body, headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 415
        assert (await r.json())[0]["error_key"] == "http.media_type.not_supported"
    async with api.post(
        "contacts", data=body, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 400
        assert isinstance(await response.json(), list)


async def test_four_requests_per_second_then_throttled(
    start_v3: V3Starter, clock: FakeClock
) -> None:
    """Per client id: 4 requests in a second pass, the 5th gets 429 `throttled` (an object),
    whichever token is used; a second later requests pass again."""
    async with start_v3(rps=4.0) as (sim, api):
        other = sim.issue_tokens().access_token
        for _ in range(2):
            await get_json(api, "contacts")
        async with open_session(sim, other) as second:
            for _ in range(2):
                await get_json(second, "contacts")
            async with second.get("contacts") as response:
                assert response.status == 429
                assert await response.json() == THROTTLED
                assert "Retry-After" not in response.headers
        clock.advance(1.0)
        await get_json(api, "contacts")


async def test_daily_quota_resets_at_midnight_utc(start_v3: V3Starter, clock: FakeClock) -> None:
    """After `daily_quota` requests a client gets 429 `quota_exceeded` until 00:00 UTC of the
    injected clock; with `retry_after_header` the answer says how long to wait."""
    async with start_v3(daily_quota=3, retry_after_header=True) as (_, api):
        for _ in range(3):
            await get_json(api, "contacts")
        async with api.get("contacts") as response:
            assert response.status == 429
            assert await response.json() == QUOTA
            assert int(response.headers["Retry-After"]) == 12 * 3600
        clock.advance(12 * 3600 - 1)  # 23:59:59
        async with api.get("contacts") as response:
            assert response.status == 429
        clock.advance(1)
        await get_json(api, "contacts")


async def test_rate_limit_headers_option(start_v3: V3Starter) -> None:
    """With `rate_limit_headers` every answer says the daily limit and what is left."""
    async with (
        start_v3(daily_quota=10, rate_limit_headers=True) as (_, api),
        api.get("contacts") as response,
    ):
        assert response.headers["X-RateLimit-Limit"] == "10"
        assert response.headers["X-RateLimit-Remaining"] == "9"


async def test_injected_5xx_and_after_commit_faults(start_v3: V3Starter) -> None:
    """`error_rate` answers 500/503 without effect; `error_after_commit_rate` applies the
    write and then answers 500."""
    async with start_v3(error_rate=1.0) as (sim, api):
        async with api.post("contact_lists", json={"name": "Lost"}) as response:
            assert response.status in (500, 503)
        assert sim.store.list_by_name("Lost") is None
    async with start_v3(error_after_commit_rate=1.0) as (sim, api):
        async with api.post("contact_lists", json={"name": "Kept"}) as response:
            assert response.status == 500
        assert sim.store.list_by_name("Kept") is not None


async def test_lost_answer_applies_the_write(start_v3: V3Starter) -> None:
    """`lose_answer_rate` applies a write and drops the connection before the answer."""
    async with start_v3(lose_answer_rate=1.0) as (sim, api):
        try:
            async with api.post("contact_lists", json={"name": "Silent"}) as response:
                await response.read()
            raise AssertionError("the answer should have been lost")
        except aiohttp.ClientError:
            pass
        assert sim.store.list_by_name("Silent") is not None
        assert sim.store.writes[-1].status == 0


async def test_stats_count_routes_and_statuses(v3: tuple[RunningSimulator, Any]) -> None:
    """`/_sim/stats` counts answers by route and status; DELETE resets it."""
    sim, api = v3
    await get_json(api, "contacts", email="a@example.com")
    await get_json(api, "contact_lists")
    async with open_session(sim, base=sim.origin) as session:
        async with session.get("/_sim/stats") as response:
            stats = await response.json()
        assert stats["by_route_status"]["GET contacts?email 200"] == 1
        assert stats["by_route_status"]["GET contact_lists 200"] == 1
        async with session.delete("/_sim/stats") as response:
            assert response.status == 204
        async with session.get("/_sim/stats") as response:
            assert (await response.json())["total"] == 0
