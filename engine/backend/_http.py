"""The transport both API dialects share: where credentials may go, the client session, one
request attempt under the rate governor, and the mapping of transport failures to the error
tree. A dialect's client adds its authentication, its retry loop over `attempt`, and the
classification of its answers.
"""

from __future__ import annotations

import email.utils
import io
import ipaddress
import math
import posixpath
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import unquote, urlsplit

import aiohttp
import anyio
from multidict import CIMultiDictProxy
from yarl import URL

from engine.backend.governor import RateGovernor
from engine.errors import (
    ApiError,
    ConfigError,
    ConflictError,
    ConnectionLostError,
    FatalApiError,
    MalformedResponseError,
    ThrottledError,
)

__all__ = [
    "Answer",
    "attempt",
    "burst_pool",
    "check_base_url",
    "follow_link",
    "is_loopback",
    "open_session",
    "read_capped",
    "refused",
    "retry_after",
    "session_for",
]


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer, read whole (within the size cap)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine (`localhost`, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, *, allow_http: bool, what: str = "base URL") -> str:
    """`url` with a trailing slash, or a refusal, before any request, of one that would put
    credentials at risk.

    Credentials (v1 Basic, V3 bearer tokens) travel over https only; plain http only to a
    loopback host (a local simulator) and only when asked. A URL with a user or password in
    it is refused before any message could quote it (invariant I7).

    Raises:
        ConfigError: saying what to change.
    """
    if not url.endswith("/"):
        url += "/"
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ConfigError(f"put credentials in the environment, not in the {what}")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"the {what} must be an https:// URL, not {url!r}")
    if parts.scheme == "http":
        if not is_loopback(parts.hostname):
            raise ConfigError(
                f"refusing plain http to a non-loopback host for the {what}: the API accepts "
                "credentials over https only; use https://"
            )
        if not allow_http:
            raise ConfigError(
                f"the {what} is plain http; pass allow_http (--allow-http) to use a "
                "loopback simulator without TLS"
            )
    return url


def follow_link(href: str, base_url: str) -> str:
    """The request URL of a feed's next link: its path and query, on our own origin, and
    still under the base path (a link elsewhere, dot-segments resolved, is refused: a hostile
    or broken server must not get the credentials sent to another place).

    Raises:
        MalformedResponseError: the link leaves the base path.
    """
    base = urlsplit(base_url)
    parts = urlsplit(href)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    url = f"{base.scheme}://{base.netloc}{path}" if path.startswith("/") else base_url + path
    base_path = base.path.lower()
    # Dot-segments resolved first (servers do), or `acme/../other/` would pass the check.
    target = posixpath.normpath(unquote(urlsplit(url).path)).lower() + "/"
    if not target.startswith(base_path) or target == base_path:
        raise MalformedResponseError(f"a next link leaves the account: {href!r}")
    return url


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or HTTP date); None when unusable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):  # not a date either: the server's header is junk
            return None
        seconds = parsed.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def open_session(
    *, ca_file: str | Path | None, timeout: float, headers: dict[str, str]
) -> aiohttp.ClientSession:
    """A keep-alive session that verifies TLS (against `ca_file` when given), sends
    `headers` with every request and never raises for a status."""
    ssl_context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    connector = aiohttp.TCPConnector(ssl=ssl_context, limit=0, keepalive_timeout=30)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(10, timeout)),
        headers=headers,
        raise_for_status=False,
    )


#: The pool a client's requests take inside `burst_pool`: (the client, its burst session).
_BURST: ContextVar[tuple[object, aiohttp.ClientSession] | None] = ContextVar(
    "engine_burst_pool", default=None
)


@asynccontextmanager
async def burst_pool(
    owner: object, open_: Callable[[], aiohttp.ClientSession]
) -> AsyncIterator[None]:
    """Inside, the requests `owner` sends from this task (and the tasks it starts) go over a
    session of their own, opened by `open_` and closed, with its connections, on the way out.

    For a short burst of many requests at once (the bulk path's membership check: 64
    lookups and 25 reads in one round trip). On the client's own pool, each would leave a
    connection there, and aiohttp reuses the longest-idle connection first (since 3.11,
    aio-libs/aiohttp#9672), so none of them is ever idle long enough to be closed: every
    one keeps its TLS buffers (a few hundred KiB) for the rest of the run, on V3 about
    35 MB of the bulk path's peak. aiohttp has no public way to close a pool's idle
    connections, hence a pool of its own, found through a context variable so that the
    dialects' request paths need no new argument.
    """
    session = open_()
    token = _BURST.set((owner, session))
    try:
        yield
    finally:
        _BURST.reset(token)
        with anyio.CancelScope(shield=True):  # closed even when the run is cancelled
            await session.close()


def session_for(owner: object, default: aiohttp.ClientSession) -> aiohttp.ClientSession:
    """The session `owner`'s request takes here: its burst pool's inside `burst_pool`,
    `default` elsewhere."""
    burst = _BURST.get()
    return burst[1] if burst is not None and burst[0] is owner else default


async def read_capped(resp: aiohttp.ClientResponse, method: str, url: str, max_bytes: int) -> bytes:
    """The body of `resp`, refused when it is over `max_bytes` (announced or read)."""
    length = resp.content_length
    if length is not None and length > max_bytes:
        raise MalformedResponseError(
            f"the response of {length} bytes is over the cap of {max_bytes}",
            status=resp.status,
            method=method,
            url=url,
        )
    if length is not None:  # the parser reads no more than announced: one read takes it all
        return await resp.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > max_bytes:
            raise MalformedResponseError(
                f"the response is over the cap of {max_bytes} bytes",
                status=resp.status,
                method=method,
                url=url,
            )
        chunks.append(chunk)
    return b"".join(chunks)


#: The most bytes of a request body handed to the connection at once: a larger body goes as
#: a stream, which aiohttp reads in pieces of at most this size (256 KiB in aiohttp 3.14),
#: the size of the largest read the TLS layer takes from the socket.
_PIECE = 1 << 18


def _payload(data: bytes | None) -> bytes | io.BytesIO | None:
    """`data` as aiohttp should send it: a body over 256 KiB as a stream, with its length (so
    not chunked on the wire).

    Given bytes, aiohttp writes the whole body to the connection at once, and the TLS layer
    (asyncio's or uvloop's) encrypts all of it into OpenSSL's outgoing memory buffer before
    sending any. That buffer keeps its largest size for the connection's life: a V3 import
    of 40,000 rows left each pooled connection that carried one holding megabytes, and peak
    memory grew with the run (a million rows on the bulk path: 224 to 229 MB, still rising
    at the end). A stream keeps each write, and so each buffer, within 256 KiB. A new stream
    per attempt: a retry sends the body from its start.
    """
    if data is None or len(data) <= _PIECE:
        return data
    return io.BytesIO(data)


async def attempt(
    session: aiohttp.ClientSession,
    governor: RateGovernor,
    method: str,
    url: URL,
    *,
    data: bytes | None,
    headers: dict[str, str] | None,
    max_bytes: int,
    ca_file: str | Path | None,
    prepaid: bool = False,
) -> Answer:
    """One request under the governor's slot (its turn already taken with `prepaid`).

    Raises:
        FatalApiError: TLS verification failed (retrying cannot help), saying what to pass.
        MalformedResponseError: the answer was cut short or is over the size cap.
        ConnectionLostError: no answer (refused, reset, timed out), naming the host at once.
    """
    async with governor.slot(prepaid=prepaid):
        try:
            async with session.request(
                method, url, data=_payload(data), headers=headers, allow_redirects=False
            ) as resp:
                body = await read_capped(resp, method, str(url), max_bytes)
                return Answer(resp.status, resp.headers, body)
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            if ca_file:
                advice = (
                    f"the server's certificate is not signed by the CA in {ca_file} "
                    "(a simulator started again makes a new CA unless it keeps its "
                    "--ca-dir): pass the CA file the server uses now"
                )
            else:
                advice = "for a private CA such as the simulator's, pass its CA file (--ca-file)"
            raise FatalApiError(
                f"TLS verification failed ({exc.__class__.__name__}); {advice}",
                method=method,
                url=str(url),
            ) from exc
        except aiohttp.ClientPayloadError as exc:
            raise MalformedResponseError(
                f"the response was cut short: {exc}", method=method, url=str(url)
            ) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            host = url.host or "?"
            hint = ""
            if url.scheme == "http" and isinstance(exc, aiohttp.ServerDisconnectedError):
                hint = (
                    " (plain http was sent, as --allow-http asks: an https server closes "
                    "such connections; use the https:// base URL)"
                )
            raise ConnectionLostError(
                f"no answer from {host}: {exc.__class__.__name__}: {exc}".rstrip(": ") + hint,
                method=method,
                url=str(url),
            ) from exc


def refused(error: ApiError, governor: RateGovernor, attempt_number: int) -> NoReturn:
    """Raise the classified error of an answer that is not a success, after telling the
    governor of a throttle; a conflict met by a retry says so (its first try may have been
    applied, its answer lost)."""
    if isinstance(error, ThrottledError):
        governor.on_throttle(error.retry_after)
    if isinstance(error, ConflictError):
        error.after_retry = attempt_number > 1
    raise error
