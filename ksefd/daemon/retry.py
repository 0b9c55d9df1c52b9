"""What to do after a failure (DESIGN.md convention 4): the durable tier of retries.

The client already repeats what is safe inside one call (connection resets, 5xx on replay-safe requests,
short 429s). What reaches the daemon is sorted here:

* `transient`: try the same invoice again later, after a capped exponential backoff (Postfix style:
  retry_min, doubled per attempt, at most retry_max), kept in SQLite as `next_attempt_at`;
* `hold`: a person must act (credentials unreadable or refused, a permission missing): the company is
  put on hold with that message and retried slowly (hold_retry_seconds), the other companies go on;
* `reject`: KSeF refused this invoice itself (a 400 on the send that no retry can change).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from ksefd.config import SendingOptions
from ksefd.ksef.errors import (
    ApiError,
    AuthenticationFailed,
    CredentialsError,
    Forbidden,
    KsefError,
    KsefException,
    RateLimited,
    Unauthorized,
)

Verdict = Literal["transient", "hold", "reject"]


@dataclass(frozen=True)
class Failure:
    verdict: Verdict
    code: str                 # stable: "credentials", "missing-permission", "ksef-21405", "transient", ...
    message: str              # for a person; never a secret
    retry_after: float = 0.0  # seconds KSeF asked us to wait (429)

    def as_error(self, stage: str) -> dict[str, Any]:
        return {"stage": stage, "code": self.code, "message": self.message}


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, CredentialsError):
        return Failure("hold", "credentials", f"the credentials cannot be used: {exc}")
    if isinstance(exc, AuthenticationFailed):
        if exc.retryable:
            return Failure("transient", "authentication", str(exc))
        return Failure("hold", "authentication-failed", f"KSeF refused the login: {exc}")
    if isinstance(exc, Forbidden):
        code = "missing-permission" if exc.reason_code == "missing-permissions" else exc.reason_code or "forbidden"
        return Failure("hold", code, str(exc))
    if isinstance(exc, Unauthorized):
        return Failure("hold", "unauthorized", f"KSeF does not accept the credentials (401) even after a new "
                                               f"login: {exc.detail}")
    if isinstance(exc, RateLimited):
        return Failure("transient", "rate-limited", str(exc), retry_after=exc.retry_after)
    if isinstance(exc, KsefException):
        if exc.retryable:
            return Failure("transient", f"ksef-{exc.code}", str(exc))
        return Failure("reject", f"ksef-{exc.code}", str(exc))
    if isinstance(exc, ApiError) and exc.status == 404:
        return Failure("hold", "wrong-url", f"{exc} - check [ksef] base_url / environment in the config")
    if isinstance(exc, KsefError):
        return Failure("transient", type(exc).__name__, str(exc))
    if isinstance(exc, OSError):
        return Failure("transient", "os-error", f"{type(exc).__name__}: {exc}")
    raise exc


def backoff_seconds(options: SendingOptions, attempts: int, retry_after: float = 0.0) -> float:
    """retry_min * 2^(attempts-1), at most retry_max; never sooner than KSeF's Retry-After."""
    exponent = max(0, attempts - 1)
    delay = options.retry_min_seconds * 2.0 ** min(exponent, 30)
    return max(min(delay, options.retry_max_seconds), retry_after)


def next_attempt(now: dt.datetime, options: SendingOptions, attempts: int, retry_after: float = 0.0) -> dt.datetime:
    return now + dt.timedelta(seconds=backoff_seconds(options, attempts, retry_after))
