"""What to do after a failure (DESIGN.md convention 4), for both halves of the daemon: one classification,
one backoff, and one way to log a failure that lasts.

The client already repeats what is safe inside one call (connection resets, 5xx on replay-safe requests,
short 429s). What reaches the daemon is sorted here:

* `transient`: try again later, after a capped exponential backoff (Postfix style: the first delay,
  doubled per attempt, at most the cap; never sooner than KSeF's Retry-After). The outbox keeps it in
  SQLite as the invoice's `next_attempt_at`; the inbox per subject type;
* `hold`: a person must act (credentials unreadable or refused, a permission missing): the company is
  put on hold with that message and retried slowly (hold_retry_seconds), the other companies go on;
* `reject`: KSeF refused this request itself (a 400 that no retry can change).

A loop that fails every round (KSeF down for an hour, a full disk) must not write the same error every
few seconds: `LastingFailure` logs it when it starts, then at a slow interval with a count, and once when
it clears.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ksefd.config import SendingOptions
from ksefd.i18n import N_
from ksefd.ksef import (
    ApiError,
    AuthenticationFailed,
    CredentialsError,
    Forbidden,
    KsefError,
    KsefException,
    RateLimited,
    Unauthorized,
    UnreadableRequest,
)

from .permission_words import missing_permission_text
from .words import Words, dump, english, of_error, render, say

Verdict = Literal["transient", "hold", "reject"]
LASTING_LOG_INTERVAL = 300.0      # seconds between repeats of a failure that lasts


@dataclass(frozen=True)
class Failure:
    verdict: Verdict
    code: str                 # stable: "credentials", "missing-permission", "ksef-21405", "transient", ...
    message: str              # for a person; never a secret
    retry_after: float = 0.0  # seconds KSeF asked us to wait (429)
    needed_permission: str | None = None          # a 403 missing-permissions: the one to grant (advice.py)
    present_permissions: tuple[str, ...] = ()
    words: Words = ()         # the message as message ids with values (words.py): shown in any language

    def text(self, language: str | None = None) -> str:
        """The message for people, in `language` (default: the current one); `message` is the log's English."""
        return render(self.words, language) if self.words else self.message

    def stored_reason(self) -> str:
        """What the store keeps as a hold's reason: put into words when shown (words.py says why)."""
        return dump(self.words) if self.words else self.message

    def as_error(self, stage: str) -> dict[str, Any]:
        return {"stage": stage, "code": self.code, "message": self.text()}

    @property
    def about_credentials(self) -> bool:
        """The login itself failed: both halves of the company are affected, not one request."""
        return self.code in ("credentials", "authentication-failed", "unauthorized")


def worded(verdict: Verdict, code: str, words: Words, **more: Any) -> Failure:
    """A Failure whose message people read in their language (the log keeps the English)."""
    return Failure(verdict, code, english(words), words=words, **more)


def classify(exc: BaseException) -> Failure:
    """The one classification of failures for the outbox and the inbox. The values are the client's own
    words (English, as in the log); the sentence around them is in the reader's language."""
    if isinstance(exc, CredentialsError):
        return worded("hold", "credentials", say(N_("the credentials cannot be used: {error}"), error=of_error(exc)))
    if isinstance(exc, AuthenticationFailed):
        if exc.retryable:
            return Failure("transient", "authentication", str(exc), words=exc.words)
        return worded("hold", "authentication-failed", say(N_("KSeF refused the login: {error}"), error=of_error(exc)))
    if isinstance(exc, Forbidden):
        if exc.reason_code == "missing-permissions":
            words, needed = missing_permission_text(exc.required_permissions, exc.present_permissions, exc.detail)
            return worded("hold", "missing-permission", words, needed_permission=needed,
                          present_permissions=tuple(exc.present_permissions))
        return worded("hold", exc.reason_code or "forbidden",
                      say(N_("KSeF refused the request (403): {error}"), error=of_error(exc)))
    if isinstance(exc, Unauthorized):
        return worded("hold", "unauthorized", say(N_("KSeF does not accept the credentials (401) even after a new "
                                                     "login: {error}"), error=exc.detail))
    if isinstance(exc, RateLimited):
        return Failure("transient", "rate-limited", str(exc), retry_after=exc.retry_after)
    if isinstance(exc, UnreadableRequest):
        # 21001: KSeF could not read what ksefd sent. The invoice is not at fault and a retry sends the same
        # bytes: a person (a ksefd maintainer) must look, so the company waits instead of rejecting invoices.
        return worded("hold", "ksef-21001", say(N_("KSeF could not read a request ksefd sent (21001): {error}. This "
                                                   "is a fault in ksefd, not in the invoice; report it with the "
                                                   "log"), error=str(exc)))
    if isinstance(exc, KsefException):
        if exc.retryable:
            return Failure("transient", f"ksef-{exc.code}", str(exc))
        return Failure("reject", f"ksef-{exc.code}", str(exc))
    if isinstance(exc, ApiError) and exc.status == 404:
        return worded("hold", "wrong-url", say(N_("{error} - check [ksef] base_url / environment in the config"),
                                               error=of_error(exc)))
    if isinstance(exc, KsefError):        # its own words, if the client gave them (a connection failure)
        return Failure("transient", type(exc).__name__, str(exc), words=exc.words)
    if isinstance(exc, OSError):
        return Failure("transient", "os-error", f"{type(exc).__name__}: {exc}")
    return Failure("transient", "unexpected", f"{type(exc).__name__}: {exc}")


def backoff_delay(first: float, cap: float, attempts: int, retry_after: float = 0.0) -> float:
    """first * 2^(attempts-1), at most `cap`; never sooner than KSeF's Retry-After."""
    exponent = max(0, attempts - 1)
    return max(min(first * 2.0 ** min(exponent, 30), cap), retry_after)


@dataclass
class Backoff:
    """Capped exponential delays for a run of failures (a login, an inbox subject type)."""

    first: float = 60.0
    cap: float = 3600.0
    failures: int = 0

    def next_delay(self, retry_after: float = 0.0) -> float:
        self.failures += 1
        return backoff_delay(self.first, self.cap, self.failures, retry_after)

    def reset(self) -> None:
        self.failures = 0


def backoff_seconds(options: SendingOptions, attempts: int, retry_after: float = 0.0) -> float:
    """An invoice's durable retry delay after `attempts` attempts (kept in SQLite as next_attempt_at)."""
    return backoff_delay(options.retry_min_seconds, options.retry_max_seconds, attempts, retry_after)


def next_attempt(now: dt.datetime, options: SendingOptions, attempts: int, retry_after: float = 0.0) -> dt.datetime:
    return now + dt.timedelta(seconds=backoff_seconds(options, attempts, retry_after))


class LastingFailure:
    """Logs a repeating failure once when it starts, then at most every `interval` seconds (with how many
    times it happened since), and once when it clears. Real time: this is about log volume, not business."""

    def __init__(self, log: Any, event: str, interval: float = LASTING_LOG_INTERVAL,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._event = event
        self._interval = interval
        self._monotonic = monotonic
        self._since: float | None = None
        self._last_logged = 0.0
        self._count = 0

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, **fields: Any) -> None:
        now = self._monotonic()
        self._count += 1
        if self._since is None:
            self._since, self._last_logged, self._count = now, now, 1
            self._log.error(self._event, **fields)
        elif now - self._last_logged >= self._interval:
            self._last_logged = now
            self._log.error(self._event, still_failing_seconds=round(now - self._since), times=self._count,
                            **fields)

    def cleared(self, **fields: Any) -> None:
        if self._since is None:
            return
        self._log.info(f"{self._event}.cleared", failed_seconds=round(self._monotonic() - self._since),
                       times=self._count, **fields)
        self._since, self._count = None, 0
