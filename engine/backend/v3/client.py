"""`V3Client`: the async JSON client of one Constant Contact account's V3 API.

One `V3Client` owns one `aiohttp.ClientSession` (keep-alive, no redirects), shares the
engine's `RateGovernor` (4 requests/s by default, §2.4) and `RetryPolicy`, and asks its
`V3Auth` for the bearer token of each attempt. Every request goes through `V3Client.send`,
the only place that retries, waits for the governor, reads a body under a size cap, refreshes
the token once after a 401, and turns a status code into an error (`classify`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from yarl import URL

from engine import fastjson
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
from engine.backend.v3.auth import V3Auth
from engine.errors import (
    AccessDeniedError,
    ApiError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    ConflictError,
    FatalApiError,
    MalformedResponseError,
    NotFoundError,
    QuotaExhaustedError,
    RetryableApiError,
    ServerError,
    ThrottledError,
    UnsupportedMediaError,
)

__all__ = ["DEFAULT_BASE_URL", "MAX_RESPONSE_BYTES", "PagesAhead", "V3Client", "classify"]

log = logging.getLogger("engine.backend.v3")

DEFAULT_BASE_URL = "https://api.cc.email/v3/"
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
JSON = "application/json"


def _error_items(body: bytes) -> list[tuple[str, str]]:
    """(`error_key`, `error_message`) pairs of an error body: an array for validation
    errors, an object for rate limits and 401s (§2.2); [] when it is neither."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the stack
        return []
    items = data if isinstance(data, list) else [data]
    pairs = []
    for item in items:
        if isinstance(item, dict):
            key = item.get("error_key") or item.get("error") or ""
            text = item.get("error_message") or item.get("message") or ""
            pairs.append((str(key), str(text)))
    return pairs


def classify(
    status: int,
    *,
    method: str,
    url: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> ApiError:
    """Turn a non-success answer into the error that says what to do next.

    - 429 `quota_exceeded`: `QuotaExhaustedError` (stop until midnight UTC); any other 429
      (`throttled`, the 1,000 queued activities): `ThrottledError` (retry, slower);
    - 5xx: `ServerError` (retry), `ThrottledError` for a 503 with `Retry-After`;
    - 401 (after the one refresh): `AuthenticationError`;
    - 403: `AccessDeniedError` (scopes, privileges, a deactivated application: stop);
    - 400: `BadRequestError` with the validation messages; 404, 409: skip; 415: a bug.
    """
    headers = headers or {}
    pairs = _error_items(body)
    keys = {k for k, _ in pairs}
    messages = "; ".join(t for _, t in pairs if t)
    if not pairs:
        messages = " ".join(body[:300].decode("utf-8", "replace").split())
    ctx: dict[str, Any] = {
        "status": status,
        "method": method,
        "url": url,
        "body": messages[:500],
    }
    wait = retry_after(headers.get("Retry-After"))
    if status == 429:
        if "quota_exceeded" in keys:
            return QuotaExhaustedError(
                "the API's daily request quota (10,000 per application) is spent; it resets "
                "at midnight UTC. Run the same command again then (the journal resumes where "
                "this run stopped)",
                **ctx,
            )
        return ThrottledError(
            f"the API is throttling requests ({messages[:120] or 'too many requests'})",
            retry_after=wait,
            **ctx,
        )
    if status >= 500:
        if status == 503 and wait is not None:
            return ThrottledError("the API is overloaded", retry_after=wait, **ctx)
        return ServerError(f"server error: {messages[:120] or 'no body'}", **ctx)
    if status == 401:
        return AuthenticationError(
            "the access token was refused even after a refresh; run `python -m engine login` again",
            **ctx,
        )
    if status == 403:
        return AccessDeniedError(
            "forbidden: the token lacks the contact_data scope, the user lacks a privilege "
            "(contacts:read, contacts:write, contacts:lists:read/write), or the application is "
            f"deactivated ({messages[:120] or 'no detail'})",
            **ctx,
        )
    if status == 400:
        return BadRequestError(f"rejected by the API: {messages[:300] or 'bad request'}", **ctx)
    if status == 404:
        return NotFoundError(f"not found ({messages[:120] or 'no detail'})", **ctx)
    if status == 409:
        return ConflictError(f"already exists ({messages[:200] or 'conflict'})", **ctx)
    if status == 415:
        return UnsupportedMediaError(
            "the API refused the request's content type: a bug in the engine", **ctx
        )
    return FatalApiError(f"unexpected answer {status}", **ctx)


class V3Client:
    """The V3 API of one account. Use it as an async context manager.

    Args:
        auth: the bearer token source.
        base_url: the API base; default `https://api.cc.email/v3/`.
        ca_file: a CA bundle to trust, for a private CA such as the simulator's.
        allow_http: allow a plain-http base URL; only for a loopback host, never otherwise
            (a bearer token never travels over plain http to another machine).
        governor: the rate governor (shared by every process step of a run); default 4
            requests/s, 8 in flight.
        retry: the retry policy.
        timeout: seconds one attempt may take.
        max_response_bytes: bodies larger than this are refused.
        sleep: the sleep used between retries (tests inject a no-op).
    """

    def __init__(
        self,
        auth: V3Auth,
        *,
        base_url: str = DEFAULT_BASE_URL,
        ca_file: str | Path | None = None,
        allow_http: bool = False,
        governor: RateGovernor | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.base_url = check_base_url(base_url, allow_http=allow_http)
        if ca_file is not None and not Path(ca_file).is_file():
            raise ConfigError(f"the CA file {ca_file} does not exist")
        if timeout <= 0:
            raise ConfigError("the request timeout must be above 0 seconds")
        parts = urlsplit(self.base_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self.auth = auth
        self._ca_file = ca_file
        self.governor = governor or RateGovernor()
        self.retry = retry or RetryPolicy()
        self._timeout = timeout
        self._max_bytes = max_response_bytes
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self.requests_sent = 0
        self.retries = 0
        #: The `Date` of the newest answer: the server's clock (`server_time`).
        self._date: str | None = None

    def __repr__(self) -> str:
        return f"<V3Client at {self.base_url}>"

    def server_time(self) -> float | None:
        """The server's time when it sent the newest answer so far (epoch seconds, from its
        `Date` header, whole seconds): a time that has passed on the server's clock, for
        reads of what changed since. None before the first answer, or when it gave no
        readable `Date`."""
        if self._date is None:
            return None
        try:
            moment = parsedate_to_datetime(self._date)
        except (TypeError, ValueError):
            return None
        return moment.timestamp() if moment.tzinfo is not None else None

    @property
    def host(self) -> str:
        """The API's host name."""
        return urlsplit(self.base_url).hostname or ""

    async def __aenter__(self) -> Self:
        if self._closed or self._session is not None:
            raise RuntimeError("a V3Client is opened once")
        self._session = self._open_session()
        return self

    def _open_session(self) -> aiohttp.ClientSession:
        return open_session(
            ca_file=self._ca_file,
            timeout=self._timeout,
            headers={"Accept": JSON, "Cache-Control": "no-cache"},
        )

    def burst(self) -> AbstractAsyncContextManager[None]:
        """Inside, this task's requests go over a pool of their own, closed at the end (a
        burst of many requests at once, see `burst_pool`)."""
        if self._session is None:
            raise RuntimeError("use the V3Client inside `async with` first")
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
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def url(self, path: str) -> str:
        """The request URL of `path`, relative to the base URL."""
        return self.base_url + path.lstrip("/")

    def follow(self, href: str) -> str:
        """The request URL of a `_links.next.href` (`/v3/contacts?cursor=…`): path and query
        kept, host our own, and still under the base path."""
        return follow_link(href, self.base_url)

    async def send(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        expect: tuple[int, ...] = (200,),
        retry: RetryPolicy | None = None,
        prepaid: bool = False,
    ) -> Any:
        """Send one request (retried per the policy) and return its JSON (None when empty).

        Raises:
            ApiError: see `classify`; `MalformedResponseError` for a body that is not JSON.
        """
        if self._session is None:
            raise RuntimeError("use the V3Client inside `async with` first")
        session = session_for(self, self._session)
        target = URL(url, encoded=True)
        if params:
            target = target.update_query(params)

        def count_retry(error: RetryableApiError, wait: float) -> None:
            self.retries += 1

        async def one(number: int) -> Any:
            # A retry waits for its own turn (the first may have taken it already).
            answer = await self._authorized(session, method, target, body, prepaid and number == 1)
            self._date = answer.headers.get("Date", self._date)
            if answer.status not in expect:
                error = classify(
                    answer.status,
                    method=method,
                    url=str(target),
                    body=answer.body,
                    headers=answer.headers,
                )
                refused(error, self.governor, number)
            self.governor.on_success()
            if not answer.body.strip():
                return None
            try:
                return fastjson.loads(answer.body)
            except (ValueError, RecursionError) as exc:  # RecursionError: deep nesting
                raise MalformedResponseError(
                    f"the answer is not JSON: {type(exc).__name__}",
                    status=answer.status,
                    method=method,
                    url=str(target),
                ) from None

        return await (retry or self.retry).call(one, sleep=self._sleep, on_retry=count_retry)

    async def _authorized(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        body: bytes | None,
        prepaid: bool,
    ) -> Answer:
        """One attempt with the current token; after a 401, one refresh and one more try
        (a V3 401 is the token, never rate limiting, §2.3)."""
        token = await self.auth.access_token()
        answer = await self._attempt(session, method, url, body, token, prepaid)
        if answer.status != 401:
            return answer
        log.info("the API refused the access token (401): refreshing it once")
        await self.auth.rejected(token)
        token = await self.auth.access_token()
        return await self._attempt(session, method, url, body, token, False)

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: URL,
        body: bytes | None,
        token: str,
        prepaid: bool,
    ) -> Answer:
        headers = {"Authorization": f"Bearer {token}"}
        if body is not None:
            headers["Content-Type"] = JSON
        self.requests_sent += 1
        return await _http.attempt(
            session,
            self.governor,
            method,
            url,
            data=body,
            headers=headers,
            max_bytes=self._max_bytes,
            ca_file=self._ca_file,
            prepaid=prepaid,
        )

    async def pages(
        self, path: str, key: str, params: Mapping[str, str]
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The items under `key` of a collection, following `_links.next.href` to the end
        (an absent, `{}` or `null` `_links` ends it, §3.2)."""
        async for items in self._pages(path, key, params):
            for item in items:
                yield item

    @contextlib.asynccontextmanager
    async def pages_ahead(
        self, path: str, key: str, params: Mapping[str, str]
    ) -> AsyncIterator[PagesAhead]:
        """`pages`, a page's items at a time, where the caller may ask for the next page
        before it is done with this one (`PagesAhead.ask`): the pages of a cursor come one
        after the other, but the server's work on the next can overlap the caller's on this
        one. A page is only requested when asked for (so none is wasted when the caller
        stops early); leaving the block cancels a request still running. An error of a
        request is raised to the caller when it comes to that page.
        """
        send, receive = anyio.create_memory_object_stream[list[dict[str, Any]] | Exception]()
        ask, asked = anyio.create_memory_object_stream[None](1)

        async def produce() -> None:
            async with send:
                try:
                    async with contextlib.aclosing(self._pages(path, key, params)) as pages:
                        async for items in pages:  # the first at once, each next when asked
                            await send.send(items)
                            await asked.receive()
                except Exception as exc:
                    await send.send(exc)

        error: Exception | None = None
        with receive, ask, asked:
            async with anyio.create_task_group() as group:
                group.start_soon(produce)
                try:
                    yield PagesAhead(receive, ask)
                except Exception as exc:  # raised as itself, below, not in an exception group
                    error = exc
                finally:
                    group.cancel_scope.cancel()
        if error is not None:
            raise error

    async def _pages(
        self, path: str, key: str, params: Mapping[str, str]
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """The items of each page, a page at a time."""
        url: str | None = self.url(path)
        query: Mapping[str, str] | None = params
        seen: set[str] = set()
        while url is not None:
            if url in seen:
                raise MalformedResponseError(f"the collection loops back to {url}")
            seen.add(url)
            page = await self.send("GET", url, params=query)
            if not isinstance(page, dict):
                raise MalformedResponseError(f"a page of {path} is not a JSON object")
            items = page.get(key) or []
            if not isinstance(items, list):
                raise MalformedResponseError(f"{key} of a page of {path} is not a list")
            yield [item for item in items if isinstance(item, dict)]
            links = page.get("_links") or {}
            href = links.get("next", {}).get("href") if isinstance(links, dict) else None
            url = self.follow(href) if isinstance(href, str) and href else None
            query = None  # the cursor carries the query

    async def back_off(self, attempt: int, error: RetryableApiError, started: float) -> None:
        """For a caller that retries a request itself (sent with `SINGLE_ATTEMPT`): wait the
        policy's backoff before attempt `attempt + 1`, or raise `error` when its attempts or
        time (from `started`, `time.monotonic()`) are spent."""
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


class PagesAhead:
    """The pages of `V3Client.pages_ahead`: `async for items in pages`; `ask()` requests the
    next page now (it is requested when the loop comes to it otherwise)."""

    def __init__(
        self,
        pages: MemoryObjectReceiveStream[list[dict[str, Any]] | Exception],
        ask: MemoryObjectSendStream[None],
    ) -> None:
        self._pages = pages
        self._ask = ask
        self._asked = True  # the first page is requested at once

    def ask(self) -> None:
        """Request the next page (once per page; nothing when it was asked for)."""
        if not self._asked:
            self._asked = True
            self._ask.send_nowait(None)

    def __aiter__(self) -> PagesAhead:
        return self

    async def __anext__(self) -> list[dict[str, Any]]:
        self.ask()
        try:
            items = await self._pages.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        if isinstance(items, Exception):
            raise items
        self._asked = False
        return items
