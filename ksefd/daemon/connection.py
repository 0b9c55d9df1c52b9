"""One company's way into KSeF, shared by its outbox and inbox halves (DESIGN.md, the daemon's shape):
its credentials, its login, its session limits, the backoff of failed logins, and its hold.

Credentials are read from the files the config names (DESIGN.md config contract).

Files are read each time a company (re)connects. Errors are `CredentialsError` naming the file and the
fix; nothing secret is ever put into a message or a log.

A hold outlives its cause only until someone could have fixed it (issue #10 point 2). Besides the slow
retry every `hold_retry_seconds`, the same login is tried again at once:

* at start-up: a hold left by a previous run is re-examined by the first `ready()`, and released as soon
  as the login succeeds, so `ksefd status` never shows a reason that no longer holds;
* when a credential file changes: the size and mtime of the token, certificate, key and password files
  are compared (a few `stat` calls) at each `ready()` while the company is on hold or backing off; the
  halves ask at least every HOLD_LOOK_SECONDS while on hold, so a replaced file is noticed within seconds
  (no thread, no watcher per company);
* on `ksefd resume -c CONFIG COMPANY`: the command leaves a request in the state database (resume.py),
  which the next `ready()` takes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from ksefd.config import Company
from ksefd.i18n import N_
from ksefd.ksef import (
    ContextIdentifier,
    ContextLimits,
    Credentials,
    CredentialsError,
    KsefContext,
    KsefError,
    KsefToken,
    adopt_server_limits,
    environment,
    load_certificate,
    load_pkcs12,
)
from ksefd.store import Hold

from .advice import explain
from .credential_store import read_secret_text
from .failures import Backoff, Failure, LastingFailure, classify
from .resume import take_resume_request
from .runtime import Runtime
from .token_cleaning import note_token_cleaning
from .words import of_error, say

log = structlog.get_logger("ksefd.daemon.credentials")

_PKCS12 = (".p12", ".pfx")
HOLD_LOOK_SECONDS = 2.0     # while on hold, the halves ask ready() at least this often (credential files, resume)

Fingerprint = tuple[tuple[str, int, int] | None, ...]


def credential_fingerprint(company: Company) -> Fingerprint:
    """(path, mtime in ns, size) of each credential file the config names; None for a missing one."""
    files = company.credentials
    found: list[tuple[str, int, int] | None] = []
    for path in (files.token_file, files.certificate, files.private_key, files.private_key_password_file):
        if path is None:
            continue
        try:
            stat = path.stat()
        except OSError:
            found.append(None)
        else:
            found.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(found)


def _read_text(path: Path, what: str) -> str:
    """`what` is a message id (N_)."""
    try:
        return read_secret_text(path)          # a `.dpapi` token (Windows, `ksefd credentials set`) is decrypted
    except OSError as exc:
        raise CredentialsError(say(N_("cannot read the {what} {path}: {error}; check the path and that ksefd may "
                                      "read it"), what=say(what), path=str(path),
                                   error=str(exc.strerror or exc))) from exc
    except UnicodeDecodeError as exc:
        raise CredentialsError(say(N_("the {what} {path} is not text (UTF-8); save the token as plain text"),
                                   what=say(what), path=str(path))) from exc


def load_credentials(company: Company) -> Credentials:
    files = company.credentials
    if files.token_file is not None:
        text = _read_text(files.token_file, N_("token file"))
        note_token_cleaning(company.name, files.token_file, text)
        try:
            return KsefToken.parse(text)
        except CredentialsError as exc:
            raise CredentialsError(say(N_("{file}: {error}"), file=str(files.token_file), error=of_error(exc))) from exc
    if files.certificate is not None:
        password: bytes | None = None
        if files.private_key_password_file is not None:
            try:
                password = files.private_key_password_file.read_bytes()
            except OSError as exc:
                raise CredentialsError(say(N_("cannot read the password file {path}: {error}"),
                                           path=str(files.private_key_password_file),
                                           error=str(exc.strerror or exc))) from exc
        if files.certificate.suffix.lower() in _PKCS12:
            return load_pkcs12(files.certificate, password)
        return load_certificate(files.certificate, files.private_key, password)
    raise CredentialsError(say(N_("company {company} has neither token_file nor certificate; add one to the config"),
                               company=company.name))


@dataclass
class Connection:
    context: KsefContext
    limits: ContextLimits


async def connect(runtime: Runtime, company: Company) -> Connection:
    """Log in to the company's NIP context, adopt the rate limits KSeF reports for it (§7: on TEST they can
    differ from PRD) and read its session limits (§14.5). Raises KsefError subclasses (failures.classify)."""
    credentials = load_credentials(company)
    client = runtime.client_for(company)
    context = client.context(ContextIdentifier.nip(company.nip), credentials)
    await context.authenticate()
    await adopt_server_limits(runtime.limiter, context.auth)
    limits = await context.limits()
    log.info("daemon.connected", company=company.name, nip=company.nip,
             online_cap=limits.online_session.max_invoices, batch_cap=limits.batch_session.max_invoices)
    return Connection(context, limits)


HoldListener = Callable[[Failure | None], Awaitable[None]]


class CompanyConnection:
    """The company's login, shared by both halves, with its backoff and its hold.

    `await ready()` answers None when the company is logged in and not on hold, otherwise the seconds to wait
    before asking again; it logs in (again) when needed, one attempt at a time for both halves. A failure a
    person must fix puts the company on hold (store `company_holds`, shown by `ksefd status`): listeners
    (the outbox moves its waiting invoices to HELD) are told, and every `hold_retry_seconds` the login is
    tried again with freshly read credential files; when it succeeds the hold is released and the
    listeners are told again (with None)."""

    def __init__(self, runtime: Runtime, company: Company) -> None:
        self.runtime = runtime
        self.company = company
        self.current: Connection | None = None
        self.login_error: str | None = None            # the last login's failure, None once one succeeded
        self._examined = False           # a hold from a previous run is re-examined by the first ready()
        self._fingerprint: Fingerprint | None = None   # the credential files as the last login attempt read them
        self._lock = asyncio.Lock()
        self._backoff = Backoff(company.sending.retry_min_seconds, company.sending.retry_max_seconds)
        self._retry_at: dt.datetime | None = None
        self._listeners: list[HoldListener] = []
        self._logins: list[Callable[[], None]] = []
        self._failing = LastingFailure(log.bind(company=company.name), "daemon.connect_failed")
        self.last_failure: Failure | None = None      # the last login failure (issue #11: availability), or None

    # --- what the halves use --------------------------------------------------------------------

    @property
    def context(self) -> KsefContext:
        if self.current is None:
            raise RuntimeError(f"company {self.company.name} is not connected to KSeF")
        return self.current.context

    @property
    def limits(self) -> ContextLimits | None:
        return self.current.limits if self.current is not None else None

    @property
    def features(self) -> tuple[str, ...]:
        """On TEST and DEMO, ask for the NIP checksum checks PROD always makes (PROTOCOL.md §14.3), so an
        invoice PROD would refuse (450) is refused there too, before it reaches production."""
        return ("subject-identifier-validation",) if self.company.environment in ("test", "demo") else ()

    @property
    def qr_host(self) -> str:
        return environment(self.company.environment, self.company.base_url).qr_url

    def on_hold_change(self, listener: HoldListener) -> None:
        """`listener(failure)` after the company is put on hold; `listener(None)` after it is released."""
        self._listeners.append(listener)

    def on_login(self, listener: Callable[[], None]) -> None:
        """`listener()` after each new login (e.g. the online channel forgets the old login's sessions)."""
        self._logins.append(listener)

    async def hold_record(self) -> Hold | None:
        return await self.runtime.store.holds.get(self.company.name)

    # --- logging in -----------------------------------------------------------------------------

    async def ready(self) -> float | None:
        """Connected and not on hold: None. Otherwise the seconds to wait before looking again (at most
        HOLD_LOOK_SECONDS while on hold, so a fixed credential file or `ksefd resume` is seen soon)."""
        async with self._lock:
            wait = await self._ready()
            if wait is not None and wait > HOLD_LOOK_SECONDS and await self.hold_record() is not None:
                wait = HOLD_LOOK_SECONDS
            return wait

    async def _ready(self) -> float | None:
        hold = await self.hold_record()
        now = self.runtime.clock.now()
        if self.current is not None and hold is None:
            return None
        waiting = hold is not None and hold.next_retry_at is not None and now < hold.next_retry_at
        backing_off = self._retry_at is not None and now < self._retry_at
        if waiting or backing_off:
            why = await self._look_again(hold)
            if why is None:
                if waiting:
                    assert hold is not None and hold.next_retry_at is not None
                    return min((hold.next_retry_at - now).total_seconds(), HOLD_LOOK_SECONDS)
                assert self._retry_at is not None
                return (self._retry_at - now).total_seconds()
            log.info("daemon.login_retried_now", company=self.company.name, why=why,
                     on_hold=hold.code if hold is not None else None)
        try:
            self.current = await self._connect()
        except KsefError as exc:
            failure = classify(exc)
            if failure.verdict == "hold":
                await self.hold(failure)
                return self.company.sending.hold_retry_seconds
            self.last_failure = failure
            delay = self._backoff.next_delay()
            self._retry_at = now + dt.timedelta(seconds=delay)
            self._failing.failed(company=self.company.name, error=failure.message, retry_in=delay)
            return delay
        self._backoff.reset()
        self._retry_at = None
        self.last_failure = None
        self._failing.cleared(company=self.company.name)
        for listener in self._logins:
            listener()
        if hold is not None:
            await self.release()
        return None

    def retry_now(self) -> None:
        """KSeF is back (issue #11: Latarnia says so): the next `ready()` logs in at once, not after the backoff."""
        self._retry_at = None
        self._backoff.reset()

    # --- holds ----------------------------------------------------------------------------------

    async def hold(self, failure: Failure) -> None:
        """Put the company on hold (or renew the hold): nothing is sent until a login succeeds again."""
        until = self.runtime.clock.now() + dt.timedelta(seconds=self.company.sending.hold_retry_seconds)
        failure = explain(self.company, failure)     # where to fix it, for this company (advice.py)
        first = await self.hold_record() is None
        # The reason is kept as message ids with values and put into words when shown (words.py: right after
        # a change of `language`, too); the log line below stays English.
        await self.runtime.store.holds.hold(self.company.name, failure.code, failure.stored_reason(), until)
        self.current = None
        for listener in self._listeners:
            await listener(failure)
        report = log.error if first else log.info
        report("outbox.company_on_hold", company=self.company.name, code=failure.code, reason=failure.message,
               retry_at=until.isoformat())

    async def release(self) -> None:
        await self.runtime.store.holds.release(self.company.name)
        for listener in self._listeners:
            await listener(None)
        log.info("outbox.company_resumed", company=self.company.name)

    # --- re-examining a hold (issue #10 point 2) ------------------------------------------------

    async def _connect(self) -> Connection:
        """`connect`, noting what the credential files looked like and how the login ended."""
        self._examined = True
        self._fingerprint = credential_fingerprint(self.company)
        await take_resume_request(self.runtime.store, self.company.name)   # this login is the one asked for
        try:
            connection = await connect(self.runtime, self.company)
        except KsefError as exc:
            self.login_error = classify(exc).text()     # for people (`--once`)
            raise
        self.login_error = None
        return connection

    async def _look_again(self, hold: Hold | None) -> str | None:
        """Why the login should be tried now rather than at the planned retry (None: no reason)."""
        if not self._examined and hold is not None:
            return "start-up"                  # the hold is from a previous run: its cause may be gone
        if self._fingerprint is not None and credential_fingerprint(self.company) != self._fingerprint:
            return "credential file changed"
        if await take_resume_request(self.runtime.store, self.company.name):
            return "ksefd resume"
        return None
