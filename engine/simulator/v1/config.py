"""Settings of the v1 API simulator.

Every point that `ctct-v1-api.md` marks unknown ([U]) or inferred ([I]) is a field here, with
the document's suggested default, so a test can pin the behaviour it depends on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

__all__ = ["SimulatorConfig"]

_USERNAME = re.compile(r"[A-Za-z0-9._@-]+")
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]+)?")

_USERNAME = re.compile(r"[A-Za-z0-9._@-]+")
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]+)?")

BulkSemantics = Literal["append", "replace"]
DnmPutRule = Literal["adding-lists", "any"]
UnfinishedActivities = Literal["run", "error"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatorConfig:
    """How the simulator listens, whom it trusts, and which variant of each [U] behaviour it plays.

    Times are float seconds unless the name says `_ms`. Rates are probabilities in [0, 1].

    Attributes:
        host: Address to bind; tests and the demo use loopback only.
        port: TCP port of the API listener; 0 picks a free port.
        tls: Serve https with a locally generated CA. `False` serves the API over plain http
            (loopback use only).
        http_port: With TLS on, an extra plain-http listener that refuses every request
            (`None` = no such listener, 0 = free port). §2.1: http is rejected.
        plain_http_status: Status of that refusal, 403 or 401 ([U] §2.1, open question 1).
        ca_dir: Folder for the CA certificate file; `None` = a temporary folder.
        username: The account name, the `{username}` path segment.
        api_key: The API key; the Basic user is `{api_key}%{username}`.
        password: The account password.
        id_host: Host of the http-scheme ids, whatever the listening address (§1.2).
        realm: Realm of the `WWW-Authenticate: Basic` challenge ([U] §2.1, question 3).
        username_mismatch_status: Status when the path names another account: 401 (P4) or 403
            (P3) ([U] §2.2, question 2).
        username_case_insensitive: Match the path username case-insensitively ([I] §1.2).
        location_headers: Send `Location` on 201 answers ([I] §4.5, question 10).
        search_miss_500: Answer 500 when an `?email=` search finds nothing, instead of an empty
            feed ([C] §4.2: both were documented).
        max_search_emails: Most `email` parameters per search; more give 400 (§4.2).
        page_size: Entries per feed page (§1.3).
        raw_ampersand_in_links: Reproduce a real-server bug: the `rel="current"` href of a
            multi-email search carried a bare `&` (capture `multiple_contacts_by_emails.xml`),
            which makes the document not well-formed XML. Off by default.
        bare_list_entry: Answer `GET lists/{id}` with a `ContactList` that has neither the
            namespace nor an id, as the captured `contactlistsindividuallist.xml` does. Off
            by default: clients written against the real server read
            `atom:content/ns:ContactList` with `http://ws.constantcontact.com/ns/1.0/`, as
            the lists feed has it. The engine reads both.
        max_email_length: Field length limits ([U] §4.4, question 11; the doc's suggestion).
        max_name_length: Limit for names, job title, company, phones, address lines, city,
            state and country.
        max_postal_length: Limit for postal and sub-postal codes.
        max_custom_field_length: Limit for `CustomField1`…`CustomField15`.
        max_note_length: Limit for `Note`.
        max_list_name_length: Limit for list names (§5.1: 255).
        dnm_put_rule: Which customer PUT on a Do Not Mail contact gets 403: one that adds lists
            (`"adding-lists"`) or any (`"any"`) ([U] §4.6).
        put_clears_absent_fields: A PUT replaces the whole contact, so detail elements missing
            from the body are cleared ([I] §4.6: "must contain all elements"); `False` keeps them.
        activity_delay: Mean time from an activity's POST to its completion.
        activity_jitter: Each activity's delay is drawn uniformly in
            `activity_delay * (1 ± activity_jitter)`, so activities finish out of order (§6.4).
        activity_error_rate: Probability that an activity ends in `ERROR` with nothing applied.
        unfinished_activities: What an app started on a store does with the activities the
            store holds unfinished (`PENDING`/`RUNNING`, from an earlier app or a state file):
            `"run"` them to completion, as the real server does whatever its clients do, or
            mark them `"error"` with nothing more applied (a server that lost its queue).
        bulk_semantics: How an add activity treats existing memberships: `"append"` (the real
            behaviour, [I, strong] §6.3) or `"replace"` (to test the engine's safety check).
        bulk_max_rows: Most data rows per activity ([C] P27: 20,000).
        bulk_max_bytes: Most bytes of `data` per activity ([U] §6.4; v3's 4 MB).
        bulk_truncate: Over a cap, keep what fits and report a line error instead of 400 ([I]).
        bulk_ignore_unknown_columns: Ignore unknown `data` columns instead of 400 ([U] §6.2).
        bulk_empty_cells_clear: An empty cell clears the field ([U] §6.3, question 7).
        bulk_skip_dnm_rows: Skip Do Not Mail rows silently instead of reporting a line error
            ([U] §6.3, question 8).
        rate_limit: Requests per second allowed per API key (token bucket); `None` = no limit.
        rate_burst: Bucket size; `None` = `max(1, ceil(rate_limit))`.
        daily_quota: Requests per UTC day per API key; `None` = no quota.
        throttle_status: Status of throttle and quota refusals: 403 (Mashery), 429 or 503
            ([U] §7, question 9).
        retry_after: `Retry-After` seconds sent with refusals; `None` = header not sent (§7).
        latency_ms: Fixed latency added to every `/ws/` request.
        latency_jitter_ms: Extra latency: uniform in `[0, latency_jitter_ms]`, or the scale
            of a log-normal tail when `latency_lognormal` is set.
        latency_lognormal: Draw the extra latency from a log-normal with median
            `latency_jitter_ms` (the doc's suggestion for benchmarks, §11).
        error_rate: Probability of answering 500 or 503 instead of serving (no effect).
        reset_rate: Probability of aborting the connection without an answer (no effect).
        lose_answer_rate: Probability that a successful write (POST, PUT, DELETE) is applied
            and its answer lost: the connection is aborted after the handler ran.
        route_lose_rates: Extra probabilities of a lost answer by route label (as the
            statistics name routes, e.g. `POST activities`).
        seed: Seed of the one random generator behind faults and jitter (activity ids are
            random whatever the seed, so that a restarted server never repeats one).
    """

    host: str = "127.0.0.1"
    port: int = 0
    tls: bool = True
    http_port: int | None = None
    plain_http_status: int = 403
    ca_dir: Path | None = None

    username: str = "demo"
    api_key: str = field(default="demo-key", repr=False)
    password: str = field(default="demo-password", repr=False)
    id_host: str = "api.constantcontact.com"
    realm: str = "api.constantcontact.com"
    username_mismatch_status: int = 401
    username_case_insensitive: bool = True
    location_headers: bool = True

    search_miss_500: bool = False
    max_search_emails: int = 50
    page_size: int = 50
    raw_ampersand_in_links: bool = False
    bare_list_entry: bool = False
    max_email_length: int = 80
    max_name_length: int = 50
    max_postal_length: int = 25
    max_custom_field_length: int = 50
    max_note_length: int = 500
    max_list_name_length: int = 255
    dnm_put_rule: DnmPutRule = "adding-lists"
    put_clears_absent_fields: bool = True

    activity_delay: float = 1.0
    activity_jitter: float = 0.5
    activity_error_rate: float = 0.0
    unfinished_activities: UnfinishedActivities = "run"
    bulk_semantics: BulkSemantics = "append"
    bulk_max_rows: int = 20_000
    bulk_max_bytes: int = 4 * 1024 * 1024
    bulk_truncate: bool = False
    bulk_ignore_unknown_columns: bool = False
    bulk_empty_cells_clear: bool = False
    bulk_skip_dnm_rows: bool = False

    rate_limit: float | None = None
    rate_burst: int | None = None
    daily_quota: int | None = None
    throttle_status: int = 403
    retry_after: float | None = None

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    latency_lognormal: bool = False
    error_rate: float = 0.0
    reset_rate: float = 0.0
    lose_answer_rate: float = 0.0
    route_lose_rates: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    seed: int = 0

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, "port", "must be in 0..65535")
        _check(
            self.http_port is None or 0 <= self.http_port <= 65535,
            "http_port",
            "must be None or in 0..65535",
        )
        _check(self.plain_http_status in (401, 403), "plain_http_status", "must be 401 or 403")
        _check(
            self.username_mismatch_status in (401, 403),
            "username_mismatch_status",
            "must be 401 or 403",
        )
        _check(bool(self.host), "host", "must not be empty")
        for name in ("username", "api_key", "password"):
            value: str = getattr(self, name)
            _check(bool(value) and ":" not in value, name, "must be non-empty and without ':'")
        _check("%" not in self.api_key, "api_key", "must not contain '%'")
        # §2.1: usernames are made of a-zA-Z0-9._-@; nothing in them needs escaping anywhere.
        _check(_USERNAME.fullmatch(self.username) is not None, "username", "only a-zA-Z0-9._-@")
        _check(_HOST.fullmatch(self.id_host) is not None, "id_host", "must be a host[:port]")
        for name in (
            "max_search_emails",
            "page_size",
            "max_email_length",
            "max_name_length",
            "max_postal_length",
            "max_custom_field_length",
            "max_note_length",
            "max_list_name_length",
            "bulk_max_rows",
            "bulk_max_bytes",
        ):
            _check(getattr(self, name) > 0, name, "must be > 0")
        _check(self.dnm_put_rule in ("adding-lists", "any"), "dnm_put_rule", "unknown rule")
        _check(self.bulk_semantics in ("append", "replace"), "bulk_semantics", "unknown value")
        _check(_finite(self.activity_delay) and self.activity_delay >= 0, "activity_delay", ">= 0")
        _check(0 <= self.activity_jitter <= 1, "activity_jitter", "must be in [0, 1]")
        _check(
            self.unfinished_activities in ("run", "error"),
            "unfinished_activities",
            "must be 'run' or 'error'",
        )
        for name in ("activity_error_rate", "error_rate", "reset_rate", "lose_answer_rate"):
            rate: float = getattr(self, name)
            _check(0 <= rate <= 1, name, "must be a probability in [0, 1]")
        _check(self.error_rate + self.reset_rate <= 1, "error_rate", "error_rate + reset_rate > 1")
        for label, probability in self.route_lose_rates.items():
            _check(0 <= probability <= 1, "route_lose_rates", f"{label}: not a probability")
        _check(
            self.rate_limit is None or (_finite(self.rate_limit) and self.rate_limit > 0),
            "rate_limit",
            "must be None or > 0",
        )
        _check(self.rate_burst is None or self.rate_burst >= 1, "rate_burst", "must be >= 1")
        _check(self.daily_quota is None or self.daily_quota >= 0, "daily_quota", "must be >= 0")
        _check(self.throttle_status in (403, 429, 503), "throttle_status", "403, 429 or 503")
        _check(
            self.retry_after is None or (_finite(self.retry_after) and self.retry_after >= 0),
            "retry_after",
            "must be None or >= 0",
        )
        for name in ("latency_ms", "latency_jitter_ms"):
            _check(_finite(getattr(self, name)) and getattr(self, name) >= 0, name, "must be >= 0")

    @property
    def effective_burst(self) -> int:
        """Token-bucket size actually used (`rate_burst`, or one second's worth of requests)."""
        if self.rate_burst is not None:
            return self.rate_burst
        return max(1, math.ceil(self.rate_limit or 1))


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _check(ok: bool, name: str, problem: str) -> None:
    if not ok:
        raise ValueError(f"SimulatorConfig.{name}: {problem}")
