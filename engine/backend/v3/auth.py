"""OAuth2 for the V3 API: tokens, their store, refresh with rotation, the device flow, revoke.

Refresh tokens rotate: each refresh returns a new one and kills every earlier one
(`ctct-v3-api.md` §1.8). So the new token set is written to the store *before* its access
token is used, one refresh runs at a time in the process (an `anyio.Lock`) and across the
processes sharing the token file (an exclusive `flock` on a lock file beside it; the file is
read again once the lock is held, since another process may have refreshed meanwhile), and a
refresh happens only shortly before expiry or once after a 401, never per request: the token
endpoint allows 1 request/s (§1.9). `invalid_grant` is final: the user must log in again.

No token ever reaches a log, an exception or a `repr`.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import logging
import math
import os
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.to_thread
import platformdirs

from engine.backend._http import check_base_url
from engine.backend.governor import RateGovernor
from engine.errors import AuthenticationError, ConfigError

__all__ = [
    "DEFAULT_AUTH_URL",
    "LOGIN_HINT",
    "SCOPES",
    "DeviceCode",
    "FileTokenStore",
    "OAuthEndpoints",
    "TokenSet",
    "V3Auth",
    "default_token_path",
    "device_login",
    "is_loopback",
]

log = logging.getLogger("engine.backend.v3")

DEFAULT_AUTH_URL = "https://authz.constantcontact.com/oauth2/default/v1/"
#: `offline_access` is what brings a refresh token (§1.7).
SCOPES = "contact_data offline_access"
LOGIN_HINT = "run `python -m engine login` again"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: Refresh when the access token expires within this many seconds (§1.13: 5 minutes).
REFRESH_MARGIN = 300.0


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine (the only place plain http may go)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class TokenSet:
    """An access token, its refresh token and expiry. `repr` and `str` show no token.

    Attributes:
        access_token: the bearer token.
        refresh_token: the refresh token (None: an access token given alone).
        expires_at: when the access token expires, epoch seconds (`inf`: unknown).
        scope: the granted scopes.
    """

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: float = math.inf
    scope: str = ""

    def expiring(self, now: float, margin: float = REFRESH_MARGIN) -> bool:
        """Whether it expires within `margin` seconds of `now`."""
        return self.expires_at - now < margin

    def as_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "expires_at": None if math.isinf(self.expires_at) else self.expires_at,
            "scope": self.scope,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TokenSet:
        """Read the stored form.

        Raises:
            ConfigError: not a token set.
        """
        access, refresh = data.get("access_token"), data.get("refresh_token")
        expires = data.get("expires_at")
        if not isinstance(access, str) or not (refresh is None or isinstance(refresh, str)):
            raise ConfigError(f"the token file is not a token set; {LOGIN_HINT}")
        if expires is not None and not isinstance(expires, int | float):
            raise ConfigError(f"the token file's expires_at is not a number; {LOGIN_HINT}")
        scope = data.get("scope")
        return cls(
            access,
            refresh,
            math.inf if expires is None else float(expires),
            scope if isinstance(scope, str) else "",
        )

    @classmethod
    def from_response(
        cls, data: Mapping[str, Any], now: float, previous: TokenSet | None = None
    ) -> TokenSet:
        """A token endpoint's answer (`expires_in` is a time to live, §1.7). A long-lived
        refresh token may not come back: the previous one is kept then."""
        access = data.get("access_token")
        if not isinstance(access, str) or not access:
            raise AuthenticationError("the token endpoint answered without an access token")
        refresh = data.get("refresh_token")
        if not isinstance(refresh, str) or not refresh:
            refresh = previous.refresh_token if previous is not None else None
        ttl = data.get("expires_in")
        expires_at = now + float(ttl) if isinstance(ttl, int | float) else math.inf
        scope = data.get("scope")
        return cls(access, refresh, expires_at, scope if isinstance(scope, str) else "")


def default_token_path(client_id: str, folder: str | Path | None = None) -> Path:
    """`<folder>/v3-<client_id>.json`; the folder defaults to the user's config folder
    (platformdirs: `~/.config/ctct-migrate` on Linux, honouring `XDG_CONFIG_HOME`)."""
    if folder is None:
        folder = platformdirs.user_config_dir("ctct-migrate")
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in client_id)
    return Path(folder) / f"v3-{safe}.json"


#: Seconds a refresh waits for another process's refresh to release the token file.
LOCK_WAIT = 120.0


class FileTokenStore:
    """Token sets in a JSON file: folder 0700, file 0600, written atomically.

    Args:
        path: the token file (see `default_token_path`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def __repr__(self) -> str:
        return f"FileTokenStore({str(self.path)!r})"

    def _folder(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path.parent, 0o700)

    def load(self) -> TokenSet | None:
        """The stored token set, or None when there is no file.

        Raises:
            ConfigError: the file cannot be read as a token set.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise ConfigError(f"the token file {self.path} is not JSON; {LOGIN_HINT}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"the token file {self.path} is not a token set; {LOGIN_HINT}")
        return TokenSet.from_json(data)

    def save(self, tokens: TokenSet) -> None:
        """Write atomically: a temporary file (0600 from birth) beside it, fsync, rename,
        then fsync of the folder, so a crash leaves the old set or the new one whole."""
        self._folder()
        data = json.dumps(tokens.as_json()).encode()
        fd, temp = tempfile.mkstemp(prefix=".tokens-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def delete(self) -> None:
        """Forget the stored tokens (logout)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Hold the exclusive lock that other processes using this file take to refresh.

        Tried without blocking, every 50 ms, for at most `LOCK_WAIT` seconds (a refresh
        holds it for one token request): the wait stays cancellable and bounded, even when
        another process hangs while holding it.

        Raises:
            AuthenticationError: the lock stayed taken for `LOCK_WAIT` seconds.
        """
        self._folder()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise AuthenticationError(
                            f"another process has held the lock of the token file "
                            f"({self.lock_path}) for {LOCK_WAIT:.0f} s; stop it, or use "
                            "another --token-file"
                        ) from None
                    await anyio.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


@dataclass(frozen=True, slots=True)
class DeviceCode:
    """What the user needs to approve a device login (`device_code` is never shown).

    Attributes:
        user_code: the code to type at `verification_uri`.
        verification_uri: where to type it.
        verification_uri_complete: the same page with the code filled in.
        expires_in: seconds the codes live.
        interval: seconds between polls.
        device_code: what the client polls with.
    """

    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: float
    interval: float
    device_code: str = field(repr=False)


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    """The JSON object of an authorization server's answer.

    Raises:
        AuthenticationError: not JSON, not UTF-8, nested past the stack, or not an object.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise AuthenticationError(f"the {what} answered no JSON") from None
    if not isinstance(data, dict):
        raise AuthenticationError(f"the {what} answered no JSON object")
    return data


def _oauth_error(body: bytes) -> tuple[str, str]:
    """(`error`, `error_description`) of a token endpoint refusal, or what can be read."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return "", body[:200].decode("utf-8", "replace")
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
    if not isinstance(data, dict):
        return "", ""
    error = data.get("error") or data.get("error_key") or data.get("errorCode") or ""
    text = data.get("error_description") or data.get("error_message") or data.get("errorSummary")
    return str(error), str(text or "")


class OAuthEndpoints:
    """The authorization server's token, device and revoke endpoints for one public client.

    Every call goes through a governor of 1 request/s (§1.9); a throttled or 5xx answer is
    retried a few times after a pause. Tokens travel in form bodies, never in URLs.

    Args:
        client_id: the application's client id (its API key).
        auth_url: the authorization server's base, ending in `/oauth2/default/v1/`.
        ca_file: a CA bundle to trust (the simulator's).
        allow_http: allow plain http to a loopback host.
        timeout: seconds one request may take.
        sleep: the sleep between retries (tests inject one).
        governor: the token endpoint's own governor; default 1 request/s (tests that run
            the device flow on a fake clock pass an unlimited one).
    """

    def __init__(
        self,
        client_id: str,
        *,
        auth_url: str = DEFAULT_AUTH_URL,
        ca_file: str | Path | None = None,
        allow_http: bool = False,
        timeout: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        governor: RateGovernor | None = None,
    ) -> None:
        if not client_id:
            raise ConfigError("the V3 client id is empty")
        self.client_id = client_id
        self.auth_url = check_base_url(
            auth_url, allow_http=allow_http, what="authorization server URL"
        )
        if ca_file is not None and not Path(ca_file).is_file():
            raise ConfigError(f"the CA file {ca_file} does not exist")
        self._ca_file = ca_file
        self._timeout = timeout
        self._sleep = sleep or anyio.sleep
        self.governor = governor or RateGovernor(rate=1.0, concurrency=1)
        #: token endpoint requests sent (tests count refreshes with it).
        self.token_requests = 0

    def __repr__(self) -> str:
        return f"OAuthEndpoints({self.auth_url!r})"

    async def post(self, path: str, form: Mapping[str, str]) -> tuple[int, bytes]:
        """POST a form; returns (status, body) of the answer, after retrying throttles,
        5xx and lost connections (3 attempts).

        Raises:
            AuthenticationError: the endpoint could not be reached or kept failing.
        """
        url = self.auth_url + path
        context = ssl.create_default_context(cafile=str(self._ca_file) if self._ca_file else None)
        last = ""
        for attempt in range(1, 4):
            if path == "token":
                self.token_requests += 1
            try:
                async with (
                    self.governor.slot(),
                    aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(ssl=context),
                        timeout=aiohttp.ClientTimeout(total=self._timeout),
                    ) as session,
                    session.post(
                        url, data=dict(form), headers={"Accept": "application/json"}
                    ) as resp,
                ):
                    status, body = resp.status, await resp.content.read(1 << 16)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                last = f"no answer ({exc.__class__.__name__})"
            else:
                if status != 429 and status < 500:
                    return status, body
                last = f"{status} {_oauth_error(body)[1]}".strip()
                if status == 429:
                    self.governor.on_throttle(None)
            if attempt < 3:
                await self._sleep(float(attempt))
        raise AuthenticationError(
            f"the authorization server kept failing: {last}", method="POST", url=url
        )


class V3Auth:
    """The bearer token of the V3 client: load, refresh proactively and after a 401, save.

    The stored token set wins over `refresh_token`/`access_token` given here: those only
    seed a store that has none (a headless run's refresh token is spent by its first
    refresh, and the rotated one is in the store afterwards).

    Args:
        endpoints: the authorization server.
        store: the token file (None: tokens live in memory only).
        refresh_token: a refresh token to start from (headless runs).
        access_token: an access token to use as is (headless runs, no refresh possible).
        clock: epoch seconds (tests inject one).
        margin: refresh when the access token expires within this many seconds (at most
            half the lifetime of the tokens the server hands out, once one was seen: a
            server whose tokens live less than `margin` must not be asked per request).
    """

    def __init__(
        self,
        endpoints: OAuthEndpoints,
        *,
        store: FileTokenStore | None = None,
        refresh_token: str | None = None,
        access_token: str | None = None,
        clock: Callable[[], float] = time.time,
        margin: float = REFRESH_MARGIN,
    ) -> None:
        self.endpoints = endpoints
        self.store = store
        self._clock = clock
        self._margin = margin
        self._lock = anyio.Lock()
        tokens = store.load() if store is not None else None
        if tokens is None and (refresh_token or access_token):
            # A refresh token alone: expired at once, so the first request refreshes it.
            tokens = TokenSet(access_token or "", refresh_token, math.inf if access_token else 0.0)
        if tokens is None:
            where = f" in {store.path}" if store is not None else ""
            raise ConfigError(f"no V3 tokens{where}: run `python -m engine login` first")
        self._tokens = tokens
        #: the lifetime of the last access token the server issued (None: none seen yet).
        self._lifetime: float | None = None
        #: refreshes done by this object.
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"V3Auth({self.endpoints.client_id!r}, store={self.store!r})"

    @property
    def tokens(self) -> TokenSet:
        """The current token set."""
        return self._tokens

    def _expiring(self, tokens: TokenSet) -> bool:
        """Whether `tokens` expires within the margin (capped at half a token's lifetime)."""
        margin = self._margin
        if self._lifetime is not None:
            margin = min(margin, self._lifetime / 2)
        return tokens.expiring(self._clock(), margin)

    async def access_token(self) -> str:
        """The access token to send now, refreshed first when it expires soon."""
        tokens = self._tokens
        if self._expiring(tokens) and tokens.refresh_token:
            await self._refresh(tokens.access_token)
        return self._tokens.access_token

    async def rejected(self, access_token: str) -> None:
        """The API refused `access_token` (401): refresh once, unless another task did.

        Raises:
            AuthenticationError: there is no refresh token, or it is refused.
        """
        await self._refresh(access_token, forced=True)

    async def _refresh(self, stale: str, *, forced: bool = False) -> None:
        async with self._lock:
            current = self._tokens
            if current.access_token != stale and (forced or not self._expiring(current)):
                return  # another task refreshed while this one waited
            if self.store is None:
                await self._grant(current)
                return
            async with self.store.locked():
                on_disk = self.store.load()
                if (
                    on_disk is not None
                    and on_disk.access_token not in (stale, "")
                    and not self._expiring(on_disk)
                ):
                    self._tokens = on_disk  # another process refreshed meanwhile
                    return
                await self._grant(on_disk or current)

    async def _grant(self, current: TokenSet) -> None:
        if not current.refresh_token:
            raise AuthenticationError(
                f"the access token expired or was refused and there is no refresh token; "
                f"{LOGIN_HINT}"
            )
        status, body = await self.endpoints.post(
            "token",
            {
                "grant_type": "refresh_token",
                "refresh_token": current.refresh_token,
                "client_id": self.endpoints.client_id,
            },
        )
        if status != 200:
            error, text = _oauth_error(body)
            if error == "invalid_grant":
                raise AuthenticationError(
                    f"the refresh token is invalid or expired (used already, revoked, or idle "
                    f"for 180 days); {LOGIN_HINT}",
                    status=status,
                    method="POST",
                    url=self.endpoints.auth_url + "token",
                )
            raise AuthenticationError(
                f"the token refresh was refused: {error or status} {text}".strip(),
                status=status,
                method="POST",
                url=self.endpoints.auth_url + "token",
            )
        data = _json_object(body, "token endpoint")
        now = self._clock()
        fresh = TokenSet.from_response(data, now, current)
        if math.isfinite(fresh.expires_at):
            self._lifetime = max(0.0, fresh.expires_at - now)
        if self.store is not None:
            # Before the new access token is used: the old refresh token is dead already,
            # and a rotation not saved would lock the user out.
            self.store.save(fresh)
        self._tokens = fresh
        self.refreshes += 1
        log.info("V3 access token refreshed")

    async def revoke(self) -> None:
        """Log out: revoke the refresh and access tokens (RFC 7009) and forget them."""
        for token, hint in (
            (self._tokens.refresh_token, "refresh_token"),
            (self._tokens.access_token, "access_token"),
        ):
            if token:
                status, _ = await self.endpoints.post(
                    "revoke",
                    {
                        "token": token,
                        "token_type_hint": hint,
                        "client_id": self.endpoints.client_id,
                    },
                )
                if status not in (200, 204):
                    log.warning("revoking the %s answered %d", hint.replace("_", " "), status)
        if self.store is not None:
            self.store.delete()


async def device_login(
    endpoints: OAuthEndpoints,
    *,
    store: FileTokenStore | None = None,
    show: Callable[[DeviceCode], None],
    scope: str = SCOPES,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    clock: Callable[[], float] = time.time,
) -> TokenSet:
    """Log in with the OAuth2 device flow (RFC 8628, §1.5) and save the tokens.

    `show` is called once with the codes for the user. The token endpoint is then polled
    every `interval` seconds: `authorization_pending` waits, `slow_down` adds 5 seconds to
    the interval, and the codes' `expires_in` bounds the whole wait.

    Raises:
        AuthenticationError: the user denied the request, the codes expired, or the server
            refused the client.
    """
    sleep = sleep or anyio.sleep
    status, body = await endpoints.post(
        "device/authorize", {"client_id": endpoints.client_id, "scope": scope}
    )
    if status != 200:
        error, text = _oauth_error(body)
        raise AuthenticationError(
            f"the device authorization was refused: {error or status} {text}".strip(),
            status=status,
        )
    data = _json_object(body, "device authorization endpoint")
    if "user_code" not in data or "device_code" not in data:
        raise AuthenticationError("the device authorization answered no user or device code")
    code = DeviceCode(
        user_code=str(data["user_code"]),
        verification_uri=str(data.get("verification_uri", "")),
        verification_uri_complete=str(
            data.get("verification_uri_complete") or data.get("verification_uri", "")
        ),
        expires_in=float(data.get("expires_in") or 600),
        interval=float(data.get("interval") or 5),
        device_code=str(data["device_code"]),
    )
    show(code)
    deadline = clock() + code.expires_in
    interval = code.interval
    while True:
        await sleep(interval)
        if clock() >= deadline:
            raise AuthenticationError(
                f"the login code expired before it was approved; {LOGIN_HINT}"
            )
        status, body = await endpoints.post(
            "token",
            {
                "grant_type": DEVICE_GRANT,
                "device_code": code.device_code,
                "client_id": endpoints.client_id,
            },
        )
        if status == 200:
            tokens = TokenSet.from_response(_json_object(body, "token endpoint"), clock())
            if store is not None:
                store.save(tokens)
            return tokens
        error, text = _oauth_error(body)
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        if error == "expired_token":
            raise AuthenticationError(
                f"the login code expired before it was approved; {LOGIN_HINT}"
            )
        if error == "access_denied":
            raise AuthenticationError("the login was denied at the verification page")
        raise AuthenticationError(f"the login failed: {error or status} {text}".strip())
