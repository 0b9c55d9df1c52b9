"""`ksefd check -c CONFIG [COMPANY…]`: does the set-up work, before invoices are at stake (issue #12 item 3)?

In order: the config (loaded by the CLI), data_dir and the state database (check_local.py); each KSeF target
answers, and how far this machine's clock is from KSeF's (the `Date` header); Latarnia, where the
environment has one; then per company: its folders, its credential files and their expiry, a real login into
its NIP context, its permissions (`POST /permissions/query/personal/grants` with the 2.9.0 `ownerPermissions`;
a token's own permissions from `GET /tokens/{ref}`) and whether they allow what the config asks: sending
needs InvoiceWrite, receiving needs InvoiceRead (PROTOCOL.md §9.2, openapi.json `x-required-permissions`).
Each problem comes with the fix to apply. The login is logged out at the end (DELETE /auth/sessions/current).

A company fails when it cannot do what its config asks; warnings (an expiring certificate, token login ending
on 31.12.2026, clock skew, Latarnia reporting a failure) do not fail it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from ksefd.clock import Clock, SystemClock, warsaw_date
from ksefd.config import Company, Config
from ksefd.ksef import (
    AuthenticationFailed,
    CertificateCredentials,
    ContextIdentifier,
    Credentials,
    Environment,
    KsefClient,
    KsefContext,
    KsefError,
    KsefToken,
    RateLimiter,
    RetryPolicy,
    Transport,
    personal_permissions,
    token_permissions,
)
from ksefd.store import Store

from .check_local import CERTIFICATE_FIX, check_credentials, check_folders, check_general
from .check_report import CheckReport, CompanyCheck

log = structlog.get_logger("ksefd.daemon.check")

SKEW_WARNING_SECONDS = 30.0
CONCURRENCY = 4                        # companies checked at once (each login polls KSeF)
PROBE_RETRY = RetryPolicy(attempts=2, base_delay=0.5, max_delay=2.0, max_retry_after=30.0)
# [INFER] Before 2.9.0 KSeF did not list an owner's rights; a certificate naming the company's own NIP is its
# owner (PROTOCOL.md §9.2: Owner comes from ZAW-FA or the NIP<->PESEL link, and implies these).
OWNER_BEFORE_2_9 = ("CredentialsManage", "CredentialsRead", "Introspection", "InvoiceRead", "InvoiceWrite",
                    "SubunitManage")
NEEDS = {"send": "InvoiceWrite", "receive": "InvoiceRead"}


@dataclass
class _Target:
    client: KsefClient
    reachable: bool = False


def skew_seconds(server_date: str, before: dt.datetime, after: dt.datetime) -> float | None:
    """KSeF's clock minus ours, from an HTTP `Date` header and the local times around the request (the
    header has whole seconds, so differences below ~1 s plus the round trip mean nothing)."""
    try:
        server = email.utils.parsedate_to_datetime(server_date)
    except (TypeError, ValueError):
        return None
    if server.tzinfo is None:
        return None
    middle = before + (after - before) / 2
    return (server - middle).total_seconds()


async def run_check(config: Config, names: Sequence[str] = (), *, clock: Clock | None = None,
                    status_url: Callable[[Environment], str] | None = None) -> CheckReport:
    """Check the companies named in `names` (all when empty). `status_url(environment)` gives the Latarnia
    base URL to ask (default: the environment's own, none for a base_url set in the config)."""
    clock = clock or SystemClock()
    report = CheckReport(config=str(config.source), checked_at=clock.now().isoformat(timespec="seconds"))
    check_general(report, config)
    companies = _selected(report, config, names)
    limiter = RateLimiter(now=lambda: clock.now().timestamp(), sleep=clock.sleep)
    await _observe_daemon_limits(limiter, config)
    targets: dict[tuple[str, str | None], _Target] = {}
    try:
        for company in companies:
            key = (company.environment, company.base_url)
            if key not in targets:
                targets[key] = _Target(KsefClient(company.environment, base_url=company.base_url, clock=clock,
                                                  gate=limiter, sleep=clock.sleep))
        for (_, base_url), target in targets.items():
            target.reachable = await _probe_ksef(report, target.client, clock)
            await _probe_latarnia(report, target.client.environment, status_url, overridden=base_url is not None)
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(company: Company) -> CompanyCheck:
            async with gate:
                return await check_company(company, targets[(company.environment, company.base_url)], clock)

        report.companies = list(await asyncio.gather(*(one(c) for c in companies)))
    finally:
        for target in targets.values():
            await target.client.close()
    return report


def _selected(report: CheckReport, config: Config, names: Sequence[str]) -> list[Company]:
    known = {c.name: c for c in config.companies}
    unknown = [n for n in names if n not in known]
    for name in unknown:
        report.add("error", "config", f"no company named {name!r} in {config.source}",
                   f"use one of: {', '.join(known)}")
    return [known[n] for n in dict.fromkeys(names) if n in known] if names else list(config.companies)


async def _probe_ksef(report: CheckReport, client: KsefClient, clock: Clock) -> bool:
    env = client.environment
    before = clock.now()
    try:
        response = await client.transport.request("GET", "/security/public-key-certificates", expect=(200,),
                                                  retry=PROBE_RETRY, time_limit=30)
    except KsefError as exc:
        report.add("error", "ksef", f"KSeF {env.label} at {env.api_url} does not answer: {exc}",
                   "check this machine's internet connection, proxy and firewall (HTTPS to the KSeF host must be "
                   "allowed), and base_url in the config; KSeF's status is on Latarnia and the MF website")
        return False
    after = clock.now()
    report.add("ok", "ksef", f"KSeF {env.label} at {env.api_url} answers")
    skew = skew_seconds(response.headers.get("Date", ""), before, after)
    if skew is None:
        report.add("warning", "clock", f"KSeF {env.label} sent no usable Date header; clock skew not checked")
    elif abs(skew) > SKEW_WARNING_SECONDS:
        side = "behind" if skew > 0 else "ahead of"
        report.add("warning", "clock", f"this machine's clock is {abs(skew):.0f} s {side} KSeF {env.label}",
                   "turn on time synchronisation (Linux: timedatectl set-ntp true; Windows: w32tm /resync); "
                   "signatures, offline deadlines and the logs rely on the right time")
    else:
        report.add("ok", "clock", f"clock within {SKEW_WARNING_SECONDS:.0f} s of KSeF {env.label} "
                                  f"({skew:+.1f} s)")
    return True


async def _probe_latarnia(report: CheckReport, env: Environment, status_url: Callable[[Environment], str] | None,
                          *, overridden: bool) -> None:
    """Latarnia (PROTOCOL.md §1): GET /status -> {status: AVAILABLE|MAINTENANCE|FAILURE|TOTAL_FAILURE}. Not
    asked for a base_url of the config's own (e.g. the simulator): the official status says nothing about it."""
    url = status_url(env) if status_url is not None else "" if overridden else env.status_url
    if not url:
        report.add("ok", "latarnia", f"no Latarnia for {env.api_url}; not checked")
        return
    transport = Transport(url.rstrip("/"), retry=PROBE_RETRY, timeout=15)
    try:
        body = (await transport.request("GET", "/status", expect=(200,))).json()
    except KsefError as exc:
        report.add("warning", "latarnia", f"Latarnia {url} does not answer: {exc}",
                   "not needed for sending; check the firewall if ksefd should see KSeF's announced failures")
        return
    finally:
        await transport.close()
    status = str(body.get("status", "")) if isinstance(body, dict) else ""
    if status == "AVAILABLE":
        report.add("ok", "latarnia", f"Latarnia ({env.label}): KSeF available")
        return
    titles = "; ".join(str(m.get("title", "")) for m in body.get("messages") or [] if isinstance(m, dict))
    report.add("warning", "latarnia", f"Latarnia ({env.label}) reports {status or 'an unknown status'}"
                                      f"{': ' + titles if titles else ''}",
               "KSeF announced a maintenance or failure: invoices wait in the outbox (or follow the offline "
               "rules of PROTOCOL.md §8) until it ends")


async def check_company(company: Company, target: _Target, clock: Clock) -> CompanyCheck:
    row = CompanyCheck(name=company.name, nip=company.nip, environment=company.environment, send=company.send,
                       receive=company.receive, credential=company.credentials.kind)
    check_folders(row, company)
    credentials = check_credentials(row, company, warsaw_date(clock.now()))
    if credentials is None:
        return row
    if not target.reachable:
        row.add("error", "auth", "not checked: KSeF does not answer (see above)", "fix the connection first")
        return row
    ctx = target.client.context(ContextIdentifier.nip(company.nip), credentials)
    try:
        await ctx.authenticate()
    except AuthenticationFailed as exc:
        row.add("error", "auth", exc.message, _auth_fix(exc.code, company, credentials))
        return row
    except KsefError as exc:
        row.add("error", "auth", f"login into NIP {company.nip} failed: {exc}",
                "retry later; if it persists, check the connection and KSeF's status (Latarnia)")
        return row
    row.authenticated = True
    row.add("ok", "auth", f"logged in to NIP {company.nip} ({row.identity})")
    try:
        await _judge_permissions(row, company, ctx, credentials)
    finally:
        with contextlib.suppress(KsefError, OSError):
            await ctx.auth.logout()
    return row


def _auth_fix(code: int, company: Company, credentials: Credentials) -> str:
    where = f"KSeF {company.environment.upper()}"
    if code == 415:
        return (f"the owner of NIP {company.nip} must grant {row_needs(company)} to this person or certificate "
                f"(KSeF web app > Uprawnienia, or the ZAW-FA form at the tax office)")
    if code == 450:
        return (f"generate a new KSeF token in the {where} web app, logged in to NIP {company.nip}, with "
                f"{row_needs(company)}, and save it into {company.credentials.token_file}; a token works only in "
                f"the environment that issued it")
    if code == 460:
        return CERTIFICATE_FIX
    if code in (500, 550):
        return "KSeF could not finish the login; run ksefd check again later"
    if isinstance(credentials, KsefToken):
        return f"check the token in {company.credentials.token_file} and that it comes from {where}"
    return "check the certificate files named in the config"


def row_needs(company: Company) -> str:
    wanted = [NEEDS[k] for k, on in (("send", company.send), ("receive", company.receive)) if on]
    return " and ".join(wanted) or "InvoiceRead"


async def _judge_permissions(row: CompanyCheck, company: Company, ctx: KsefContext, credentials: Credentials
                             ) -> None:
    held: frozenset[str] | None = None
    try:
        mine = await personal_permissions(ctx)
    except KsefError as exc:
        row.add("warning", "permissions", f"could not list the permissions: {exc}")
    else:
        held = mine.held
        row.owner_permissions = None if mine.owner is None else list(mine.owner)
        if mine.owner is None and isinstance(credentials, CertificateCredentials) \
                and credentials.subject_identifier == ("Nip", company.nip):
            held |= frozenset(OWNER_BEFORE_2_9)
    effective = held
    scope: frozenset[str] | None = None
    if isinstance(credentials, KsefToken):
        try:
            scope = frozenset((await token_permissions(ctx, credentials.reference_number)).permissions)
        except KsefError as exc:
            row.add("warning", "permissions", f"could not read the token's permissions: {exc}")
        else:
            # A token may do what it was generated with, while its author still holds it (PROTOCOL.md §9.1).
            effective = scope & held if held else scope
    if effective is None:
        return
    row.permissions = sorted(effective)
    row.can_send, row.can_receive = NEEDS["send"] in effective, NEEDS["receive"] in effective
    row.add("ok", "permissions", f"may: {', '.join(row.permissions) or 'nothing'}")
    for action, wanted in (("send", company.send), ("receive", company.receive)):
        permission = NEEDS[action]
        if wanted and permission not in effective:
            lacks_scope = scope is not None and permission not in scope
            row.add("error", "permissions", f"{action} = true in the config, but {row.identity} lacks {permission} "
                                            f"in NIP {company.nip}",
                    _permission_fix(company, credentials, permission, action, lacks_scope))


def _permission_fix(company: Company, credentials: Credentials, permission: str, action: str,
                    lacks_scope: bool) -> str:
    alternative = f"; or set {action} = false for company {company.name} if it should not {action}"
    if isinstance(credentials, KsefToken) and lacks_scope:
        return (f"a token's permissions are fixed when it is generated (PROTOCOL.md §9.1): generate a new token "
                f"in the KSeF web app, logged in to NIP {company.nip}, ticking {permission} (and "
                f"{'InvoiceRead' if permission == 'InvoiceWrite' else 'InvoiceWrite'} if needed), save it into "
                f"{company.credentials.token_file} and revoke the old one{alternative}")
    who = "the person who generated this token" if isinstance(credentials, KsefToken) else "this certificate's owner"
    return (f"the owner of NIP {company.nip} must grant {permission} to {who} (KSeF web app > Uprawnienia > "
            f"nadaj uprawnienia, or the ZAW-FA form){alternative}")


async def _observe_daemon_limits(limiter: RateLimiter, config: Config) -> None:
    """Beside a running daemon, `ksefd check` shares its KSeF quota: take in the daemon's recorded windows and
    blocks (read only) so that the check never sends into a block or a full window (issue #10 point 1)."""
    if not config.state_db.exists():
        return
    try:
        async with await Store.open(config.state_db) as store:
            await limiter.observe(store.rate_limits)
    except Exception as exc:      # the check goes on with empty windows; it says why in the log
        log.warning("check.limits_unreadable", state_db=str(config.state_db), error=str(exc))
