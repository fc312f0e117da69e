"""The V3 simulator's aiohttp application: the API under `/v3`, its authorization server
under `/oauth2/default/v1`, the device verification page `/activate`, and `/_sim/` hooks.

Request path, outermost first:

    stats -> write log -> faults -> gateway -> bearer -> throttle -> errors -> handler

`stats` counts every answer by route and status; `write log` records every write request to
`/v3` (method, path, endpoint, status) on the store; `faults` adds latency, 5xx answers,
resets and after-commit failures on `/v3/` routes; `gateway` answers any other path with
`403 {"message":"Forbidden"}` (§2.1); `bearer` checks the access token, its `contact_data`
scope and the application's state (401/403, §2.3); `throttle` applies 4/s and 10,000/day per
client id (429 `throttled` / `quota_exceeded`, §2.4); `errors` turns `ApiError`s and router
errors into the API's JSON bodies. Handlers parse, call one store method and render.

The throttle, the faults and the activity runner are the simulators' shared ones
(`_throttle`, `_faults`, `_activities`); this module gives them V3's settings and answers
(JSON bodies). Activities turn `processing` after their delay and are then processed at
`activity_rows_per_second`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from html import escape as html_escape
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from .._activities import ActivityRunner
from .._faults import ABORTED, WRITE_METHODS, Faults
from .._shared import Stats, json_bytes
from .._throttle import Throttle
from ._json import (
    ApiError,
    BadRequest,
    Forbidden,
    NotFound,
    decode_cursor,
    encode_cursor,
    is_uuid,
    parse_iso,
    read_truncated_import,
)
from .config import SimulatorConfig
from .oauth import OAuthError, TokenSet
from .render import Renderer
from .store import CONTACT_STATUSES, SUBRESOURCES, AccountStore, StoredActivity

__all__ = [
    "AUTH_PREFIX",
    "CONFIG_KEY",
    "STATE_KEY",
    "STORE_KEY",
    "SimulatorState",
    "create_app",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Where the authorization server lives, on the same listener as the API (§1.2).
AUTH_PREFIX = "/oauth2/default/v1/"
_ACTIVITY_STATES = ("processing", "completed", "cancelled", "failed", "timed_out")


# ---------------------------------------------------------------------------------------------
# Shared state.


@dataclass(slots=True)
class SimulatorState:
    """What the handlers share besides the store and the config.

    Attributes:
        renderer: The JSON writer.
        rng: The one seeded generator behind faults, delays and activity outcomes.
        stats: Request counters.
        throttle: Rate limits and quota, on the store's clock.
        faults: Latency and injected failures.
        activities: The background activity runner.
        route_labels: Route label (`contacts/{id}`) by aiohttp canonical path.
        endpoints: Write-log endpoint name by `METHOD canonical path`.
    """

    renderer: Renderer
    rng: random.Random
    stats: Stats
    throttle: Throttle
    faults: Faults
    activities: ActivityRunner
    route_labels: dict[str, str] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)


STORE_KEY = web.AppKey("v3_store", AccountStore)
CONFIG_KEY = web.AppKey("v3_config", SimulatorConfig)
STATE_KEY = web.AppKey("v3_state", SimulatorState)
CLIENT_KEY = web.RequestKey("client_id", str)


# ---------------------------------------------------------------------------------------------
# Bodies and parameters.


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json_bytes(body),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def _error(exc: ApiError, headers: Mapping[str, str] | None = None) -> web.Response:
    return _json(exc.body(), exc.status, headers)


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object of a request: 415 without `Content-Type: application/json` (§2.1),
    400 when malformed (a trailing comma, say, F14)."""
    if request.content_type != "application/json":
        raise _UnsupportedMediaType(request.content_type)
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"Malformed JSON: {exc}", "general.api.error") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object", "general.api.error")
    return body


class _UnsupportedMediaType(ApiError):
    status = 415
    default_key = "http.media_type.not_supported"

    def __init__(self, content_type: str) -> None:
        super().__init__(
            f"Content type '{content_type or 'none'}' is not supported; use application/json"
        )


def _csv(query: Mapping[str, str], name: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    values = [v for v in query.get(name, "").split(",") if v]
    if allowed is not None:
        bad = [v for v in values if v not in allowed]
        if bad:
            raise BadRequest(f"{name} has invalid values: {','.join(bad)}", "general.api.error")
    return values


def _limit(query: Mapping[str, str], maximum: int) -> int:
    text = query.get("limit", "50")
    try:
        limit = int(text)
    except ValueError:
        raise BadRequest("limit must be an integer", "general.api.error") from None
    if not 1 <= limit <= maximum:
        raise BadRequest(f"limit must be between 1 and {maximum}", "general.api.error")
    return limit


def _flag(query: Mapping[str, str], name: str) -> bool:
    return query.get(name, "false").lower() == "true"


def _page_query(request: web.Request) -> dict[str, str]:
    """The query of a collection GET; a `cursor` replaces it with the one it carries."""
    cursor = request.query.get("cursor")
    if cursor is None:
        return dict(request.query)
    params = decode_cursor(cursor)
    ttl = request.app[CONFIG_KEY].cursor_ttl
    issued = float(params.get("t", "0"))
    if ttl is not None and request.app[STORE_KEY].clock() - issued > ttl:
        raise BadRequest("The cursor has expired", "general.api.error")
    return params


def _links(
    request: web.Request, path: str, query: Mapping[str, str], next_key: str | None
) -> dict[str, Any] | None:
    """`_links` of a page: `next.href` is `/v3/<path>?cursor=…` (§3.2); on the last page
    `{}`, `null` or nothing (`empty_links`). `None` means leave `_links` out."""
    if next_key is not None:
        params = {k: v for k, v in query.items() if k not in ("cursor", "next", "t")}
        params["next"] = next_key
        params["t"] = repr(request.app[STORE_KEY].clock())
        cursor = encode_cursor(sorted(params.items()))
        return {"next": {"href": f"/v3/{path}?{urlencode({'cursor': cursor})}"}}
    empty = request.app[CONFIG_KEY].empty_links
    return {} if empty == "empty" else None


def _with_links(
    body: dict[str, Any], request: web.Request, links: dict[str, Any] | None
) -> dict[str, Any]:
    if links is not None:
        body["_links"] = links
    elif request.app[CONFIG_KEY].empty_links == "null":
        body["_links"] = None
    return body


# ---------------------------------------------------------------------------------------------
# Contacts (§3).


async def get_contacts(request: web.Request) -> web.Response:
    """`GET /v3/contacts`: search and cursor paging (§3.2)."""
    store, config = request.app[STORE_KEY], request.app[CONFIG_KEY]
    store.check_privilege("contacts:read")
    if len(request.query.getall("email", [])) > 1:
        raise BadRequest("Only one email address can be searched at a time", "general.api.error")
    query = _page_query(request)
    if "segment_id" in query:
        raise NotFound(f"Segment {query['segment_id']} not found", "segments.api.not_found")
    statuses = _csv(query, "status", CONTACT_STATUSES)
    include = _csv(query, "include", SUBRESOURCES)
    lists = _csv(query, "lists")
    if len(lists) > 25 or not all(is_uuid(i) for i in lists):
        raise BadRequest("lists must hold up to 25 list ids", "general.api.error")
    tags = _csv(query, "tags")
    if len(tags) > 50 or not all(is_uuid(i) for i in tags):
        raise BadRequest("tags must hold up to 50 tag ids", "general.api.error")
    _csv(
        query, "sms_status", ("all", "explicit", "unsubscribed", "pending_confirmation", "not_set")
    )
    limit = _limit(query, config.contacts_limit_max)
    ranges: dict[str, float] = {
        name: parse_iso(query[name], name)
        for name in (
            "updated_after",
            "updated_before",
            "created_after",
            "created_before",
            "optout_after",
            "optout_before",
        )
        if name in query
    }
    page = store.search_contacts(
        email=query.get("email"),
        statuses=statuses,
        lists=lists,
        tags=tags,
        ranges=ranges,
        after=query.get("next"),
        limit=limit,
    )
    renderer = request.app[STATE_KEY].renderer
    body: dict[str, Any] = {"contacts": [renderer.contact(c, include) for c in page.contacts]}
    if _flag(query, "include_count"):
        body["contacts_count"] = page.total
    query = {**query, "limit": str(limit)}
    return _json(_with_links(body, request, _links(request, "contacts", query, page.next_key)))


async def get_contact(request: web.Request) -> web.Response:
    """`GET /v3/contacts/{id}`: deleted contacts too, with `deleted_at` (§3.3)."""
    store = request.app[STORE_KEY]
    store.check_privilege("contacts:read")
    include = _csv(request.query, "include", SUBRESOURCES)
    contact = store.get_contact(request.match_info["contact_id"])
    return _json(request.app[STATE_KEY].renderer.contact(contact, include))


async def post_contact(request: web.Request) -> web.Response:
    """`POST /v3/contacts`: 201, or 409 for any existing email (§3.4)."""
    store = request.app[STORE_KEY]
    store.check_privilege("contacts:write")
    contact = store.create_contact(await _body(request))
    return _json(request.app[STATE_KEY].renderer.contact(contact, SUBRESOURCES), 201)


async def put_contact(request: web.Request) -> web.Response:
    """`PUT /v3/contacts/{id}`: the replace-on-PUT rules of §3.5."""
    app = request.app
    store, config, state = app[STORE_KEY], app[CONFIG_KEY], app[STATE_KEY]
    store.check_privilege("contacts:write")
    body = await _body(request)
    interleave = config.interleave_rate > 0 and state.rng.random() < config.interleave_rate
    contact = store.update_contact(request.match_info["contact_id"], body, interleave=interleave)
    return _json(state.renderer.contact(contact, SUBRESOURCES))


async def delete_contact(request: web.Request) -> web.Response:
    """`DELETE /v3/contacts/{id}`: 204; the contact is deleted and its lists stripped."""
    store = request.app[STORE_KEY]
    store.check_privilege("contacts:write")
    store.delete_contact(request.match_info["contact_id"])
    return web.Response(status=204)


async def sign_up_form(request: web.Request) -> web.Response:
    """`POST /v3/contacts/sign_up_form`: create-or-update with consent side effects (§3.6)."""
    app = request.app
    store, config, state = app[STORE_KEY], app[CONFIG_KEY], app[STATE_KEY]
    store.check_privilege("contacts:write")
    body = await _body(request)
    conflict = config.signup_conflict_rate > 0 and state.rng.random() < config.signup_conflict_rate
    contact_id, created = store.sign_up_form(body, conflict=conflict)
    action = config.signup_actions[0 if created else 1]
    return _json({"contact_id": contact_id, "action": action}, 201 if created else 200)


async def get_counts(request: web.Request) -> web.Response:
    """`GET /v3/contacts/counts`: consent counts (§3.7)."""
    store = request.app[STORE_KEY]
    store.check_privilege("contacts:read")
    counts = store.counts()
    if request.query.get("include") != "new_subscriber":
        counts.pop("new_subscriber")
    return _json(counts)


# ---------------------------------------------------------------------------------------------
# Lists (§4).


def _membership_query(query: Mapping[str, str]) -> str | None:
    which = query.get("include_membership_count")
    if which not in (None, "all", "active"):
        raise BadRequest("include_membership_count must be all or active", "general.api.error")
    return which


async def get_lists(request: web.Request) -> web.Response:
    """`GET /v3/contact_lists`: exact `name`, `status`, counts, cursor paging (§4.1)."""
    store, config = request.app[STORE_KEY], request.app[CONFIG_KEY]
    store.check_privilege("contacts:lists:read")
    query = _page_query(request)
    limit = _limit(query, config.lists_limit_max)
    status = query.get("status", config.lists_default_status)
    if status not in ("all", "active", "deleted"):
        raise BadRequest("status must be all, active or deleted", "general.api.error")
    which = _membership_query(query)
    rows = store.lists(status)
    if "name" in query:
        rows = [s for s in rows if s.name == query["name"]]
    total = len(rows)
    after = int(query.get("next", "0"))
    rows = [s for s in rows if s.seq > after]
    page = rows[:limit]
    renderer = request.app[STATE_KEY].renderer
    body: dict[str, Any] = {
        "lists": [
            renderer.contact_list(s, None if which is None else store.member_count(s.id, which))
            for s in page
        ]
    }
    if _flag(query, "include_count"):
        body["lists_count"] = total
    next_key = str(page[-1].seq) if len(rows) > limit else None
    query = {**query, "limit": str(limit)}
    return _json(_with_links(body, request, _links(request, "contact_lists", query, next_key)))


async def post_list(request: web.Request) -> web.Response:
    """`POST /v3/contact_lists`: 201, 409 on a taken name, the 1,000-list cap (§4.1)."""
    store = request.app[STORE_KEY]
    store.check_privilege("contacts:lists:write")
    stored = store.create_list(await _body(request))
    return _json(request.app[STATE_KEY].renderer.contact_list(stored), 201)


async def get_list(request: web.Request) -> web.Response:
    """`GET /v3/contact_lists/{id}`."""
    store = request.app[STORE_KEY]
    store.check_privilege("contacts:lists:read")
    which = _membership_query(request.query)
    stored = store.get_list(request.match_info["list_id"])
    count = None if which is None else store.member_count(stored.id, which)
    return _json(request.app[STATE_KEY].renderer.contact_list(stored, count))


async def put_list(request: web.Request) -> web.Response:
    """`PUT /v3/contact_lists/{id}`: rename."""
    store = request.app[STORE_KEY]
    store.check_privilege("contacts:lists:write")
    stored = store.update_list(request.match_info["list_id"], await _body(request))
    return _json(request.app[STATE_KEY].renderer.contact_list(stored))


async def delete_list(request: web.Request) -> web.Response:
    """`DELETE /v3/contact_lists/{id}`: 202, a `Location`, and an activity that removes the
    memberships (§4.1)."""
    store = request.app[STORE_KEY]
    store.check_privilege("contacts:lists:write")
    activity = store.delete_list(request.match_info["list_id"])
    return _activity_created(request, activity, 202)


# ---------------------------------------------------------------------------------------------
# Activities (§5).


def _activity_created(
    request: web.Request, activity: StoredActivity, status: int = 201
) -> web.Response:
    app = request.app
    state = app[STATE_KEY]
    app[STORE_KEY].decide_outcome(activity.id, state.rng.random())
    state.activities.schedule(activity.id)
    headers = {"Location": f"/v3/activities/{activity.id}"} if status == 202 else None
    return _json(state.renderer.activity(activity, brief=status == 202), status, headers)


async def post_json_import(request: web.Request) -> web.Response:
    """`POST /v3/activities/contacts_json_import`: bytes beyond `import_max_bytes` are
    dropped silently and the complete rows before the cut imported (§5.2)."""
    store, config = request.app[STORE_KEY], request.app[CONFIG_KEY]
    store.check_privilege("contacts:write")
    if request.content_type != "application/json":
        raise _UnsupportedMediaType(request.content_type)
    raw = await request.read()
    if len(raw) > config.import_max_bytes:
        body = read_truncated_import(raw[: config.import_max_bytes].decode("utf-8", "ignore"))
    else:
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"Malformed JSON: {exc}", "general.api.error") from None
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object", "general.api.error")
    return _activity_created(request, store.submit_json_import(body))


async def post_add_memberships(request: web.Request) -> web.Response:
    """`POST /v3/activities/add_list_memberships`: append only (§5.4)."""
    store = request.app[STORE_KEY]
    store.check_privilege("contacts:write")
    activity = store.submit_list_memberships(await _body(request), remove=False)
    return _activity_created(request, activity)


async def post_remove_memberships(request: web.Request) -> web.Response:
    """`POST /v3/activities/remove_list_memberships`: destructive, logged (§5.6)."""
    store = request.app[STORE_KEY]
    store.check_privilege("contacts:write")
    activity = store.submit_list_memberships(await _body(request), remove=True)
    return _activity_created(request, activity)


async def post_contact_delete(request: web.Request) -> web.Response:
    """`POST /v3/activities/contact_delete`: destructive, logged (§5.6)."""
    store = request.app[STORE_KEY]
    store.check_privilege("contacts:write")
    return _activity_created(request, store.submit_contact_delete(await _body(request)))


async def post_list_delete(request: web.Request) -> web.Response:
    """`POST /v3/activities/list_delete`: destructive, logged (§5.6)."""
    store = request.app[STORE_KEY]
    store.check_privilege("contacts:lists:write")
    return _activity_created(request, store.submit_list_delete(await _body(request)))


async def post_export(request: web.Request) -> web.Response:
    """`POST /v3/activities/contact_exports`: a CSV export activity."""
    store = request.app[STORE_KEY]
    store.check_privilege("contacts:write")
    return _activity_created(request, store.submit_export(await _body(request)))


async def get_export(request: web.Request) -> web.Response:
    """`GET /v3/contact_exports/{id}`: the CSV of a completed export (`text/csv`)."""
    store = request.app[STORE_KEY]
    store.check_privilege("contacts:write")
    text = store.export_csv(request.match_info["export_id"])
    return web.Response(text=text, content_type="text/csv")


async def get_activities(request: web.Request) -> web.Response:
    """`GET /v3/activities`: the last 10 days, newest first, `state` filter, cursor paging."""
    store = request.app[STORE_KEY]
    store.check_privilege("contacts:write")
    query = _page_query(request)
    limit = _limit(query, 500)
    state = query.get("state")
    if state is not None and state not in _ACTIVITY_STATES:
        raise BadRequest(f"state must be one of {', '.join(_ACTIVITY_STATES)}", "general.api.error")
    rows = store.activities(state)
    if "next" in query:
        below = int(query["next"])
        rows = [a for a in rows if a.seq < below]
    page = rows[:limit]
    next_key = str(page[-1].seq) if len(rows) > limit else None
    body = {"activities": request.app[STATE_KEY].renderer.activities(page)}
    query = {**query, "limit": str(limit)}
    return _json(_with_links(body, request, _links(request, "activities", query, next_key)))


async def get_activity(request: web.Request) -> web.Response:
    """`GET /v3/activities/{id}`: 404 once past the retention (§5.5)."""
    store = request.app[STORE_KEY]
    store.check_privilege("contacts:write")
    activity = store.get_activity(request.match_info["activity_id"])
    return _json(request.app[STATE_KEY].renderer.activity(activity))


async def get_account(request: web.Request) -> web.Response:
    """`GET /v3/account/summary`: the account's identity (`encoded_account_id`)."""
    store = request.app[STORE_KEY]
    return _json(
        {
            "encoded_account_id": store.account_id,
            "contact_email": "owner@example.com",
            "first_name": "Simulated",
            "last_name": "Owner",
            "organization_name": "CTCT V3 Simulator",
            "country_code": "US",
            "state_code": "MA",
            "time_zone_id": "America/New_York",
        }
    )


# ---------------------------------------------------------------------------------------------
# The authorization server (§1).


async def _oauth_params(request: web.Request) -> dict[str, str]:
    """Query and form parameters together (§1.3: CC's own example sends them in the query)."""
    params = dict(request.query)
    if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    return params


def _basic(request: web.Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, secret = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    return (user, secret) if sep else ("", "")


def _oauth_error(request: web.Request, exc: OAuthError) -> web.Response:
    status = exc.status or request.app[CONFIG_KEY].token_error_status
    return _json({"error": exc.error, "error_description": exc.description}, status)


def _token_throttled(request: web.Request) -> web.Response:
    config = request.app[CONFIG_KEY]
    body: dict[str, Any]
    if config.token_throttle_body == "okta":
        body = {
            "errorCode": "E0000047",
            "errorSummary": "API call exceeded rate limit due to too many requests.",
            "errorLink": "E0000047",
            "errorId": "sim" + request.app[STATE_KEY].rng.getrandbits(64).to_bytes(8).hex(),
            "errorCauses": [],
        }
    else:
        body = {"error_key": "throttled", "error_message": "Too Many Requests"}
    headers = {"Retry-After": "1"} if config.retry_after_header else None
    return _json(body, 429, headers)


async def post_token(request: web.Request) -> web.Response:
    """`POST /oauth2/default/v1/token`: every grant; 1 request/s per client (§1.9)."""
    auth = request.app[STORE_KEY].auth
    params = await _oauth_params(request)
    basic = _basic(request)
    client_id = basic[0] if basic else params.get("client_id", "")
    if not auth.allow_token_request(client_id):
        return _token_throttled(request)
    try:
        tokens = auth.token(params, basic)
    except OAuthError as exc:
        return _oauth_error(request, exc)
    return _json(tokens.as_json(), headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def post_device_authorize(request: web.Request) -> web.Response:
    """`POST /oauth2/default/v1/device/authorize`: device and user codes (§1.5)."""
    auth = request.app[STORE_KEY].auth
    params = await _oauth_params(request)
    try:
        client_id, _ = auth.client(params.get("client_id"), _basic(request))
        start = auth.start_device(client_id, params.get("scope"))
    except OAuthError as exc:
        return _oauth_error(request, exc)
    page = f"{_origin(request)}/activate"
    return _json(
        {
            "device_code": start.device_code,
            "user_code": start.user_code,
            "verification_uri": page,
            "verification_uri_complete": f"{page}?{urlencode({'user_code': start.user_code})}",
            "expires_in": start.expires_in,
            "interval": start.interval,
        }
    )


def _page(title: str, content: str, status: int = 200) -> web.Response:
    body = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html_escape(title)}</title>"
        f"</head><body><h1>{html_escape(title)}</h1>{content}</body></html>"
    )
    return web.Response(text=body, content_type="text/html", status=status)


def _decision_form(action: str, hidden: Mapping[str, str], visible_code: bool) -> str:
    fields = "".join(
        f"<input type='hidden' name='{html_escape(k)}' value='{html_escape(v)}'>"
        for k, v in hidden.items()
    )
    if visible_code:
        fields += "<label>Code <input name='user_code' autocomplete='off'></label>"
    return (
        f"<form method='post' action='{html_escape(action)}'>{fields}"
        "<button name='decision' value='approve'>Allow</button> "
        "<button name='decision' value='deny'>Deny</button></form>"
    )


async def get_activate(request: web.Request) -> web.Response:
    """`GET /activate`: the verification page where a person enters or confirms a user code."""
    code = request.query.get("user_code")
    hidden = {"user_code": code} if code else {}
    text = "<p>The CTCT V3 simulator asks: allow this device to use the account?</p>"
    if code:
        text += f"<p>Code: <strong>{html_escape(code)}</strong></p>"
    return _page("Activate your device", text + _decision_form("/activate", hidden, not code))


async def post_activate(request: web.Request) -> web.Response:
    """`POST /activate`: approve or deny a user code."""
    form = await request.post()
    code, decision = form.get("user_code"), form.get("decision")
    auth = request.app[STORE_KEY].auth
    try:
        if not isinstance(code, str) or decision not in ("approve", "deny"):
            raise KeyError("no code or decision")
        (auth.approve if decision == "approve" else auth.deny)(code)
    except KeyError:
        return _page("Unknown or expired code", "<p>Start again on the device.</p>", 400)
    done = "Device activated" if decision == "approve" else "Device denied"
    return _page(done, "<p>You can close this window.</p>")


def _authorize_params(source: Mapping[str, Any]) -> dict[str, str | None]:
    names = (
        "client_id",
        "redirect_uri",
        "response_type",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
    )
    return {n: v if isinstance(v := source.get(n), str) else None for n in names}


def _redirect(redirect_uri: str, params: Mapping[str, str | None]) -> web.Response:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    separator = "&" if "?" in redirect_uri else "?"
    return web.Response(status=302, headers={"Location": f"{redirect_uri}{separator}{query}"})


def _authorize_decision(request: web.Request, params: dict[str, str | None]) -> web.Response:
    auth = request.app[STORE_KEY].auth
    try:
        code = auth.authorize(
            client_id=params["client_id"],
            redirect_uri=params["redirect_uri"],
            response_type=params["response_type"],
            scope=params["scope"],
            code_challenge=params["code_challenge"],
            code_challenge_method=params["code_challenge_method"],
        )
    except OAuthError as exc:
        return _oauth_error(request, exc)
    redirect_uri = params["redirect_uri"] or ""  # a registered URI: authorize checked it
    return _redirect(redirect_uri, {"code": code, "state": params["state"]})


async def get_authorize(request: web.Request) -> web.Response:
    """`GET /oauth2/default/v1/authorize` (code and PKCE flows, §1.3-1.4): a consent page, or
    at once a redirect with the code (`auto_approve`)."""
    params = _authorize_params(request.query)
    if request.app[CONFIG_KEY].auto_approve:
        return _authorize_decision(request, params)
    hidden = {k: v for k, v in params.items() if v is not None}
    return _page("Authorize the application", _decision_form(request.path, hidden, False))


async def post_authorize(request: web.Request) -> web.Response:
    """`POST /oauth2/default/v1/authorize`: the consent page's answer."""
    form = await request.post()
    params = _authorize_params(form)
    if form.get("decision") == "approve":
        return _authorize_decision(request, params)
    uri = params["redirect_uri"]
    if uri not in request.app[CONFIG_KEY].redirect_uris or uri is None:
        return _page("Unknown redirect URI", "<p>The request is invalid.</p>", 400)
    return _redirect(uri, {"error": "access_denied", "state": params["state"]})


async def post_revoke(request: web.Request) -> web.Response:
    """`POST /oauth2/default/v1/revoke`: 200 whatever the token (RFC 7009, §1.10)."""
    if not request.app[CONFIG_KEY].revoke_enabled:
        raise web.HTTPNotFound()
    params = await _oauth_params(request)
    token = params.get("token")
    if token:
        request.app[STORE_KEY].auth.revoke(token)
    return web.Response(status=200)


# ---------------------------------------------------------------------------------------------
# Test hooks under /_sim/ (no auth; never under /v3).


async def get_stats(request: web.Request) -> web.Response:
    """`GET /_sim/stats`: request counters."""
    return _json(request.app[STATE_KEY].stats.as_json())


async def delete_stats(request: web.Request) -> web.Response:
    """`DELETE /_sim/stats`: reset the counters."""
    request.app[STATE_KEY].stats.reset()
    return web.Response(status=204)


async def get_writes(request: web.Request) -> web.Response:
    """`GET /_sim/writes`: every write request received (method, path, endpoint, status)."""
    writes = [w._asdict() for w in request.app[STORE_KEY].writes]
    return _json({"writes": writes})


async def post_device_decision(request: web.Request) -> web.Response:
    """`POST /_sim/device {"user_code", "decision": "approve"|"deny"}`: decide a user code."""
    body = await _body(request)
    auth = request.app[STORE_KEY].auth
    code, decision = body.get("user_code"), body.get("decision")
    if not isinstance(code, str) or decision not in ("approve", "deny"):
        raise BadRequest("user_code and decision (approve or deny) are required")
    try:
        (auth.approve if decision == "approve" else auth.deny)(code)
    except KeyError as exc:
        raise NotFound(str(exc), "sim.device.not_found") from None
    return web.Response(status=204)


async def post_tokens(request: web.Request) -> web.Response:
    """`POST /_sim/tokens {"scopes": "contact_data offline_access", "access_ttl": s}`: mint
    tokens without the device flow; the answer is a `/token` response."""
    body = await _body(request)
    scopes = body.get("scopes", "contact_data offline_access")
    ttl = body.get("access_ttl")
    if not isinstance(scopes, str) or not (ttl is None or isinstance(ttl, int | float)):
        raise BadRequest("scopes must be a string and access_ttl a number")
    try:
        tokens: TokenSet = request.app[STORE_KEY].auth.issue_tokens(scopes, access_ttl=ttl)
    except OAuthError as exc:
        return _oauth_error(request, exc)
    return _json(tokens.as_json())


async def post_revoke_all(request: web.Request) -> web.Response:
    """`POST /_sim/revoke`: revoke every token (the user withdrew the grant)."""
    request.app[STORE_KEY].auth.revoke_all()
    return web.Response(status=204)


# ---------------------------------------------------------------------------------------------
# Middlewares.


def _route_label(request: web.Request, labels: Mapping[str, str]) -> str:
    resource = request.match_info.route.resource
    pattern = labels.get(resource.canonical, "other") if resource is not None else "other"
    if pattern == "contacts" and request.method == "GET" and "email" in request.query:
        pattern = "contacts?email"
    return f"{request.method} {pattern}"


async def _dated(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer's `Date` is the store's clock (aiohttp's would be the machine's): the
    time a client reads off an answer is the time the account stamps its changes with."""
    response.headers["Date"] = formatdate(request.app[STORE_KEY].clock(), usegmt=True)


@web.middleware
async def stats_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer outside `/_sim/` by route and status."""
    if request.path.startswith("/_sim/"):
        return await handler(request)
    state = request.app[STATE_KEY]
    label = _route_label(request, state.route_labels)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        state.stats.record(label, str(exc.status))
        raise
    state.stats.record(label, "reset" if request.get(ABORTED) else str(response.status))
    return response


@web.middleware
async def write_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record every write request to `/v3/` on the store, whatever its outcome."""
    if request.method not in WRITE_METHODS or not request.path.startswith("/v3/"):
        return await handler(request)
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else request.path
    endpoint = request.app[STATE_KEY].endpoints.get(f"{request.method} {canonical}", "other")
    status = 0
    try:
        response = await handler(request)
        status = 0 if request.get(ABORTED) else response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        request.app[STORE_KEY].log_write(request.method, request.path, endpoint, status)


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Seeded latency, 500/503 answers and resets before the handler (no effect), and
    after-commit failures (applied, then 500 or no answer), on `/v3/` routes (see `Faults`)."""
    if not request.path.startswith("/v3/"):
        return await handler(request)
    app = request.app
    state = app[STATE_KEY]
    return await state.faults.serve(
        request,
        handler,
        store=app[STORE_KEY],
        server_error=_server_error,
        route=_route_label(request, state.route_labels),
    )


def _server_error(status: int) -> web.Response:
    if status == 500:
        return _json([{"error_key": "server_error", "error_message": "Internal server error"}], 500)
    return _json(
        [{"error_key": "service_unavailable", "error_message": "Service unavailable"}], 503
    )


_OPEN_PREFIXES = ("/v3/", AUTH_PREFIX, "/_sim/", "/activate")


@web.middleware
async def gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Paths outside `/v3/`, the authorization server and the hooks: the API gateway's
    `403 {"message":"Forbidden"}` (§2.1)."""
    if not request.path.startswith(_OPEN_PREFIXES):
        return _json({"message": "Forbidden"}, 403)
    return await handler(request)


def _unauthorized(config: SimulatorConfig) -> web.Response:
    item = {"error_key": "unauthorized", "error_message": "Unauthorized"}
    return _json(item if config.unauthorized_shape == "object" else [item], 401)


@web.middleware
async def bearer_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`Authorization: Bearer <access token>` on `/v3/`: 401 when missing, unknown, revoked or
    expired; 403 without `contact_data` or for a deactivated application (§1.11, §2.3)."""
    if not request.path.startswith("/v3/"):
        return await handler(request)
    app = request.app
    config, store = app[CONFIG_KEY], app[STORE_KEY]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    grant = store.auth.access_grant(token.strip()) if scheme.lower() == "bearer" else None
    if grant is None:
        return _unauthorized(config)
    if config.deactivated or store.auth.deactivated:
        return _error(Forbidden("The application is deactivated", "forbidden"))
    if "contact_data" not in grant.scopes:
        return _error(Forbidden("The access token lacks the contact_data scope", "forbidden"))
    request[CLIENT_KEY] = grant.client_id
    return await handler(request)


@web.middleware
async def throttle_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """4/s and 10,000/day per client id: 429 with the object bodies of §2.2."""
    client_id = request.get(CLIENT_KEY)
    if client_id is None:
        return await handler(request)
    app = request.app
    config, state = app[CONFIG_KEY], app[STATE_KEY]
    throttle = state.throttle
    refusal = throttle.refusal(client_id, _route_label(request, state.route_labels))
    headers: dict[str, str] = {}
    if config.rate_limit_headers and throttle.quota is not None:
        headers["X-RateLimit-Limit"] = str(throttle.quota.limit)
        headers["X-RateLimit-Remaining"] = str(throttle.quota.remaining(client_id))
    if refusal is None:
        response = await handler(request)
        response.headers.update(headers)
        return response
    if config.retry_after_header:
        if refusal == "rate" or throttle.quota is None:
            headers["Retry-After"] = "1"
        else:
            headers["Retry-After"] = str(math.ceil(throttle.quota.seconds_to_reset()))
    if refusal == "rate":
        body = {"error_key": "throttled", "error_message": "Too Many Requests"}
    else:
        body = {"error_key": "quota_exceeded", "error_message": "Limit Exceeded"}
    return _json(body, 429, headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`ApiError`s and router errors as the API's JSON bodies."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc)
    except web.HTTPNotFound:
        return _error(NotFound(f"The resource {request.path} was not found", "not_found"))
    except web.HTTPMethodNotAllowed:
        item = {"error_key": "method_not_allowed", "error_message": "Method not allowed"}
        return _json([item], 405)
    except web.HTTPRequestEntityTooLarge:
        item = {"error_key": "payload_too_large", "error_message": "Request Entity Too Large"}
        return _json([item], 413)


# ---------------------------------------------------------------------------------------------
# The factory.


async def _run_activities(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[STATE_KEY].activities.run(), name="ctct-v3-activities")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


#: (method, path under the origin, handler, stats label, write-log endpoint name).
_ROUTES: tuple[tuple[str, str, Handler, str, str], ...] = (
    ("GET", "/v3/contacts", get_contacts, "contacts", ""),
    ("POST", "/v3/contacts", post_contact, "contacts", "contacts.create"),
    ("GET", "/v3/contacts/counts", get_counts, "contacts/counts", ""),
    (
        "POST",
        "/v3/contacts/sign_up_form",
        sign_up_form,
        "contacts/sign_up_form",
        "contacts.sign_up_form",
    ),
    ("GET", "/v3/contacts/{contact_id}", get_contact, "contacts/{id}", ""),
    ("PUT", "/v3/contacts/{contact_id}", put_contact, "contacts/{id}", "contacts.update"),
    ("DELETE", "/v3/contacts/{contact_id}", delete_contact, "contacts/{id}", "contacts.delete"),
    ("GET", "/v3/contact_lists", get_lists, "contact_lists", ""),
    ("POST", "/v3/contact_lists", post_list, "contact_lists", "contact_lists.create"),
    ("GET", "/v3/contact_lists/{list_id}", get_list, "contact_lists/{id}", ""),
    ("PUT", "/v3/contact_lists/{list_id}", put_list, "contact_lists/{id}", "contact_lists.update"),
    (
        "DELETE",
        "/v3/contact_lists/{list_id}",
        delete_list,
        "contact_lists/{id}",
        "contact_lists.delete",
    ),
    (
        "POST",
        "/v3/activities/contacts_json_import",
        post_json_import,
        "activities/contacts_json_import",
        "activities.contacts_json_import",
    ),
    (
        "POST",
        "/v3/activities/add_list_memberships",
        post_add_memberships,
        "activities/add_list_memberships",
        "activities.add_list_memberships",
    ),
    (
        "POST",
        "/v3/activities/remove_list_memberships",
        post_remove_memberships,
        "activities/remove_list_memberships",
        "activities.remove_list_memberships",
    ),
    (
        "POST",
        "/v3/activities/contact_delete",
        post_contact_delete,
        "activities/contact_delete",
        "activities.contact_delete",
    ),
    (
        "POST",
        "/v3/activities/list_delete",
        post_list_delete,
        "activities/list_delete",
        "activities.list_delete",
    ),
    (
        "POST",
        "/v3/activities/contact_exports",
        post_export,
        "activities/contact_exports",
        "activities.contact_exports",
    ),
    ("GET", "/v3/activities", get_activities, "activities", ""),
    ("GET", "/v3/activities/{activity_id}", get_activity, "activities/{id}", ""),
    ("GET", "/v3/contact_exports/{export_id}", get_export, "contact_exports/{id}", ""),
    ("GET", "/v3/account/summary", get_account, "account/summary", ""),
    ("GET", AUTH_PREFIX + "authorize", get_authorize, "oauth2 authorize", ""),
    ("POST", AUTH_PREFIX + "authorize", post_authorize, "oauth2 authorize", ""),
    ("POST", AUTH_PREFIX + "device/authorize", post_device_authorize, "oauth2 device", ""),
    ("POST", AUTH_PREFIX + "token", post_token, "oauth2 token", ""),
    ("POST", AUTH_PREFIX + "revoke", post_revoke, "oauth2 revoke", ""),
    ("GET", "/activate", get_activate, "activate", ""),
    ("POST", "/activate", post_activate, "activate", ""),
)


def create_app(config: SimulatorConfig, store: AccountStore | None = None) -> web.Application:
    """Build the V3 simulator application.

    Args:
        config: Settings; see `SimulatorConfig`.
        store: The account to serve; a new empty one by default. A given store is rebound to
            `config`, and its unfinished activities are run to the end.

    Returns:
        An `aiohttp.web.Application`; the store, config and shared state are under
        `STORE_KEY`, `CONFIG_KEY` and `STATE_KEY`. The activity runner starts and stops
        with the app.
    """
    if store is None:
        store = AccountStore(config)
    else:
        store.config = config
    rng = random.Random(config.seed)
    state = SimulatorState(
        renderer=Renderer(mixed=config.mixed_timestamps),
        rng=rng,
        stats=Stats(),
        throttle=Throttle(
            rate=config.rps,
            quota=config.daily_quota,
            endpoint_rates=config.endpoint_rps,
            # The store's clock: a frozen fake refuses the 5th request of a second every
            # time, and moving it past 00:00 UTC resets the quota.
            bucket_clock=store.clock,
            day_clock=store.clock,
        ),
        faults=Faults.from_config(
            rng,
            config,
            route_error_rates=config.route_error_rates,
            error_after_commit_rate=config.error_after_commit_rate,
        ),
        activities=ActivityRunner(
            store,
            rng,
            delay=config.activity_delay,
            jitter=config.activity_jitter,
            rows_per_second=config.activity_rows_per_second,
            fail_unfinished=config.unfinished_activities == "fail",
        ),
    )
    # Room for bodies over the import limit: their excess is dropped, not refused (§5.2).
    max_size = max(4 * config.import_max_bytes, 16 * 1024 * 1024)
    app = web.Application(
        middlewares=[
            stats_middleware,
            write_log_middleware,
            fault_middleware,
            gateway_middleware,
            bearer_middleware,
            throttle_middleware,
            errors_middleware,
        ],
        client_max_size=max_size,
    )
    app[STORE_KEY] = store
    app[CONFIG_KEY] = config
    app[STATE_KEY] = state
    app.cleanup_ctx.append(_run_activities)
    app.on_response_prepare.append(_dated)
    for method, path, handler, label, endpoint in _ROUTES:
        route = app.router.add_route(method, path, handler)
        if route.resource is not None:
            state.route_labels[route.resource.canonical] = label
            if endpoint:
                state.endpoints[f"{method} {route.resource.canonical}"] = endpoint
    app.router.add_get("/_sim/stats", get_stats, allow_head=False)
    app.router.add_delete("/_sim/stats", delete_stats)
    app.router.add_get("/_sim/writes", get_writes, allow_head=False)
    app.router.add_post("/_sim/device", post_device_decision)
    app.router.add_post("/_sim/tokens", post_tokens)
    app.router.add_post("/_sim/revoke", post_revoke_all)
    return app
