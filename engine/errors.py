"""Every error the engine raises, split by what the caller should do next.

```
EngineError
 ├── ConfigError                  bad configuration: fix it and run again (nothing was written)
 ├── SourceError                  the input source cannot be read at all
 ├── ApiError                     an answer (or no answer) from the API
 │    ├── RetryableApiError       try the same request again later
 │    │    ├── ThrottledError      the API refused for rate; honours retry_after
 │    │    ├── ServerError         5xx
 │    │    ├── ConnectionLostError connection refused/reset, timeout
 │    │    └── MalformedResponseError  the body did not parse (truncated, oversize, not XML)
 │    ├── SkippableApiError       give up on this contact, the run goes on
 │    │    ├── NotFoundError       404
 │    │    ├── ConflictError       409 (the email or list name exists)
 │    │    ├── BadRequestError     400 (field too long, missing list, malformed entry)
 │    │    └── DoNotMailError      403 on a contact write: the contact opted out
 │    └── FatalApiError           stop the run: nothing later can succeed
 │         ├── AuthenticationError 401: key%username or password wrong
 │         ├── AccessDeniedError   403: trailing slash, http instead of https, other account
 │         ├── UnsupportedMediaError 415: a bug in the request we built
 │         └── QuotaExhaustedError the daily request budget is spent
 └── PipelineError                a stage failed; carries the stage name
```

Messages name the likely cause, because the v1 API's own error bodies rarely do. No error
ever carries a password or API key: URLs are stored without userinfo, and bodies are trimmed
excerpts of what the server sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "AccessDeniedError",
    "ActivityTooLargeError",
    "ApiError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "ConflictError",
    "ConnectionLostError",
    "DoNotMailError",
    "EngineError",
    "FatalApiError",
    "MalformedResponseError",
    "NotFoundError",
    "OutputError",
    "PipelineError",
    "QuotaExhaustedError",
    "RetryableApiError",
    "RunStoppedError",
    "ServerError",
    "SkippableApiError",
    "SourceError",
    "ThrottledError",
    "UnsafeMergeError",
    "UnsupportedMediaError",
    "unknown_lists_message",
]


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""


class ConfigError(EngineError):
    """Raised when the configuration cannot work; nothing has been written."""


class UnsafeMergeError(EngineError):
    """Raised when a write would not keep every membership; it is never sent."""


class ActivityTooLargeError(ConfigError):
    """Raised before sending when a bulk request exceeds the row or byte cap."""


class SourceError(EngineError):
    """Raised when the input source cannot be opened or decoded as a whole."""


class ApiError(EngineError):
    """Raised for an answer of the API that is not a success.

    Attributes:
        status: HTTP status code, or None when no answer arrived.
        method: HTTP method of the request.
        url: the request URL (never with credentials in it).
        body: the first 500 characters of the error body, as text.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str = "",
        url: str = "",
        body: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.method = method
        self.url = url
        self.body = body

    def __str__(self) -> str:
        # The query is left out: a search URL carries up to 50 email addresses, and emails
        # belong in the report, not in logs and error lines.
        url, mark, _ = self.url.partition("?")
        where = f"{self.method} {url}{'?…' if mark else ''}".strip()
        status = f"{self.status} " if self.status is not None else ""
        return f"{status}{self.message}" + (f" ({where})" if where else "")


# --- retry: the same request may succeed later ------------------------------------------


class RetryableApiError(ApiError):
    """Raised when the request can safely be sent again after a pause."""


class ThrottledError(RetryableApiError):
    """Raised when the API refused the request for rate (429, or a 403 naming the limit).

    Attributes:
        retry_after: seconds the server asked us to wait, when it said so.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        method: str = "",
        url: str = "",
        body: str = "",
    ) -> None:
        super().__init__(message, status=status, method=method, url=url, body=body)
        self.retry_after = retry_after


class ServerError(RetryableApiError):
    """Raised for a 5xx answer."""


class ConnectionLostError(RetryableApiError):
    """Raised when no answer arrived: refused, reset, or timed out."""


class MalformedResponseError(RetryableApiError):
    """Raised when a success answer cannot be parsed: truncated, oversize or not XML.

    Retryable because a truncated body is most often a transient network fault; if it
    persists past the retry budget the contact is recorded as failed.
    """


# --- skip: this contact cannot be done, the run goes on ---------------------------------


class SkippableApiError(ApiError):
    """Raised when this one contact or request cannot succeed; the run goes on."""


class NotFoundError(SkippableApiError):
    """Raised for a 404: the contact, list or activity does not exist (any more)."""


class ConflictError(SkippableApiError):
    """Raised for a 409: the email (in any status) or list name already exists.

    Attributes:
        after_retry: the 409 answered a retry: an earlier attempt of the same POST got no
            answer (or a 5xx), so the server may have applied it and the conflict may be
            with what that attempt created.
    """

    after_retry: bool = False


class BadRequestError(SkippableApiError):
    """Raised for a 400: the server rejected the content (lengths, lists, XML)."""


class DoNotMailError(SkippableApiError):
    """Raised for a 403 on a contact write: the contact is on the Do Not Mail list."""


# --- stop: nothing later can succeed ----------------------------------------------------


class FatalApiError(ApiError):
    """Raised when the whole run must stop; the message says what to change."""


class AuthenticationError(FatalApiError):
    """Raised for a 401: the API key, username or password is wrong."""


class AccessDeniedError(FatalApiError):
    """Raised for a 403 that is neither throttling nor Do Not Mail."""


class UnsupportedMediaError(FatalApiError):
    """Raised for a 415: the engine built a request the API does not accept."""


class QuotaExhaustedError(FatalApiError):
    """Raised when the daily request budget is spent; the run can resume after the reset."""


class OutputError(EngineError):
    """Raised when the report or the journal cannot be written mid-run (a full or read-only
    disk). The account holds every write already made; rerunning resumes."""


class RunStoppedError(EngineError):
    """Raised when a run that had started stops on an error the user must fix first (a
    login refused mid-run, a privilege withdrawn): unlike the same error at start-up, writes
    may have been made, all journaled; the message says what to fix and that the same
    command then resumes."""


class PipelineError(EngineError):
    """Raised when a pipeline stage fails; `stage` names it and `__cause__` is the error.

    Attributes:
        stage: the stage that failed ("read", "fetch", "merge", "put", "bulk", "record").
    """

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"the {stage} stage failed: {cause}")
        self.stage = stage


def unknown_lists_message(unknown: Sequence[str], have: Iterable[str]) -> str:
    """Why `unknown` list names cannot be used, and what to do: "did you mean" for a name
    that differs from an existing one only in case (creating it would fail, or make a
    look-alike), `--create-lists` otherwise."""
    existing = sorted(have)
    by_fold = {n.casefold(): n for n in existing}
    cased = {n: by_fold[n.casefold()] for n in unknown if n.casefold() in by_fold}
    if cased:
        return (
            "; ".join(f"no list {name!r}; did you mean {match!r}?" for name, match in cased.items())
            + " (list names are matched exactly)"
        )
    shown = ", ".join(repr(n) for n in existing) or "none"
    return (
        f"unknown list name(s) {', '.join(repr(n) for n in unknown)}; the account has: "
        f"{shown}. Fix the name, or pass --create-lists to create them."
    )
