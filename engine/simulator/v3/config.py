"""Settings of the V3 API simulator.

Every point that `ctct-v3-api.md` marks unknown ([U], listed in its §12) or inferred ([I]) is a
field here, with the default the fact sheet gives (its §10, in bold there), so a test can pin
the behaviour it depends on. The limits the sheet confirms ([C]) are fields too, so a test can
shrink them instead of sending 40,000 rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

__all__ = ["DEFAULT_PRIVILEGES", "DEFAULT_SCOPES", "SimulatorConfig"]

#: The scopes the guide and the contract list (§1.11).
DEFAULT_SCOPES = frozenset(
    {
        "contact_data",
        "campaign_data",
        "account_read",
        "account_update",
        "offline_access",
        "billing_data",
    }
)
#: The user privileges of §1.11 that the simulated endpoints check.
DEFAULT_PRIVILEGES = frozenset(
    {"contacts:read", "contacts:write", "contacts:lists:read", "contacts:lists:write"}
)

RefreshMode = Literal["rotating", "long_lived"]
TokenThrottleBody = Literal["okta", "ctct"]
ErrorShape = Literal["object", "array"]
EmptyLinks = Literal["empty", "null", "absent"]
UnsubscribedListAdd = Literal["ignore", "reject_400", "allow_if_account_optout"]
MissingEmailOnPut = Literal["reject_400", "null_it"]
SubresourcePut = Literal["replace", "merge"]
SkipOrError = Literal["skip", "error"]
DeletedInImport = Literal["revive_and_add", "skip_count_error"]
Duplicates = Literal["last_wins", "first_wins"]
OverLimit = Literal["reject_400", "truncate"]
UnfinishedActivities = Literal["run", "fail"]
ContactOrder = Literal["created", "email"]

_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]+")
_DAY = 86400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatorConfig:
    """How the V3 simulator listens, which limits it enforces, and which variant of each
    [U] behaviour it plays.

    Times are float seconds unless the name says `_ms`; rates are probabilities in [0, 1];
    a limit of `None` turns that limit off.

    Attributes:
        host: Address to bind; tests and the demo use loopback only.
        port: TCP port; 0 picks a free port. The API (`/v3/`), the authorization server
            (`/oauth2/default/v1/`), the verification page (`/activate`) and `/_sim/` share it.
        tls: Serve https with a locally generated CA (§2.1: TLS is required).
        ca_dir: Folder for the CA; `None` = a temporary one (see the v1 `SimulatorConfig`).
        client_id: The application's API key, which is its OAuth2 `client_id` (§1.1).
        client_secret: Secret of a confidential client (Basic auth on `/token`); `None` =
            a public client only (device flow and PKCE need no secret, §1.4-1.5).
        redirect_uris: Registered redirect URIs for the authorization-code flow (§1.3).
        auto_approve: `GET /authorize` approves at once, and device codes are approved when
            issued (for a demo without a person); off by default.
        device_expires_in: Lifetime of device and user codes ([U] §12.1; Okta's 600).
        device_interval: Polling interval given to device clients ([U] §12.1; Okta's 5).
        slow_down_step: Seconds added to a device code's interval on each `slow_down`
            (RFC 8628: 5).
        access_ttl: Access-token lifetime (§1.7: a static 24 h); tests shorten it to force a
            refresh in the middle of a run.
        refresh_mode: `"rotating"` (the default: single use, a refresh kills every earlier
            refresh token) or `"long_lived"` (the same token comes back), §1.8.
        refresh_idle_ttl: A refresh token not used for this long expires (§1.7: 180 days).
        auth_code_ttl: Authorization-code lifetime (§1.3: 5 minutes, single use).
        token_rps: Requests per second per client on `/token` and `/device/authorize`
            (§1.9: 1); `None` = no limit.
        token_error_status: HTTP status of token-endpoint errors ([U] §12.2; Okta's 400).
        token_throttle_body: Body of a throttled token request: Okta's `errorCode` object
            (`"okta"`, the default) or CC's `error_key` object (`"ctct"`) ([U] §12.2).
        revoke_enabled: Serve `/v1/revoke` (200 always, RFC 7009) ([U] §12.3); off = 404.
        deactivated: The application is deactivated: every API call with a valid token
            gets 403 (§10.1.8).
        privileges: The user's privileges (§1.11); a missing one gives 403.
        unauthorized_shape: Body form of 401 answers: object (default) or array ([U] §12.4).
        rps: Requests per second per client id, all tokens together (§2.4: 4).
        daily_quota: Requests per UTC day per client id (§2.4: 10,000), reset at 00:00 UTC
            of the injected clock.
        endpoint_rps: Extra per-endpoint limits, by route label (`"POST contacts"`), on top
            of `rps` ([U] §12.18: none known, so none by default).
        retry_after_header: Send `Retry-After` with 429 answers ([U] §12.5: off).
        rate_limit_headers: Send `X-RateLimit-Limit`/`-Remaining` headers ([U] §12.5: off).
        email_case_insensitive: Match emails case-insensitively everywhere ([U] §12.9: on).
        contacts_limit_max: Largest `limit` of `GET /contacts` (§3.2: 500; more gives 400).
        contacts_order: Sort order of `GET /contacts`: creation (default) or email ([U]
            §12.15).
        cursor_ttl: Seconds a paging cursor stays valid; `None` = forever ([U] §12.15).
        empty_links: `_links` on a last page: `{}` (captured, default), `null` or absent.
        max_lists_per_contact: Lists a contact may be on (§4.2: 50).
        unsubscribed_list_add: A PUT that adds lists to an unsubscribed contact: the new lists
            are dropped (`"ignore"`, default), 400, or allowed when the contact's opt-out
            source is `Account` ([U] §12.6).
        missing_email_on_put: A PUT without `email_address`: 400 (default) or the address is
            nulled ([U] §12.7).
        put_subresources: An included subresource other than `list_memberships` replaces
            (default) or merges into the stored one ([U] §12.8; lists always replace, [C]).
        interleave_rate: Probability that a foreign sign-up adds the contact to the list
            `interleave_list_name` just before a PUT is applied: the lost-update window of
            §9.1 (§10.6.34).
        interleave_list_name: That list (created when first needed).
        confirmed_opt_in: The account has Confirmed Opt-In on: `sign_up_form` makes new
            contacts `pending_confirmation` (§3.6).
        signup_actions: The `action` values of `sign_up_form` for created and updated
            contacts ([U] §12.13).
        signup_conflict_rate: Probability that `sign_up_form` answers 409 "simultaneous
            requests" (§3.6).
        list_cap: Lists per account (§4.2: 1,000).
        list_cap_status: Status beyond the cap ([U] §12.14: 400).
        lists_limit_max: Largest `limit` of `GET /contact_lists` ([U] §12.14: 500).
        lists_default_status: Default `status` filter of `GET /contact_lists` ([U] §12.14).
        list_names_case_insensitive: List names are unique case-insensitively ([U] §12.14).
        deleted_list_names_block: A deleted list's name cannot be reused ([U] §12.14: off).
        import_max_rows: Most rows of a JSON import (§5.2: 40,000).
        import_over_limit: More rows: 400 (default) or keep the first `import_max_rows`
            ([U] §12.11).
        import_max_bytes: Body bytes of a JSON import that are read; the rest is dropped
            silently (§5.2: 4,000,000).
        import_email_max: Longest `email` of an import row; longer is a row error counted in
            `error_count` ([U] §12.11: 50).
        deleted_in_import: A deleted contact in an import is revived and added (default) or
            skipped as a row error ([U] §12.11).
        import_duplicates: Duplicate emails in one import: the last row wins (default) or
            the first ([U] §12.11).
        unknown_custom_field: An unknown `cf:` column: a row error (default) or ignored
            ([U] §12.11).
        bulk_max_contact_ids: Most `contact_ids` of list-membership activities (§5.4: 500).
        bulk_max_lists: Most destination `list_ids` of activities (§5.4: 50).
        overflow_51st: A contact already on `max_lists_per_contact` lists: the extra lists
            are skipped silently (default) or reported in `activity_errors` ([U] §12.10).
        unsubscribed_or_deleted_ids: Such contacts in `add_list_memberships`: skipped
            (default) or reported in `activity_errors` ([U] §12.10).
        unknown_contact_ids: Unknown ids there: reported (default) or skipped ([U] §12.10).
        activity_queue_cap: Unfinished activities per account before 429 (§5.1: 1,000).
        activity_retention: Seconds an activity stays readable (§5.1: 10 days).
        activity_delay: Mean time from an activity's POST to `processing` ([U] §12.12:
            about 2 s).
        activity_jitter: Each delay is drawn in `activity_delay * (1 ± activity_jitter)`, so
            activities complete out of order (§5.1).
        activity_rows_per_second: Processing throughput in rows (contacts) per second
            ([U] §12.12: about 1,000).
        activity_error_format: `activity_errors` strings ([U] §12.12; v2's `Line 2: …`),
            with the fields `line` (1-based row), `email` and `message`.
        activity_fail_rate: Probability that an activity ends `failed`, nothing applied.
        activity_cancel_rate: Probability that it ends `cancelled`, nothing applied.
        activity_timeout_rate: Probability that it ends `timed_out`, half its rows applied.
        unfinished_activities: Activities left unfinished in a loaded store, or by an app
            that stopped: `"run"` them to the end (the real server never abandons one), or
            end them `"fail"`ed.
        mixed_timestamps: Write timestamps in the three forms seen (`Z`, milliseconds,
            `-05:00` offset) instead of always `Z` (§10.6.32).
        latency_ms: Fixed latency added to every `/v3/` request.
        latency_jitter_ms: Extra latency, uniform in `[0, latency_jitter_ms]`.
        error_rate: Probability of answering 500 or 503 before the handler (no effect).
        route_error_rates: Extra 500/503 probabilities by route label (§10.2.14).
        reset_rate: Probability of aborting the connection without an answer (no effect).
        error_after_commit_rate: Probability that a successful write is applied and then
            answered 500 ("500 after commit", §10.2.14).
        lose_answer_rate: Probability that a successful write is applied and its answer lost
            (connection aborted: "timeout after commit").
        seed: Seed of the one random generator behind faults, jitter and activity outcomes
            (ids and tokens are random whatever the seed).
    """

    host: str = "127.0.0.1"
    port: int = 0
    tls: bool = True
    ca_dir: Path | None = None

    client_id: str = "demo-client"
    client_secret: str | None = field(default=None, repr=False)
    redirect_uris: tuple[str, ...] = ("http://127.0.0.1:8765/callback",)
    auto_approve: bool = False
    device_expires_in: int = 600
    device_interval: int = 5
    slow_down_step: int = 5
    access_ttl: float = _DAY
    refresh_mode: RefreshMode = "rotating"
    refresh_idle_ttl: float = 180 * _DAY
    auth_code_ttl: float = 300.0
    token_rps: float | None = 1.0
    token_error_status: int = 400
    token_throttle_body: TokenThrottleBody = "okta"
    revoke_enabled: bool = True
    deactivated: bool = False
    privileges: frozenset[str] = DEFAULT_PRIVILEGES
    unauthorized_shape: ErrorShape = "object"

    rps: float | None = 4.0
    daily_quota: int | None = 10_000
    endpoint_rps: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    retry_after_header: bool = False
    rate_limit_headers: bool = False

    email_case_insensitive: bool = True
    contacts_limit_max: int = 500
    contacts_order: ContactOrder = "created"
    cursor_ttl: float | None = None
    empty_links: EmptyLinks = "empty"
    max_lists_per_contact: int = 50
    unsubscribed_list_add: UnsubscribedListAdd = "ignore"
    missing_email_on_put: MissingEmailOnPut = "reject_400"
    put_subresources: SubresourcePut = "replace"
    interleave_rate: float = 0.0
    interleave_list_name: str = "Interleaved sign-ups"
    confirmed_opt_in: bool = False
    signup_actions: tuple[str, str] = ("created", "updated")
    signup_conflict_rate: float = 0.0

    list_cap: int = 1000
    list_cap_status: int = 400
    lists_limit_max: int = 500
    lists_default_status: Literal["active", "all", "deleted"] = "active"
    list_names_case_insensitive: bool = True
    deleted_list_names_block: bool = False

    import_max_rows: int = 40_000
    import_over_limit: OverLimit = "reject_400"
    import_max_bytes: int = 4_000_000
    import_email_max: int = 50
    deleted_in_import: DeletedInImport = "revive_and_add"
    import_duplicates: Duplicates = "last_wins"
    unknown_custom_field: Literal["row_error", "ignore"] = "row_error"
    bulk_max_contact_ids: int = 500
    bulk_max_lists: int = 50
    overflow_51st: SkipOrError = "skip"
    unsubscribed_or_deleted_ids: SkipOrError = "skip"
    unknown_contact_ids: SkipOrError = "error"
    activity_queue_cap: int = 1000
    activity_retention: float = 10 * _DAY
    activity_delay: float = 2.0
    activity_jitter: float = 0.5
    activity_rows_per_second: float = 1000.0
    activity_error_format: str = "Line {line}: {message}"
    activity_fail_rate: float = 0.0
    activity_cancel_rate: float = 0.0
    activity_timeout_rate: float = 0.0
    unfinished_activities: UnfinishedActivities = "run"
    mixed_timestamps: bool = False

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    error_rate: float = 0.0
    route_error_rates: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    reset_rate: float = 0.0
    error_after_commit_rate: float = 0.0
    lose_answer_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "port", "must be in 0..65535")
        _check(bool(self.host), "host", "must not be empty")
        _check(_CLIENT_ID.fullmatch(self.client_id) is not None, "client_id", "a-zA-Z0-9._-")
        _check(
            self.client_secret is None or bool(self.client_secret),
            "client_secret",
            "must be None or non-empty",
        )
        for name in (
            "device_expires_in",
            "device_interval",
            "contacts_limit_max",
            "max_lists_per_contact",
            "list_cap",
            "lists_limit_max",
            "import_max_rows",
            "import_max_bytes",
            "import_email_max",
            "bulk_max_contact_ids",
            "bulk_max_lists",
            "activity_queue_cap",
        ):
            _check(getattr(self, name) > 0, name, "must be > 0")
        _check(self.slow_down_step >= 0, "slow_down_step", "must be >= 0")
        for name in ("access_ttl", "refresh_idle_ttl", "auth_code_ttl", "activity_retention"):
            _check(_positive(getattr(self, name)), name, "must be > 0")
        for name in ("token_rps", "rps", "cursor_ttl"):
            value: float | None = getattr(self, name)
            _check(value is None or _positive(value), name, "must be None or > 0")
        _check(self.daily_quota is None or self.daily_quota >= 0, "daily_quota", ">= 0 or None")
        for label, rate in self.endpoint_rps.items():
            _check(_positive(rate), "endpoint_rps", f"{label}: must be > 0")
        _check(self.token_error_status in (400, 401), "token_error_status", "400 or 401")
        _check(self.list_cap_status in (400, 409), "list_cap_status", "400 or 409")
        _check(self.privileges <= DEFAULT_PRIVILEGES, "privileges", "unknown privilege")
        _check(len(self.signup_actions) == 2, "signup_actions", "(created, updated)")
        _check(_finite(self.activity_delay) and self.activity_delay >= 0, "activity_delay", ">= 0")
        _check(0 <= self.activity_jitter <= 1, "activity_jitter", "must be in [0, 1]")
        _check(_positive(self.activity_rows_per_second), "activity_rows_per_second", "> 0")
        try:
            self.activity_error_format.format(line=1, email="a@b.c", message="m")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"SimulatorConfig.activity_error_format: {exc!r}") from None
        for name in (
            "interleave_rate",
            "signup_conflict_rate",
            "activity_fail_rate",
            "activity_cancel_rate",
            "activity_timeout_rate",
            "error_rate",
            "reset_rate",
            "error_after_commit_rate",
            "lose_answer_rate",
        ):
            probability: float = getattr(self, name)
            _check(0 <= probability <= 1, name, "must be a probability in [0, 1]")
        for label, probability in self.route_error_rates.items():
            _check(0 <= probability <= 1, "route_error_rates", f"{label}: not a probability")
        _check(
            self.activity_fail_rate + self.activity_cancel_rate + self.activity_timeout_rate <= 1,
            "activity_fail_rate",
            "the three activity outcome rates add up to more than 1",
        )
        _check(self.error_rate + self.reset_rate <= 1, "error_rate", "error_rate + reset_rate > 1")
        for name in ("latency_ms", "latency_jitter_ms"):
            _check(_finite(getattr(self, name)) and getattr(self, name) >= 0, name, "must be >= 0")


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _check(ok: bool, name: str, problem: str) -> None:
    if not ok:
        raise ValueError(f"SimulatorConfig.{name}: {problem}")
