"""The v1 simulator's aiohttp application: routes and middlewares. The activity runner,
the throttle and the faults are the simulators' shared ones (`_activities`, `_throttle`,
`_faults`); this module gives them v1's settings and answers (HTML error pages).

Request path, outermost first:

    stats -> https-only -> faults -> auth -> throttle -> errors -> handler

`stats` counts every answer by route pattern and status; `https-only` refuses plain http when
TLS is on (§2.1); `faults` adds latency, 5xx answers and connection resets on `/ws/` routes;
`auth` checks Basic credentials (§2); `throttle` applies the per-key rate limit and daily quota
(§7); `errors` turns store refusals, 404 and 405 into the API's HTML error pages (§8.2; an
unsupported method is 415, §1.4). Handlers only parse, call one `AccountStore` method, and
render with `_xml.Renderer`. Activities turn `RUNNING` halfway through their delay and
are applied at its end, all rows at once (a chunk at a time).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import math
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from html import escape as html_escape
from itertools import islice
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.web_request import FileField

from .._activities import ActivityRunner
from .._faults import ABORTED, Faults
from .._shared import Stats
from .._throttle import Throttle
from ._xml import FeedLinks, Renderer, XmlBodyError, read_contact, read_list
from .config import SimulatorConfig
from .store import SYSTEM_LISTS, AccountStore, BadRequest, Forbidden, StoredList, StoreError

__all__ = ["CONFIG_KEY", "STATE_KEY", "STORE_KEY", "SimulatorState", "create_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ATOM_TYPE = "application/atom+xml;charset=UTF-8"
_HTML_TYPE = "text/html;charset=utf-8"
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_ISO_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


# ---------------------------------------------------------------------------------------------
# Error pages (§8.2): HTML, never XML or JSON.


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """A Tomcat-style error page, as the real server sent (`HTTP Status 401 - …`, P31)."""
    reason = html_escape(f"HTTP Status {status} - {message}")
    body = (
        "<html><head><title>Apache Tomcat/6.0.20 - Error report</title></head>"
        f"<body><h1>{reason}</h1></body></html>"
    )
    return web.Response(
        status=status, text=body, headers={"Content-Type": _HTML_TYPE, **(headers or {})}
    )


def _apache_forbidden(path: str) -> web.Response:
    # The body the QA engineer quoted for the service document without its slash (P3).
    body = (
        '<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n'
        "<html><head>\n<title>403 Forbidden</title>\n</head><body>\n<h1>Forbidden</h1>\n"
        f"<p>You don't have permission to access {html_escape(path)}\non this server.</p>\n"
        "</body></html>\n"
    )
    return web.Response(status=403, text=body, headers={"Content-Type": _HTML_TYPE})


# ---------------------------------------------------------------------------------------------
# Shared state.


@dataclass(slots=True)
class SimulatorState:
    """Everything the handlers share besides the store and the config.

    Attributes:
        renderer: The XML writer for this account.
        rng: The one seeded generator behind faults, delays and activity failures.
        stats: Request counters.
        throttle: Rate limit and quota.
        faults: Latency and injected failures.
        activities: The background activity runner.
        route_labels: Route pattern (`contacts/{id}`) by aiohttp canonical path, for stats.
        accepted_authorization: The last `Authorization` header that passed, to skip decoding.
    """

    renderer: Renderer
    rng: random.Random
    stats: Stats
    throttle: Throttle
    faults: Faults
    activities: ActivityRunner
    route_labels: dict[str, str] = field(default_factory=dict)
    accepted_authorization: str = ""


STORE_KEY = web.AppKey("store", AccountStore)
CONFIG_KEY = web.AppKey("config", SimulatorConfig)
STATE_KEY = web.AppKey("state", SimulatorState)
API_KEY = web.RequestKey("api_key", str)


# ---------------------------------------------------------------------------------------------
# Paging (§1.3): opaque tokens that encode the last key of the previous page.

_TOKEN_MASK = 0x5F3A_9C1D
_TOKEN_RE = re.compile(r"([0-9a-z]+)-([0-9a-z]+)")


def _b36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


def encode_token(key: int) -> str:
    """An opaque `next` token for a page that continues after `key`."""
    check = (key * 2654435761 + 97) % 1_679_609
    return f"{_b36(key ^ _TOKEN_MASK)}-{_b36(check)}"


def decode_token(token: str) -> int:
    """The key inside a `next` token.

    Raises:
        BadRequest: Not a token this simulator made.
    """
    match = _TOKEN_RE.fullmatch(token)
    if match is not None:
        key = int(match.group(1), 36) ^ _TOKEN_MASK
        if key >= 0 and match.group(2) == _b36((key * 2654435761 + 97) % 1_679_609):
            return key
    raise BadRequest(f"Invalid next token: {token}")


def _page(ids: Iterable[int], size: int) -> tuple[list[int], int | None]:
    """Cut one page from ids; returns the page and the key to continue after (or `None`)."""
    page = list(islice(ids, size + 1))
    if len(page) > size:
        return page[:size], page[size - 1]
    return page, None


def _links(request: web.Request, path: str, next_key: int | None) -> FeedLinks:
    params = [(k, v) for k, v in request.query.items() if k != "next"]
    first = path + ("?" + urlencode(params) if params else "")
    next_href = None
    if next_key is not None:
        next_href = path + "?" + urlencode([*params, ("next", encode_token(next_key))])
    return FeedLinks(first=first, current=request.raw_path, next=next_href)


def _below(request: web.Request) -> int | None:
    token = request.query.get("next")
    return None if token is None else decode_token(token)


# ---------------------------------------------------------------------------------------------
# Handlers.


def _xml_response(body: bytes, status: int = 200, location: str | None = None) -> web.Response:
    headers = {"Content-Type": _ATOM_TYPE}
    if location is not None:
        headers["Location"] = location
    return web.Response(status=status, body=body, headers=headers)


def _require_atom(request: web.Request) -> None:
    if request.content_type != "application/atom+xml":
        raise web.HTTPUnsupportedMediaType(text="Content-Type must be application/atom+xml")


def _location(request: web.Request, uri: str) -> str | None:
    return uri if request.app[CONFIG_KEY].location_headers else None


async def service_document(request: web.Request) -> web.Response:
    """`GET /ws/customers/{u}/`: the APP service document."""
    body = request.app[STATE_KEY].renderer.service_document()
    return web.Response(
        body=body, headers={"Content-Type": "application/atomsvc+xml;charset=UTF-8"}
    )


async def service_without_slash(request: web.Request) -> web.Response:
    """`/ws/customers/{u}` without the trailing slash: Apache's 403 page (§2.2, P3)."""
    return _apache_forbidden(request.path)


async def get_contacts(request: web.Request) -> web.Response:
    """`GET contacts`: the paged collection, an `?email=` search, or `?updatedsince=`."""
    store, config = request.app[STORE_KEY], request.app[CONFIG_KEY]
    renderer = request.app[STATE_KEY].renderer
    query = request.query
    now = store.now()
    path = renderer.base_path + "contacts"
    emails = query.getall("email", [])
    if emails:
        if len(emails) > config.max_search_emails:
            raise BadRequest(f"At most {config.max_search_emails} email parameters are allowed")
        found = store.search(emails)
        if not found and config.search_miss_500:
            return error_response(500, "Internal Server Error")
        links = FeedLinks(first=path, current=request.raw_path)
        return _xml_response(renderer.contacts_feed(found, links, now))
    below = _below(request)
    since = query.get("updatedsince")
    ids: Iterator[int]
    if since is not None:
        if not _ISO_RE.fullmatch(since):
            raise BadRequest("updatedsince must look like 2008-07-23T14:21:06.407Z")
        list_id = query.get("listid")
        if list_id is not None and not list_id.isdigit():
            raise BadRequest(f"Invalid listid: {list_id}")
        changed = store.updated_since(
            since,
            list_id=int(list_id) if list_id is not None else None,
            list_type=query.get("listtype"),
        )
        ids = iter(changed if below is None else [i for i in changed if i < below])
    else:
        ids = store.contact_ids_desc(below)
    page, next_key = _page(ids, config.page_size)
    contacts = [store.get_contact(i) for i in page]
    return _xml_response(renderer.contacts_feed(contacts, _links(request, path, next_key), now))


async def post_contact(request: web.Request) -> web.Response:
    """`POST contacts`: 201 with the new entry, 409 on an existing email, 400 without lists."""
    _require_atom(request)
    store, renderer = request.app[STORE_KEY], request.app[STATE_KEY].renderer
    contact = store.create_contact(read_contact(await request.read()))
    body = renderer.contact_entry(contact, store.now())
    return _xml_response(body, 201, _location(request, renderer.contact_uri(contact.id)))


async def get_contact(request: web.Request) -> web.Response:
    """`GET contacts/{id}`: the full entry."""
    store = request.app[STORE_KEY]
    contact = store.get_contact(int(request.match_info["contact_id"]))
    return _xml_response(request.app[STATE_KEY].renderer.contact_entry(contact, store.now()))


async def put_contact(request: web.Request) -> web.Response:
    """`PUT contacts/{id}`: replace the contact, memberships included; 204."""
    _require_atom(request)
    store = request.app[STORE_KEY]
    contact_id = int(request.match_info["contact_id"])
    store.get_contact(contact_id)  # 404 before 400, as for any unknown resource
    store.update_contact(contact_id, read_contact(await request.read()))
    return web.Response(status=204)


async def delete_contact(request: web.Request) -> web.Response:
    """`DELETE contacts/{id}`: opt-out to Do Not Mail; 204."""
    request.app[STORE_KEY].opt_out(int(request.match_info["contact_id"]))
    return web.Response(status=204)


def _list_ref(request: web.Request) -> int | str:
    raw = request.match_info["list_id"]
    if raw in SYSTEM_LISTS:
        return raw
    if raw.isdigit():
        request.app[STORE_KEY].get_list(int(raw))
        return int(raw)
    raise web.HTTPNotFound()


def _user_list_ref(request: web.Request) -> int:
    ref = _list_ref(request)
    if isinstance(ref, str):
        # [U] §5.2: the doc suggests 403 for writes to a system list.
        raise Forbidden("System lists cannot be changed")
    return ref


async def get_lists(request: web.Request) -> web.Response:
    """`GET lists`: system lists first, then user lists by id, 50 per page."""
    store, config = request.app[STORE_KEY], request.app[CONFIG_KEY]
    renderer = request.app[STATE_KEY].renderer
    below = _below(request)
    items: list[tuple[StoredList | str, int | None]] = []
    size = config.page_size
    if below is None:
        items.extend((name, None) for name in SYSTEM_LISTS)
        after = 0
    else:
        after = below
    user_lists = [s for s in store.lists() if s.id > after]
    room = max(size - len(items), 0)
    chosen = user_lists[:room]
    items.extend((s, store.member_count(s.id)) for s in chosen)
    next_key = chosen[-1].id if len(user_lists) > room and chosen else None
    links = _links(request, renderer.base_path + "lists", next_key)
    return _xml_response(renderer.lists_feed(items, links, store.now()))


async def post_list(request: web.Request) -> web.Response:
    """`POST lists`: 201 with the new list, 409 on a duplicate name."""
    _require_atom(request)
    store, renderer = request.app[STORE_KEY], request.app[STATE_KEY].renderer
    body = read_list(await request.read())
    if not body.name:
        raise BadRequest("The list must have a Name")
    list_id = store.create_list(
        body.name, sort_order=body.sort_order, opt_in_default=bool(body.opt_in_default)
    )
    created = renderer.created_list(store.get_list(list_id), store.now())
    return _xml_response(created, 201, _location(request, renderer.list_uri(list_id)))


async def get_list(request: web.Request) -> web.Response:
    """`GET lists/{id}` (user or system list)."""
    store, renderer = request.app[STORE_KEY], request.app[STATE_KEY].renderer
    ref = _list_ref(request)
    if isinstance(ref, str):
        return _xml_response(renderer.list_entry(ref, None, store.now()))
    stored = store.get_list(ref)
    return _xml_response(renderer.list_entry(stored, store.member_count(ref), store.now()))


async def put_list(request: web.Request) -> web.Response:
    """`PUT lists/{id}`: rename or re-rank; 204."""
    _require_atom(request)
    store = request.app[STORE_KEY]
    list_id = _user_list_ref(request)
    body = read_list(await request.read())
    if not body.name:
        raise BadRequest("The list must have a Name")
    store.update_list(
        list_id, name=body.name, sort_order=body.sort_order, opt_in_default=body.opt_in_default
    )
    return web.Response(status=204)


async def delete_list(request: web.Request) -> web.Response:
    """`DELETE lists/{id}`; 204."""
    request.app[STORE_KEY].delete_list(_user_list_ref(request))
    return web.Response(status=204)


async def get_members(request: web.Request) -> web.Response:
    """`GET lists/{id}/members`: `ContactListMember` entries, newest first, 50 per page."""
    store, config = request.app[STORE_KEY], request.app[CONFIG_KEY]
    renderer = request.app[STATE_KEY].renderer
    ref = _list_ref(request)
    below = _below(request)
    ids = store.member_ids_desc(ref)
    if below is not None:
        ids = [i for i in ids if i < below]
    page, next_key = _page(iter(ids), config.page_size)
    contacts = [store.get_contact(i) for i in page]
    links = _links(request, f"{renderer.base_path}lists/{ref}/members", next_key)
    return _xml_response(renderer.members_feed(ref, contacts, links, store.now()))


async def get_activities(request: web.Request) -> web.Response:
    """`GET activities`: newest first, 50 per page."""
    store, config = request.app[STORE_KEY], request.app[CONFIG_KEY]
    renderer = request.app[STATE_KEY].renderer
    below = _below(request)
    by_seq = {a.seq: a for a in store.activities_desc()}
    page, next_key = _page((s for s in by_seq if below is None or s < below), config.page_size)
    links = _links(request, renderer.base_path + "activities", next_key)
    body = renderer.activities_feed([by_seq[s] for s in page], links, store.now())
    return _xml_response(body)


async def post_activity(request: web.Request) -> web.Response:
    """`POST activities`: a form with `activityType`, `data` and repeated `lists` (§6.2)."""
    if request.content_type not in _FORM_TYPES:
        raise web.HTTPUnsupportedMediaType(text="Content-Type must be a form")
    app = request.app
    store, config, state = app[STORE_KEY], app[CONFIG_KEY], app[STATE_KEY]
    try:
        form = await request.post()
    except ValueError as exc:
        raise BadRequest(f"Malformed form: {exc}") from None
    activity_type = form.get("activityType")
    raw_data = form.get("data")
    data: str | None
    if raw_data is None or isinstance(raw_data, str):
        data = raw_data
    else:  # a multipart file part
        raw = raw_data.file.read() if isinstance(raw_data, FileField) else bytes(raw_data)
        try:
            data = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("The data must be UTF-8") from None
    lists = [v for v in form.getall("lists", []) if isinstance(v, str)]
    if not isinstance(activity_type, str):
        raise BadRequest("The activityType parameter is required")
    fail = config.activity_error_rate > 0 and state.rng.random() < config.activity_error_rate
    activity = store.submit_activity(activity_type, data, lists, fail=fail)
    state.activities.schedule(activity.id)
    body = state.renderer.activity_entry(activity, store.now())
    return _xml_response(body, 201, _location(request, state.renderer.activity_uri(activity.id)))


async def get_activity(request: web.Request) -> web.Response:
    """`GET activities/{id}`."""
    store = request.app[STORE_KEY]
    activity = store.get_activity(request.match_info["activity_id"])
    return _xml_response(request.app[STATE_KEY].renderer.activity_entry(activity, store.now()))


async def get_stats(request: web.Request) -> web.Response:
    """`GET /_sim/stats`: request counters as JSON (no auth; outside `/ws/`)."""
    return web.json_response(request.app[STATE_KEY].stats.as_json())


async def delete_stats(request: web.Request) -> web.Response:
    """`DELETE /_sim/stats`: reset the counters."""
    request.app[STATE_KEY].stats.reset()
    return web.Response(status=204)


# ---------------------------------------------------------------------------------------------
# Middlewares.


def _route_label(request: web.Request, labels: dict[str, str]) -> str:
    resource = request.match_info.route.resource
    pattern = labels.get(resource.canonical, "other") if resource is not None else "other"
    if pattern == "contacts" and request.method == "GET":
        if "email" in request.query:
            pattern = "contacts?email"
        elif "updatedsince" in request.query:
            pattern = "contacts?updatedsince"
    return f"{request.method} {pattern}"


@web.middleware
async def stats_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer outside `/_sim/` by route pattern and status."""
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
async def https_only_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With TLS on, refuse every plain-http request: credentials travel over https only (§2.1)."""
    config = request.app[CONFIG_KEY]
    if config.tls and not request.secure:
        status = config.plain_http_status
        return error_response(
            status, "HTTPS is required: Basic authentication over http is rejected"
        )
    return await handler(request)


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Seeded latency, 500/503 answers, connection resets and lost answers (see `Faults`),
    on `/ws/` routes only; the 5xx answers are the API's HTML error pages."""
    if not request.path.startswith("/ws/"):
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
    return error_response(
        status, "Internal Server Error" if status == 500 else "Service Unavailable"
    )


def _credentials(header: str) -> tuple[str, str, str] | None:
    """(api key, username, password) from a Basic header, or `None`."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    key, _, username = user.partition("%")
    return key, username, password


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP Basic with user `{api_key}%{username}` (§2.1); the path must name that account."""
    if not request.path.startswith("/ws/") or request.match_info.route.name == "no_slash":
        return await handler(request)
    config, state = request.app[CONFIG_KEY], request.app[STATE_KEY]
    challenge = {"WWW-Authenticate": f'Basic realm="{config.realm}"'}
    fold = str.casefold if config.username_case_insensitive else str
    header = request.headers.get("Authorization", "")
    username = config.username
    # The credentials are fixed per app: the exact header accepted last time needs no decoding.
    if not header or header != state.accepted_authorization:
        credentials = _credentials(header)
        if credentials is None:
            return error_response(401, "This request requires HTTP authentication", challenge)
        key, username, password = credentials
        valid = (
            _same(key, config.api_key)
            & _same(fold(username), fold(config.username))
            & _same(password, config.password)
        )
        if not valid:
            # Echo only the username part: the key and the password never appear anywhere.
            message = f"Unable to authenticate user {username}".rstrip()
            return error_response(401, message, challenge)
        state.accepted_authorization = header
    segments = request.path.split("/")
    path_user = segments[3] if len(segments) > 3 else ""
    if fold(path_user) != fold(config.username):
        status = config.username_mismatch_status
        if status == 401:
            return error_response(401, f"Unable to authenticate user {username}", challenge)
        return error_response(403, "Access to this account is forbidden")
    request[API_KEY] = config.api_key
    return await handler(request)


@web.middleware
async def throttle_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Per-key rate limit and daily quota (§7): 403 (or 429/503) with a text explanation."""
    key = request.get(API_KEY)
    if key is None:
        return await handler(request)
    refusal = request.app[STATE_KEY].throttle.refusal(key)
    if refusal is None:
        return await handler(request)
    config = request.app[CONFIG_KEY]
    headers = {}
    if config.retry_after is not None:
        headers["Retry-After"] = str(math.ceil(config.retry_after))
    if refusal == "rate":
        message = (
            "Your API requests are currently being refused: the account associated with this "
            "request is over its queries-per-second rate limit"
        )
    else:
        message = "The account associated with this request is over its daily quota"
    return error_response(config.throttle_status, message, headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Store refusals and router errors as the API's HTML pages; 405 becomes 415 (§1.4)."""
    try:
        return await handler(request)
    except StoreError as exc:
        return error_response(exc.status, exc.message)
    except XmlBodyError as exc:
        return error_response(400, str(exc))
    except web.HTTPMethodNotAllowed:
        return error_response(415, f"Method {request.method} is not supported by this resource")
    except web.HTTPUnsupportedMediaType as exc:
        return error_response(415, exc.text or "Unsupported Media Type")
    except web.HTTPNotFound:
        return error_response(404, f"The requested resource ({request.path}) is not available")
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "Request Entity Too Large")


# ---------------------------------------------------------------------------------------------
# The factory.


async def _run_activities(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[STATE_KEY].activities.run(), name="ctct-sim-activities")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(config: SimulatorConfig, store: AccountStore | None = None) -> web.Application:
    """Build the simulator application.

    Args:
        config: Settings; see `SimulatorConfig`.
        store: The account to serve. A new empty one by default. A given store is rebound to
            `config` (its semantic settings follow the app's).

    Returns:
        An `aiohttp.web.Application`; the store, config and shared state are under `STORE_KEY`,
        `CONFIG_KEY` and `STATE_KEY`. The activity runner starts and stops with the app.
    """
    if store is None:
        store = AccountStore(config)
    else:
        store.config = config
    rng = random.Random(config.seed)
    state = SimulatorState(
        renderer=Renderer(
            config.username,
            config.id_host,
            raw_ampersand_in_links=config.raw_ampersand_in_links,
            bare_list_entry=config.bare_list_entry,
        ),
        rng=rng,
        stats=Stats(),
        throttle=Throttle(
            rate=config.rate_limit,
            burst=config.effective_burst,
            quota=config.daily_quota,
            # A real-time bucket: the store's clock may be a frozen fake in tests.
            bucket_clock=time.monotonic,
            day_clock=store.clock,
        ),
        faults=Faults.from_config(
            rng,
            config,
            latency_lognormal=config.latency_lognormal,
            route_lose_rates=config.route_lose_rates,
        ),
        activities=ActivityRunner(
            store,
            rng,
            delay=config.activity_delay,
            jitter=config.activity_jitter,
            running_at=0.5,
            fail_unfinished=config.unfinished_activities == "error",
        ),
    )
    # Room for the percent-encoded form of a full-size `data` (up to 3 bytes per byte).
    max_size = max(3 * config.bulk_max_bytes + 64 * 1024, 1024 * 1024)
    app = web.Application(
        middlewares=[
            stats_middleware,
            https_only_middleware,
            fault_middleware,
            auth_middleware,
            throttle_middleware,
            errors_middleware,
        ],
        client_max_size=max_size,
    )
    app[STORE_KEY] = store
    app[CONFIG_KEY] = config
    app[STATE_KEY] = state
    app.cleanup_ctx.append(_run_activities)

    base = "/ws/customers/{username}/"
    routes: list[tuple[str, str, Handler, str]] = [
        ("GET", "", service_document, "/"),
        ("GET", "contacts", get_contacts, "contacts"),
        ("POST", "contacts", post_contact, "contacts"),
        ("GET", r"contacts/{contact_id:\d+}", get_contact, "contacts/{id}"),
        ("PUT", r"contacts/{contact_id:\d+}", put_contact, "contacts/{id}"),
        ("DELETE", r"contacts/{contact_id:\d+}", delete_contact, "contacts/{id}"),
        ("GET", "lists", get_lists, "lists"),
        ("POST", "lists", post_list, "lists"),
        ("GET", "lists/{list_id}", get_list, "lists/{id}"),
        ("PUT", "lists/{list_id}", put_list, "lists/{id}"),
        ("DELETE", "lists/{list_id}", delete_list, "lists/{id}"),
        ("GET", "lists/{list_id}/members", get_members, "lists/{id}/members"),
        ("GET", "activities", get_activities, "activities"),
        ("POST", "activities", post_activity, "activities"),
        ("GET", "activities/{activity_id}", get_activity, "activities/{id}"),
    ]
    for method, path, handler, label in routes:
        route = app.router.add_route(method, base + path, handler)
        if route.resource is not None:
            state.route_labels[route.resource.canonical] = label
    no_slash = app.router.add_route(
        "*", "/ws/customers/{username}", service_without_slash, name="no_slash"
    )
    if no_slash.resource is not None:
        state.route_labels[no_slash.resource.canonical] = "(no slash)"
    app.router.add_get("/_sim/stats", get_stats, allow_head=False)
    app.router.add_delete("/_sim/stats", delete_stats)
    return app
