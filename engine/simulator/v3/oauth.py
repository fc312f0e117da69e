"""The simulated OAuth2 authorization server's rules (`ctct-v3-api.md` §1, §10.1).

Pure: no aiohttp; the clock is injected (the store's), so tests can expire codes and tokens
without sleeping. Tokens never rest here in clear: every access token, refresh token, device
code and authorization code is kept as its SHA-256 hash, so neither a `repr`, the stats nor
a saved state file can leak one. Access tokens are HS256 JWTs with the claims CC's carry
(`iss`, `aud`, `exp`, `iat`, `cid`, `scp`…, §1.12); the API accepts one only while its hash
is known and it has not expired, so revocation is immediate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .._throttle import TokenBuckets
from .config import DEFAULT_SCOPES, SimulatorConfig

__all__ = [
    "DEVICE_GRANT",
    "ISSUER",
    "AccessGrant",
    "AuthServer",
    "DeviceStart",
    "OAuthError",
    "TokenSet",
]

#: The issuer CC's tokens carry (§1.2, §1.12).
ISSUER = "https://identity.constantcontact.com/oauth2/aus1lm3ry9mF7x2Ja0h8"
AUDIENCE = "https://api.cc.email/v3"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels: no words in the codes (RFC 8628 §6.1)

DeviceState = Literal["pending", "approved", "denied", "used"]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class OAuthError(Exception):
    """A token-endpoint refusal: `{"error", "error_description"}` (§1.8).

    Attributes:
        error: The OAuth error code (`invalid_grant`, `authorization_pending`…).
        description: `error_description`.
        status: The HTTP status; `None` = the configured `token_error_status`.
    """

    def __init__(self, error: str, description: str, status: int | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True, slots=True)
class TokenSet:
    """A token response (§1.7). The tokens are left out of `repr`."""

    access_token: str = field(repr=False)
    expires_in: int
    scope: str
    refresh_token: str | None = field(default=None, repr=False)
    token_type: str = "Bearer"

    def as_json(self) -> dict[str, Any]:
        """The `/token` response body."""
        body: dict[str, Any] = {
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "access_token": self.access_token,
            "scope": self.scope,
        }
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
        return body


@dataclass(slots=True)
class AccessGrant:
    """What an access token grants: the client, its scopes, until when (epoch seconds)."""

    client_id: str
    scopes: tuple[str, ...]
    expires_at: float


@dataclass(slots=True)
class _RefreshGrant:
    client_id: str
    scopes: tuple[str, ...]
    issued_at: float
    last_used_at: float


@dataclass(slots=True)
class _DeviceGrant:
    client_id: str
    scopes: tuple[str, ...]
    user_code: str
    expires_at: float
    interval: int
    last_poll: float | None = None
    state: DeviceState = "pending"


@dataclass(slots=True)
class _CodeGrant:
    client_id: str
    scopes: tuple[str, ...]
    redirect_uri: str
    expires_at: float
    challenge: str | None


@dataclass(frozen=True, slots=True)
class DeviceStart:
    """A device authorization: the codes to show and poll with (§1.5). `device_code` is
    left out of `repr`."""

    device_code: str = field(repr=False)
    user_code: str
    expires_in: int
    interval: int


class AuthServer:
    """Clients, codes and tokens of the simulated authorization server.

    Args:
        config: Lifetimes, refresh mode and the registered client; rebound by the store.
        clock: Epoch seconds.
    """

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self._key = secrets.token_bytes(32)
        self._access: dict[str, AccessGrant] = {}
        self._refresh: dict[str, _RefreshGrant] = {}
        self._devices: dict[str, _DeviceGrant] = {}
        self._user_codes: dict[str, str] = {}
        self._codes: dict[str, _CodeGrant] = {}
        self._buckets = TokenBuckets(clock)
        #: Set when the operator deactivates the application (§10.1.8): valid tokens get 403.
        self.deactivated = False

    def __repr__(self) -> str:
        return (
            f"<AuthServer client_id={self.config.client_id!r} access={len(self._access)} "
            f"refresh={len(self._refresh)} devices={len(self._devices)}>"
        )

    # -- scopes and clients ----------------------------------------------------------------------

    @staticmethod
    def parse_scopes(text: str | None) -> tuple[str, ...]:
        """Scopes of a `scope` parameter: space- or `+`-separated (§1.3).

        Raises:
            OAuthError: `invalid_scope` for an unknown scope or none.
        """
        names = tuple(dict.fromkeys((text or "").replace("+", " ").split()))
        unknown = [n for n in names if n not in DEFAULT_SCOPES]
        if not names or unknown:
            raise OAuthError("invalid_scope", f"The requested scope is invalid: {unknown or '∅'}")
        return names

    def client(self, client_id: str | None, basic: tuple[str, str] | None) -> tuple[str, bool]:
        """The calling client and whether it authenticated with its secret.

        Raises:
            OAuthError: `invalid_client` (401) for an unknown client or a wrong secret.
        """
        if basic is not None:
            basic_id, secret = basic
            expected = self.config.client_secret
            if (
                basic_id != self.config.client_id
                or expected is None
                or not hmac.compare_digest(secret.encode(), expected.encode())
                or (client_id is not None and client_id != basic_id)
            ):
                raise OAuthError("invalid_client", "Client authentication failed.", 401)
            return basic_id, True
        if client_id != self.config.client_id:
            raise OAuthError("invalid_client", "Client authentication failed.", 401)
        return client_id, False

    def allow_token_request(self, client_id: str) -> bool:
        """Take one request of the token endpoint's budget (§1.9: 1/s per client)."""
        rate = self.config.token_rps
        if rate is None:
            return True
        return self._buckets.take(client_id, rate, burst=1.0)

    # -- issuing ---------------------------------------------------------------------------------

    def _jwt(self, client_id: str, scopes: tuple[str, ...], now: float, exp: float) -> str:
        header = {"alg": "HS256", "typ": "JWT", "kid": "ctct-v3-simulator"}
        claims = {
            "ver": 1,
            "jti": "AT." + secrets.token_urlsafe(16),
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": int(now),
            "exp": int(exp),
            "cid": client_id,
            "uid": "00u" + _digest(client_id)[:17],
            "scp": list(scopes),
            "sub": "simulated.user@example.com",
        }
        signing = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        signature = hmac.new(self._key, signing.encode(), hashlib.sha256).digest()
        return f"{signing}.{_b64url(signature)}"

    def issue_tokens(
        self,
        scopes: tuple[str, ...] | list[str] | str = ("contact_data", "offline_access"),
        *,
        client_id: str | None = None,
        access_ttl: float | None = None,
    ) -> TokenSet:
        """Mint tokens as a completed login would (the test hook that skips the device flow).

        A refresh token comes only with `offline_access` (§1.7); in rotating mode a new
        login kills every earlier refresh token of the client (§1.8).

        Args:
            scopes: Scope names, or one space-separated string.
            client_id: The client; the configured one by default.
            access_ttl: This access token's lifetime; `config.access_ttl` by default.
        """
        if isinstance(scopes, str):
            scopes = self.parse_scopes(scopes)
        client_id = client_id or self.config.client_id
        scopes = tuple(scopes)
        if self.config.refresh_mode == "rotating":
            self._drop_refresh_tokens(client_id)
        refresh = None
        if "offline_access" in scopes:
            refresh = secrets.token_urlsafe(32)
            now = self.clock()
            self._refresh[_digest(refresh)] = _RefreshGrant(client_id, scopes, now, now)
        return self._access_token(client_id, scopes, refresh, access_ttl)

    def _access_token(
        self,
        client_id: str,
        scopes: tuple[str, ...],
        refresh: str | None,
        ttl: float | None = None,
    ) -> TokenSet:
        now = self.clock()
        ttl = self.config.access_ttl if ttl is None else ttl
        token = self._jwt(client_id, scopes, now, now + ttl)
        self._access[_digest(token)] = AccessGrant(client_id, scopes, now + ttl)
        self._forget_expired(now)
        return TokenSet(token, max(0, round(ttl)), " ".join(scopes), refresh)

    def _forget_expired(self, now: float) -> None:
        if len(self._access) > 256:
            self._access = {k: g for k, g in self._access.items() if g.expires_at > now}

    def _drop_refresh_tokens(self, client_id: str) -> None:
        self._refresh = {k: g for k, g in self._refresh.items() if g.client_id != client_id}

    # -- device flow (§1.5) ---------------------------------------------------------------------

    def start_device(self, client_id: str, scope: str | None) -> DeviceStart:
        """`POST /device/authorize`: new device and user codes.

        Raises:
            OAuthError: `invalid_scope`.
        """
        scopes = self.parse_scopes(scope)
        device_code = secrets.token_urlsafe(32)
        user_code = "-".join(
            "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(4)) for _ in range(2)
        )
        config = self.config
        grant = _DeviceGrant(
            client_id,
            scopes,
            user_code,
            self.clock() + config.device_expires_in,
            config.device_interval,
        )
        if config.auto_approve:
            grant.state = "approved"
        self._devices[_digest(device_code)] = grant
        self._user_codes[user_code] = _digest(device_code)
        return DeviceStart(device_code, user_code, config.device_expires_in, config.device_interval)

    def _device_by_user_code(self, user_code: str) -> _DeviceGrant:
        key = self._user_codes.get(user_code.strip().upper())
        grant = None if key is None else self._devices.get(key)
        if grant is None or grant.expires_at <= self.clock() or grant.state != "pending":
            raise KeyError(f"no pending device authorization for user code {user_code!r}")
        return grant

    def approve(self, user_code: str) -> None:
        """The user approves the device (the verification page, or a test).

        Raises:
            KeyError: No pending, unexpired authorization has this user code.
        """
        self._device_by_user_code(user_code).state = "approved"

    def deny(self, user_code: str) -> None:
        """The user denies the device.

        Raises:
            KeyError: No pending, unexpired authorization has this user code.
        """
        self._device_by_user_code(user_code).state = "denied"

    def pending_user_codes(self) -> list[str]:
        """User codes waiting for a decision (for the verification page and tests)."""
        now = self.clock()
        return [
            g.user_code
            for g in self._devices.values()
            if g.state == "pending" and g.expires_at > now
        ]

    def _device_token(self, client_id: str, device_code: str | None) -> TokenSet:
        grant = self._devices.get(_digest(device_code or ""))
        if grant is None or grant.client_id != client_id or grant.state == "used":
            raise OAuthError("invalid_grant", "The device code is invalid or expired.")
        now = self.clock()
        if grant.expires_at <= now:
            raise OAuthError("expired_token", "The device code has expired.")
        if grant.state == "denied":
            raise OAuthError("access_denied", "The resource owner denied the request.")
        if grant.state == "pending":
            too_soon = grant.last_poll is not None and now - grant.last_poll < grant.interval
            grant.last_poll = now
            if too_soon:
                grant.interval += self.config.slow_down_step
                raise OAuthError("slow_down", "The client is polling too quickly.")
            raise OAuthError(
                "authorization_pending", "The device authorization is pending. Please try again."
            )
        grant.state = "used"
        return self.issue_tokens(grant.scopes, client_id=client_id)

    # -- authorization code and PKCE (§1.3, §1.4) ------------------------------------------------

    def authorize(
        self,
        *,
        client_id: str | None,
        redirect_uri: str | None,
        response_type: str | None,
        scope: str | None,
        code_challenge: str | None,
        code_challenge_method: str | None,
    ) -> str:
        """`GET /authorize`, approved: a single-use authorization code (5 minutes).

        Raises:
            OAuthError: An unknown client, unregistered redirect URI, wrong response type or
                scope, or a challenge method other than S256.
        """
        if client_id != self.config.client_id:
            raise OAuthError("invalid_client", "Unknown client_id.", 401)
        if redirect_uri not in self.config.redirect_uris:
            raise OAuthError("invalid_request", "The redirect_uri is not registered.")
        if response_type != "code":
            raise OAuthError("unsupported_response_type", "response_type must be code.")
        if code_challenge is not None and code_challenge_method != "S256":
            raise OAuthError("invalid_request", "code_challenge_method must be S256.")
        scopes = self.parse_scopes(scope)
        code = secrets.token_urlsafe(24)
        self._codes[_digest(code)] = _CodeGrant(
            client_id,
            scopes,
            redirect_uri,
            self.clock() + self.config.auth_code_ttl,
            code_challenge,
        )
        return code

    def _code_token(
        self, client_id: str, authenticated: bool, params: Mapping[str, str]
    ) -> TokenSet:
        grant = self._codes.pop(_digest(params.get("code", "")), None)  # single use (§1.3)
        if grant is None or grant.client_id != client_id or grant.expires_at <= self.clock():
            raise OAuthError("invalid_grant", "The authorization code is invalid or has expired.")
        if params.get("redirect_uri") != grant.redirect_uri:
            raise OAuthError("invalid_grant", "The redirect_uri does not match.")
        if grant.challenge is not None:
            verifier = params.get("code_verifier", "")
            expected = _b64url(hashlib.sha256(verifier.encode()).digest())
            if not hmac.compare_digest(expected, grant.challenge):
                raise OAuthError("invalid_grant", "PKCE verification failed.")
        elif not authenticated:
            raise OAuthError("invalid_client", "Client authentication failed.", 401)
        return self.issue_tokens(grant.scopes, client_id=client_id)

    # -- refresh (§1.8) --------------------------------------------------------------------------

    def _refresh_token(self, client_id: str, token: str | None) -> TokenSet:
        key = _digest(token or "")
        grant = self._refresh.get(key)
        now = self.clock()
        if (
            grant is None
            or grant.client_id != client_id
            or now - grant.last_used_at > self.config.refresh_idle_ttl
        ):
            self._refresh.pop(key, None)
            raise OAuthError("invalid_grant", "The refresh token is invalid or expired.")
        if self.config.refresh_mode == "long_lived":
            grant.last_used_at = now
            return self._access_token(client_id, grant.scopes, token)
        return self.issue_tokens(grant.scopes, client_id=client_id)

    # -- the token endpoint ----------------------------------------------------------------------

    def token(self, params: Mapping[str, str], basic: tuple[str, str] | None) -> TokenSet:
        """`POST /token`: every grant type (§1.3-1.8).

        Args:
            params: Form and query parameters together.
            basic: `(client_id, secret)` from a Basic header, if any.

        Raises:
            OAuthError: Any refusal, including the device-flow polling answers.
        """
        client_id, authenticated = self.client(params.get("client_id"), basic)
        grant_type = params.get("grant_type")
        if grant_type == DEVICE_GRANT:
            return self._device_token(client_id, params.get("device_code"))
        if grant_type == "refresh_token":
            return self._refresh_token(client_id, params.get("refresh_token"))
        if grant_type == "authorization_code":
            return self._code_token(client_id, authenticated, params)
        raise OAuthError("unsupported_grant_type", f"Unsupported grant_type {grant_type!r}.")

    # -- using and revoking ----------------------------------------------------------------------

    def access_grant(self, token: str) -> AccessGrant | None:
        """What a bearer token grants, or `None` when unknown, revoked or expired."""
        grant = self._access.get(_digest(token))
        if grant is None or grant.expires_at <= self.clock():
            return None
        return grant

    def revoke(self, token: str) -> None:
        """Forget one access or refresh token (RFC 7009: unknown tokens are no error)."""
        key = _digest(token)
        self._access.pop(key, None)
        self._refresh.pop(key, None)

    def revoke_all(self) -> None:
        """Forget every token: the user revoked the application's access."""
        self._access.clear()
        self._refresh.clear()

    # -- persistence -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Grants as JSON-compatible data: token hashes, never tokens."""
        return {
            "access": {k: asdict(g) for k, g in self._access.items()},
            "refresh": {k: asdict(g) for k, g in self._refresh.items()},
            "deactivated": self.deactivated,
        }

    def load_json(self, data: Mapping[str, Any]) -> None:
        """Restore grants saved by `to_json` (the signing key is new: old tokens still work,
        since they are recognised by their hash).

        Raises:
            KeyError, TypeError: Not `to_json` output.
        """
        self._access = {
            str(k): AccessGrant(str(g["client_id"]), tuple(g["scopes"]), float(g["expires_at"]))
            for k, g in data["access"].items()
        }
        self._refresh = {
            str(k): _RefreshGrant(
                str(g["client_id"]),
                tuple(g["scopes"]),
                float(g["issued_at"]),
                float(g["last_used_at"]),
            )
            for k, g in data["refresh"].items()
        }
        self.deactivated = bool(data["deactivated"])
