"""`Account`: the async client of one Constant Contact account's v1 API.

One `Account` owns one `aiohttp.ClientSession` (keep-alive, no redirects), one
`RateGovernor` (possibly shared) and one `RetryPolicy`. Every request goes through
`Account._send`, which is the only place that retries, waits for the governor, reads the
body under a size cap, and turns a status code into an error (`classify`).
"""

from __future__ import annotations

import asyncio
import base64
import enum
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypedDict, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from engine.backend import _http
from engine.backend._http import (
    Answer,
    burst_pool,
    check_base_url,
    follow_link,
    open_session,
    refused,
    retry_after,
    session_for,
)
from engine.backend.governor import RateGovernor
from engine.backend.retry import RetryPolicy
from engine.backend.v1 import codec
from engine.backend.v1.records import (
    Activity,
    ContactEntry,
    ContactList,
    ContactSummary,
    ListMember,
    Page,
    uri_key,
)
from engine.errors import (
    AccessDeniedError,
    ApiError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ConflictError,
    ConnectionLostError,
    DoNotMailError,
    FatalApiError,
    MalformedResponseError,
    NotFoundError,
    QuotaExhaustedError,
    RetryableApiError,
    ServerError,
    ThrottledError,
    UnsupportedMediaError,
    unknown_lists_message,
)

__all__ = ["DEFAULT_HOST", "Account", "Credentials", "RequestKind", "classify"]

log = logging.getLogger("engine.backend.v1")

DEFAULT_HOST = "https://api.constantcontact.com"
SEARCH_BATCH = 50  # emails per `?email=` search (API doc §4.2)
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
ATOM = "application/atom+xml"
FORM = "application/x-www-form-urlencoded"

T = TypeVar("T")

#: What a request is for: lets `classify` name the likely cause of a 403.
RequestKind = Literal["service", "lists", "contacts", "contact-write", "activities", "members"]

# Throttle answers are [U] for v1 (API doc §7): match the wordings seen on v1-v3 gateways.
_THROTTLE = re.compile(r"refused|queries.per.second|over\.qps|qps|too many requests|throttl", re.I)
_QUOTA = re.compile(r"daily quota|over\.ratelimit|daily (limit|budget)", re.I)


@dataclass(frozen=True, slots=True)
class Credentials:
    """The account's credentials. `repr` and `str` never show the key or the password.

    Attributes:
        username: the Constant Contact username.
        api_key: the API key.
        password: the account password.
    """

    username: str
    api_key: str = field(repr=False)
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        for name in ("username", "api_key", "password"):
            if not getattr(self, name):
                raise ConfigError(f"the {name.replace('_', ' ')} is empty")
        if "%" in self.username or "/" in self.username:
            raise ConfigError(
                "the username must be the bare Constant Contact username; the engine builds "
                "the 'APIKEY%username' login itself"
            )
        if ":" in self.username or ":" in self.api_key:
            raise ConfigError("the username and the API key cannot contain ':' (HTTP Basic)")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **given: str | None) -> Credentials:
        """Read `CTCT_USERNAME`, `CTCT_API_KEY` and `CTCT_PASSWORD`; `given` values win.

        Raises:
            ConfigError: a value is missing; the message names the variable to set.
        """
        env = os.environ if env is None else env
        values = {}
        for name in ("username", "api_key", "password"):
            value = given.get(name) or env.get(f"CTCT_{name.upper()}")
            if not value:
                raise ConfigError(f"set CTCT_{name.upper()} (the account's {name})")
            values[name] = value
        return cls(**values)

    def auth(self) -> str:
        """The `Authorization` header value: HTTP Basic with the user `APIKEY%username`."""
        # Built by hand: aiohttp 3.14 deprecates `BasicAuth` (a DeprecationWarning on every
        # Account), and `encode_basic_auth` does not exist before 3.14. Latin-1, as BasicAuth.
        login = f"{self.api_key}%{self.username}:{self.password}".encode("latin-1")
        return "Basic " + base64.b64encode(login).decode("ascii")


class _State(enum.Enum):
    UNOPENED = 1  # created, no session yet
    OPENED = 2  # inside `async with`
    CLOSED = 3  # closed for good


def _quota_reset(retry_after: float | None) -> str:
    """When a spent daily quota comes back: the server's Retry-After, else midnight UTC
    (a daily quota counts UTC days, like the engine's own daily budget)."""
    if retry_after is not None:
        return f"the server asks to wait {_duration(retry_after)}"
    now = time.time()
    return f"it resets at midnight UTC, in about {_duration(86400 - now % 86400)}"


def _duration(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes} min"


class _Context(TypedDict):
    status: int
    method: str
    url: str
    body: str


def classify(
    status: int,
    *,
    method: str,
    url: str,
    kind: RequestKind,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> ApiError:
    """Turn a non-success answer into the error that says what to do next.

    This is the only place where status codes are interpreted. Error bodies of this API are
    HTML or text: they are kept as a trimmed excerpt, never parsed as XML.

    - 5xx: `ServerError` (retry), or `ThrottledError` for a 503 with `Retry-After`;
    - 429, or a 403 whose body names a rate limit: `ThrottledError` (retry, slower);
    - a 403 or 429 whose body names the daily quota: `QuotaExhaustedError` (stop);
    - 401: `AuthenticationError` (stop);
    - 403 on a contact write: `DoNotMailError` (skip the contact);
    - any other 403: `AccessDeniedError` (stop), the message naming http, the trailing
      slash or another account's URL;
    - 400, 404, 409: skip the contact or request; 415: stop (a bug in the request).
    """
    headers = headers or {}
    text = body[:2000].decode("utf-8", "replace")
    excerpt = re.sub(r"\s+", " ", re.sub(r"<[^>]*>", " ", text)).strip()[:500]
    ctx: _Context = {"status": status, "method": method, "url": url, "body": excerpt}
    wait = retry_after(headers.get("Retry-After"))
    scheme = urlsplit(url).scheme
    if status in (403, 429) and _QUOTA.search(text):
        return QuotaExhaustedError(
            f"the API's daily request quota is spent; {_quota_reset(wait)}. Run the "
            "same command again then (the journal resumes where this run stopped)",
            **ctx,
        )
    if status == 429 or (status == 403 and _THROTTLE.search(text)):
        return ThrottledError("the API is throttling requests", retry_after=wait, **ctx)
    if status >= 500:
        if status == 503 and wait is not None:
            return ThrottledError("the API is overloaded", retry_after=wait, **ctx)
        return ServerError(f"server error: {excerpt[:120] or 'no body'}", **ctx)
    if status == 401:
        return AuthenticationError(
            "authentication failed. The v1 API wants HTTP Basic auth with the user "
            "'APIKEY%username' (your API key, a percent sign, your Constant Contact username) "
            "and the account password: check CTCT_API_KEY, CTCT_USERNAME and CTCT_PASSWORD, "
            "and that the username in the base URL is the same one",
            **ctx,
        )
    if status == 403:
        if scheme == "http":
            return AccessDeniedError(
                "forbidden over plain http: the v1 API accepts credentials over https only; "
                "use an https:// base URL",
                **ctx,
            )
        if kind == "service":
            return AccessDeniedError(
                "forbidden on the service document: its URL must end with a slash "
                "(…/ws/customers/USERNAME/), and USERNAME must be the credentials' username",
                **ctx,
            )
        if kind == "contact-write":
            return DoNotMailError("the contact is on the Do Not Mail list", **ctx)
        return AccessDeniedError(
            "forbidden: the URL names another account than the credentials, or the API key "
            "lacks the permission",
            **ctx,
        )
    if status == 400:
        return BadRequestError(f"rejected by the API: {excerpt[:200] or 'bad request'}", **ctx)
    if status == 404:
        return NotFoundError("not found", **ctx)
    if status == 409:
        return ConflictError("already exists", **ctx)
    if status == 415:
        return UnsupportedMediaError(
            "the API refused the request's content type or method: a bug in the engine", **ctx
        )
    return FatalApiError(f"unexpected answer {status}", **ctx)


class Account:
    """The v1 API of one Constant Contact account.

    Use it as an async context manager; it cannot be reopened once closed.

    Args:
        credentials: username, API key and password.
        base_url: the account's base URI; default
            `https://api.constantcontact.com/ws/customers/{username}/`. A missing trailing
            slash is added (without it the service document answers 403).
        ca_file: a CA bundle to trust, for a private CA such as the simulator's.
        allow_http: allow a plain-http base URL; only for a loopback host, never otherwise
            (credentials never travel over plain http to another machine).
        governor: the rate governor (shared if several accounts share a budget); default 4
            requests/s, 8 in flight.
        retry: the retry policy.
        timeout: seconds one attempt may take.
        max_response_bytes: bodies larger than this are refused.
        sleep: the sleep used between retries (tests inject a no-op).
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        base_url: str | None = None,
        ca_file: str | Path | None = None,
        allow_http: bool = False,
        governor: RateGovernor | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.credentials = credentials
        url = base_url or f"{DEFAULT_HOST}/ws/customers/{quote(credentials.username)}/"
        if not url.endswith("/"):
            url += "/"
        # Before any message that quotes the URL: it must never echo a password (I7).
        url = check_base_url(url, allow_http=allow_http)
        parts = urlsplit(url)
        if ca_file is not None and not Path(ca_file).is_file():
            raise ConfigError(f"the CA file {ca_file} does not exist")
        if timeout <= 0:
            raise ConfigError("the request timeout must be above 0 seconds")
        self.base_url = url
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._ca_file = ca_file
        self.governor = governor or RateGovernor()
        self.retry = retry or RetryPolicy()
        self._search_retry = RetryPolicy(
            attempts=min(2, self.retry.attempts),
            timeout=self.retry.timeout,
            wait_initial=self.retry.wait_initial,
            wait_max=self.retry.wait_max,
            wait_jitter=self.retry.wait_jitter,
        )
        self._timeout = timeout
        self._max_bytes = max_response_bytes
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._state = _State.UNOPENED
        self.retries = 0
        self._told_unreachable = False
        self.requests_sent = 0

    def __repr__(self) -> str:
        return f"<Account {self.credentials.username!r} at {self.base_url} [{self._state.name}]>"

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise RuntimeError("Cannot reopen an Account once it has been closed.")
        self._session = self._open_session()
        self._state = _State.OPENED
        return self

    def _open_session(self) -> aiohttp.ClientSession:
        return open_session(
            ca_file=self._ca_file,
            timeout=self._timeout,
            headers={"Accept": ATOM, "Authorization": self.credentials.auth()},
        )

    def burst(self) -> AbstractAsyncContextManager[None]:
        """Inside, this task's requests go over a pool of their own, closed at the end (a
        burst of many requests at once, see `burst_pool`)."""
        if self._session is None:
            raise RuntimeError("use the Account inside `async with` first")
        return burst_pool(self, self._open_session)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session; idempotent."""
        self._state = _State.CLOSED
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # --- the one request path -------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        *,
        kind: RequestKind,
        parse: Callable[[bytes], T],
        expect: tuple[int, ...] = (200,),
        data: bytes | None = None,
        content_type: str | None = None,
        retry: RetryPolicy | None = None,
        prepaid: bool = False,
    ) -> T:
        if self._session is None:
            raise RuntimeError("use the Account inside `async with` first")
        session = session_for(self, self._session)
        headers = {"Content-Type": content_type} if content_type else None
        target = URL(url, encoded=True)

        def count_retry(error: RetryableApiError, wait: float) -> None:
            self.retries += 1
            if isinstance(error, ConnectionLostError) and not self._told_unreachable:
                # Said at once, not after the whole retry budget (a minute of silence).
                self._told_unreachable = True
                log.warning("%s; retrying (this is said once per run)", error)

        async def one(number: int) -> T:
            # A retry waits for its own turn (the first may have taken it already).
            answer = await self._attempt(
                session, method, target, data, headers, prepaid and number == 1
            )
            if answer.status not in expect:
                error = classify(
                    answer.status,
                    method=method,
                    url=url,
                    kind=kind,
                    body=answer.body,
                    headers=answer.headers,
                )
                refused(error, self.governor, number)
            self.governor.on_success()
            if answer.body and "html" in answer.headers.get("Content-Type", "").lower():
                raise MalformedResponseError(
                    "expected XML, the server answered HTML",
                    status=answer.status,
                    method=method,
                    url=url,
                )
            try:
                return parse(answer.body)
            except MalformedResponseError as exc:
                exc.status, exc.method, exc.url = answer.status, method, url
                raise

        return await (retry or self.retry).call(one, sleep=self._sleep, on_retry=count_retry)

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        data: bytes | None,
        headers: dict[str, str] | None,
        prepaid: bool = False,
    ) -> Answer:
        self.requests_sent += 1
        return await _http.attempt(
            session,
            self.governor,
            method,
            url,
            data=data,
            headers=headers,
            max_bytes=self._max_bytes,
            ca_file=self._ca_file,
            prepaid=prepaid,
        )

    def url(self, path: str) -> str:
        """The request URL of `path`, relative to the base URL."""
        return self.base_url + path

    def _follow(self, href: str) -> str:
        """The request URL of a `next` link: path and query kept, host our own."""
        return follow_link(href, self.base_url)

    async def _pages(
        self, first: str, kind: RequestKind, parse: Callable[[bytes], Page[T]]
    ) -> AsyncIterator[T]:
        url: str | None = first
        seen: set[str] = set()
        while url is not None:
            if url in seen:
                raise MalformedResponseError(f"the feed loops back to {url}")
            seen.add(url)
            page = await self._send("GET", url, kind=kind, parse=parse)
            for item in page.items:
                yield item
            url = self._follow(page.next_href) if page.next_href else None

    # --- the API ----------------------------------------------------------------------

    async def verify(self) -> tuple[str, ...]:
        """GET the service document: proves the credentials and the base URL work.

        Returns:
            the collection hrefs the service document lists.
        """
        return await self._send(
            "GET", self.base_url, kind="service", parse=codec.parse_service_document
        )

    async def lists(self) -> list[ContactList]:
        """Every list of the account, all pages, system lists included (see `is_system`)."""
        return [
            item async for item in self._pages(self.url("lists"), "lists", codec.parse_lists_page)
        ]

    async def resolve_lists(self, names: Iterable[str]) -> dict[str, ContactList]:
        """Map list names to lists, by exact name (never by SortOrder or position).

        Raises:
            ConfigError: a name is unknown or a system list; the message lists the names
                the account has.
        """
        wanted = list(dict.fromkeys(names))
        by_name: dict[str, ContactList] = {}
        for item in await self.lists():
            if not item.is_system:
                by_name.setdefault(item.name, item)
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise ConfigError(unknown_lists_message(unknown, by_name))
        return {name: by_name[name] for name in wanted}

    async def create_list(
        self, name: str, *, sort_order: int = 99, opt_in_default: bool = False
    ) -> ContactList:
        """Create a list (409 `ConflictError` when the name exists)."""
        return await self._send(
            "POST",
            self.url("lists"),
            kind="lists",
            parse=codec.parse_list_entry,
            expect=(201,),
            data=codec.build_list_entry(name, sort_order=sort_order, opt_in_default=opt_in_default),
            content_type=ATOM,
        )

    async def search_contacts(
        self, emails: Sequence[str], *, strict: bool = False
    ) -> dict[str, ContactSummary]:
        """Look contacts up by email, up to 50 per request; missing emails are absent.

        Emails are lower-cased and URL-encoded (the search is case-sensitive and the server
        stores lower case). A 500 that persists for one retry is read as "none found": the
        API documents 500 as one answer for a miss, and a wrong guess is safe where the
        answer only chooses between POST and GET (the POST of a contact that exists gets 409
        and goes through the merge). Where absence would license a write without a read
        (the bulk path's checks), pass `strict`: a failed search then raises, because it
        means "unknown", never "absent".

        Raises:
            ServerError: with `strict`, a search answered 5xx after its retries.
        """
        found: dict[str, ContactSummary] = {}
        unique = list(dict.fromkeys(e.strip().lower() for e in emails))
        for start in range(0, len(unique), SEARCH_BATCH):
            batch = unique[start : start + SEARCH_BATCH]
            url = self.url("contacts?" + "&".join("email=" + quote(e, safe="") for e in batch))
            try:
                try:
                    page = await self._send(
                        "GET",
                        url,
                        kind="contacts",
                        parse=codec.parse_contacts_page,
                        retry=self._search_retry,
                    )
                except ServerError:
                    raise
                except RetryableApiError:
                    # Only a 5xx is a documented answer for a miss: a timeout, a reset or a
                    # throttle gets the whole retry budget, or two lost packets would stop
                    # the run (a lost connection is fatal once the budget is spent).
                    page = await self._send(
                        "GET", url, kind="contacts", parse=codec.parse_contacts_page
                    )
            except ServerError:
                if strict:
                    raise
                log.info("search of %d emails answered 5xx twice: read as not found", len(batch))
                continue
            wanted = set(batch)
            for summary in page.items:
                if summary.email.lower() in wanted:
                    found[summary.email.lower()] = summary
        return found

    async def get_contact(self, key: str) -> ContactEntry:
        """GET the full entry of a contact (by numeric id or id URI)."""
        return await self._send(
            "GET",
            self.url(f"contacts/{uri_key(key)}"),
            kind="contacts",
            parse=codec.parse_contact_entry,
        )

    async def put_contact(
        self,
        entry: ContactEntry,
        body: bytes,
        *,
        prepaid: bool = False,
        retry: RetryPolicy | None = None,
    ) -> None:
        """PUT a whole contact entry back (204). The body must come from `merge_contact_lists`.

        Args:
            entry: the entry the body was merged from.
            body: the whole entry to send.
            prepaid: its rate turn was taken with `governor.take_turn()`: it leaves at once.
            retry: another retry policy for this request (the put stage retries a PUT
                itself, re-checking the entry before each attempt).

        Raises:
            DoNotMailError: the contact is on the Do Not Mail list (403).
        """
        await self._send(
            "PUT",
            self.url(f"contacts/{entry.key}"),
            kind="contact-write",
            parse=lambda _: None,
            expect=(204, 200, 201),
            data=body,
            content_type=ATOM,
            retry=retry,
            prepaid=prepaid,
        )

    async def back_off(self, attempt: int, error: RetryableApiError, started: float) -> None:
        """For a caller that retries a request itself (sent with `SINGLE_ATTEMPT`, to redo a
        check before each attempt): wait the retry policy's backoff before attempt
        `attempt + 1`, or raise `error` when the policy's attempts or time (counted from
        `started`, `time.monotonic()`) are spent."""
        policy = self.retry
        wait = policy.wait_before(attempt, error)
        if attempt >= policy.attempts or time.monotonic() - started + wait > policy.timeout:
            raise error
        self.retries += 1
        log.info("retry %d in %.2fs after: %s", attempt, wait, error)
        if self._sleep is None:
            await asyncio.sleep(wait)
        else:
            await self._sleep(wait)

    async def create_contact(
        self, email: str, list_uris: Sequence[str], fields: Mapping[str, str] | None = None
    ) -> str:
        """POST a new contact with `OptInSource` `ACTION_BY_CUSTOMER` on `list_uris`.

        Returns:
            the new contact's id URI.

        Raises:
            ConflictError: the email exists, in any status (409).
        """
        body = codec.build_contact_entry(email.strip().lower(), list_uris, fields or {})

        def parse_created(raw: bytes) -> str:
            return codec.parse_created_id(raw) if raw.strip() else ""

        return await self._send(
            "POST",
            self.url("contacts"),
            kind="contact-write",
            parse=parse_created,
            expect=(201,),
            data=body,
            content_type=ATOM,
        )

    async def all_contacts(self) -> AsyncIterator[ContactSummary]:
        """Every contact of the account (`GET contacts`, 50 a page): email, id and status."""
        async for summary in self._pages(
            self.url("contacts"), "contacts", codec.parse_contacts_page
        ):
            yield summary

    async def list_members(self, list_key: str) -> AsyncIterator[ListMember]:
        """Every member of a list, page by page."""
        first = self.url(f"lists/{uri_key(list_key)}/members")
        async for member in self._pages(first, "members", codec.parse_members_page):
            yield member

    async def submit_activity(self, body: bytes, *, retry: RetryPolicy | None = None) -> Activity:
        """POST a bulk activity (a body from `encode_add_contacts`); answers 201.

        Args:
            body: the form.
            retry: another retry policy (the bulk path posts once and, after a lost answer,
                looks for the activity before posting again: see `recent_activities`).
        """
        return await self._send(
            "POST",
            self.url("activities"),
            kind="activities",
            parse=codec.parse_activity,
            expect=(201,),
            data=body,
            content_type=FORM,
            retry=retry,
        )

    async def recent_activities(self) -> list[Activity]:
        """The first page of `GET activities`: the newest activities (up to 50), newest first."""
        page = await self._send(
            "GET", self.url("activities"), kind="activities", parse=codec.parse_activities_page
        )
        return list(page.items)

    async def get_activity(self, key: str) -> Activity:
        """GET an activity's status and line errors."""
        return await self._send(
            "GET",
            self.url(f"activities/{uri_key(key)}"),
            kind="activities",
            parse=codec.parse_activity,
        )
