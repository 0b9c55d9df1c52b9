"""`ksefd check -c CONFIG [COMPANY…]`: does the set-up work, before invoices are at stake (issue #12 item 3)?

In order: the config (loaded by the CLI), data_dir and the state database (check_local.py); each KSeF target
answers, and how far this machine's clock is from KSeF's (the `Date` header); Latarnia, the one the daemon
asks (availability.py: `[ksef] latarnia_url`, the environment's, or a base_url's origin); then per company:
its folders, its credential files and their expiry, a real login into its NIP context, its permissions
(`POST /permissions/query/personal/grants` with the 2.9.0 `ownerPermissions`; a token's own permissions from
`GET /tokens/{ref}`) and whether they allow what the config asks: sending needs InvoiceWrite, receiving needs
InvoiceRead (PROTOCOL.md §9.2, openapi.json `x-required-permissions`).
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
from ksefd.i18n import _
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
    default_url,
    personal_permissions,
    token_permissions,
)
from ksefd.store import Store

from .check_local import certificate_fix, check_credentials, check_folders, check_general
from .check_report import CheckReport, CompanyCheck
from .status_text import WEB_APP
from .words import error_text

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
    base URL to ask (default: as the daemon finds it, availability.py: [ksef] latarnia_url, else the
    environment's own, or for a base_url of the config's own its origin, where `ksefd sim` serves Latarnia)."""
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
        for (name, base_url), target in targets.items():
            target.reachable = await _probe_ksef(report, target.client, clock)
            env = target.client.environment
            url = status_url(env) if status_url is not None else \
                config.latarnia_url or default_url(name, base_url)
            await _probe_latarnia(report, env, url)
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
        report.add("error", "config", _("no company named {name} in {config}", name=repr(name), config=config.source),
                   _("use one of: {names}", names=", ".join(known)))
    return [known[n] for n in dict.fromkeys(names) if n in known] if names else list(config.companies)


async def _probe_ksef(report: CheckReport, client: KsefClient, clock: Clock) -> bool:
    env = client.environment
    before = clock.now()
    try:
        response = await client.transport.request("GET", "/security/public-key-certificates", expect=(200,),
                                                  retry=PROBE_RETRY, time_limit=30)
    except KsefError as exc:
        report.add("error", "ksef", _("KSeF {environment} at {url} does not answer: {error}",
                                      environment=env.label, url=env.api_url, error=error_text(exc)),
                   _("check this machine's internet connection, proxy and firewall (HTTPS to the KSeF host must be "
                     "allowed), and base_url in the config; KSeF's status is on Latarnia and the MF website"))
        return False
    after = clock.now()
    report.add("ok", "ksef", _("KSeF {environment} at {url} answers", environment=env.label, url=env.api_url))
    skew = skew_seconds(response.headers.get("Date", ""), before, after)
    if skew is None:
        report.add("warning", "clock", _("KSeF {environment} sent no usable Date header; clock skew not checked",
                                         environment=env.label))
    elif abs(skew) > SKEW_WARNING_SECONDS:
        text = _("this machine's clock is {seconds} s behind KSeF {environment}") if skew > 0 else \
            _("this machine's clock is {seconds} s ahead of KSeF {environment}")
        report.add("warning", "clock", text.format(seconds=f"{abs(skew):.0f}", environment=env.label),
                   _("turn on time synchronisation (Linux: timedatectl set-ntp true; Windows: w32tm /resync); "
                     "signatures, offline deadlines and the logs rely on the right time"))
    else:
        report.add("ok", "clock", _("clock within {limit} s of KSeF {environment} ({skew} s)",
                                    limit=f"{SKEW_WARNING_SECONDS:.0f}", environment=env.label, skew=f"{skew:+.1f}"))
    return True


async def _probe_latarnia(report: CheckReport, env: Environment, url: str) -> None:
    """Latarnia (PROTOCOL.md §1): GET /status -> {status: AVAILABLE|MAINTENANCE|FAILURE|TOTAL_FAILURE}, at the
    URL the daemon asks too (run_check); for a base_url of the config's own that is its origin (the simulator
    serves Latarnia there; another server may not, which is a warning, not a failure)."""
    if not url:
        report.add("ok", "latarnia", _("no Latarnia for {url}; not checked", url=env.api_url))
        return
    transport = Transport(url.rstrip("/"), retry=PROBE_RETRY, timeout=15)
    try:
        body = (await transport.request("GET", "/status", expect=(200,))).json()
    except KsefError as exc:
        report.add("warning", "latarnia", _("Latarnia {url} does not answer: {error}", url=url, error=error_text(exc)),
                   _("not needed for sending; check the firewall if ksefd should see KSeF's announced failures"))
        return
    finally:
        await transport.close()
    status = str(body.get("status", "")) if isinstance(body, dict) else ""
    if status == "AVAILABLE":
        report.add("ok", "latarnia", _("Latarnia ({url}): KSeF {environment} available", url=url,
                                       environment=env.label))
        return
    messages = body.get("messages") if isinstance(body, dict) else None
    titles = "; ".join(str(m.get("title") or m.get("text") or "") for m in messages or [] if isinstance(m, dict))
    words = {"MAINTENANCE": _("a maintenance (MAINTENANCE)"), "FAILURE": _("a failure (FAILURE)"),
             "TOTAL_FAILURE": _("a total failure (TOTAL_FAILURE)")}
    report.add("warning", "latarnia", _("Latarnia ({url}) reports {status} of KSeF {environment}{titles}", url=url,
                                        status=words.get(status) or status or _("an unknown status"),
                                        environment=env.label, titles=f": {titles}" if titles else ""),
               _("KSeF announced a maintenance or failure: invoices wait in the outbox (or are issued in offline "
                 "mode when the config allows it) until it ends"))


async def check_company(company: Company, target: _Target, clock: Clock) -> CompanyCheck:
    row = CompanyCheck(name=company.name, nip=company.nip, environment=company.environment, send=company.send,
                       receive=company.receive, credential=company.credentials.kind)
    check_folders(row, company)
    credentials = check_credentials(row, company, warsaw_date(clock.now()))
    if credentials is None:
        return row
    if not target.reachable:
        row.add("error", "auth", _("not checked: KSeF does not answer (see above)"), _("fix the connection first"))
        return row
    ctx = target.client.context(ContextIdentifier.nip(company.nip), credentials)
    try:
        await ctx.authenticate()
    except AuthenticationFailed as exc:
        row.add("error", "auth", error_text(exc), _auth_fix(exc.code, company, credentials))
        return row
    except KsefError as exc:
        row.add("error", "auth", _("login into NIP {nip} failed: {error}", nip=company.nip, error=error_text(exc)),
                _("retry later; if it persists, check the connection and KSeF's status (Latarnia)"))
        return row
    row.authenticated = True
    row.add("ok", "auth", _("logged in to NIP {nip} ({identity})", nip=company.nip, identity=row.identity))
    try:
        await _judge_permissions(row, company, ctx, credentials)
    finally:
        with contextlib.suppress(KsefError, OSError):
            await ctx.auth.logout()
    return row


def _auth_fix(code: int, company: Company, credentials: Credentials) -> str:
    where = f"KSeF {company.environment.upper()}"
    app = WEB_APP.get(company.environment, WEB_APP["prod"])
    if code == 415:
        return _("the owner of NIP {nip} must grant {permissions} to this person or certificate (the taxpayer's "
                 "application, Aplikacja Podatnika {app} > Uprawnienia, or the ZAW-FA form at the tax office)",
                 nip=company.nip, permissions=row_needs(company), app=app)
    if code == 450:
        return _("generate a new KSeF token in the {environment} taxpayer's application (Aplikacja Podatnika "
                 "{app}), logged in to NIP {nip}, with {permissions}, and save it into {file}; a token works only "
                 "in the environment that issued it", environment=where, app=app, nip=company.nip,
                 permissions=row_needs(company), file=company.credentials.token_file)
    if code == 460:
        return certificate_fix()
    if code in (500, 550):
        return _("KSeF could not finish the login; run ksefd check again later")
    if isinstance(credentials, KsefToken):
        return _("check the token in {file} and that it comes from {environment}",
                 file=company.credentials.token_file, environment=where)
    return _("check the certificate files named in the config")


def row_needs(company: Company) -> str:
    wanted = [permission_words(NEEDS[k]) for k, on in (("send", company.send), ("receive", company.receive)) if on]
    return _(" and ").join(wanted) or permission_words("InvoiceRead")


def permission_words(permission: str) -> str:
    """KSeF's name of a permission with the words of the taxpayer's application (Aplikacja Podatnika)."""
    return {"InvoiceWrite": _("InvoiceWrite (issuing invoices)"),
            "InvoiceRead": _("InvoiceRead (viewing invoices)")}.get(permission, permission)


async def _judge_permissions(row: CompanyCheck, company: Company, ctx: KsefContext, credentials: Credentials
                             ) -> None:
    held: frozenset[str] | None = None
    try:
        mine = await personal_permissions(ctx)
    except KsefError as exc:
        row.add("warning", "permissions", _("could not list the permissions: {error}", error=error_text(exc)))
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
            row.add("warning", "permissions", _("could not read the token's permissions: {error}",
                                                error=error_text(exc)))
        else:
            # A token may do what it was generated with, while its author still holds it (PROTOCOL.md §9.1).
            effective = scope & held if held else scope
    if effective is None:
        return
    row.permissions = sorted(effective)
    row.can_send, row.can_receive = NEEDS["send"] in effective, NEEDS["receive"] in effective
    row.add("ok", "permissions", _("may: {permissions}", permissions=", ".join(row.permissions) or _("nothing")))
    for action, wanted in (("send", company.send), ("receive", company.receive)):
        permission = NEEDS[action]
        if wanted and permission not in effective:
            lacks_scope = scope is not None and permission not in scope
            row.add("error", "permissions", _("{action} = true in the config, but {identity} lacks {permission} in "
                                              "NIP {nip}", action=action, identity=row.identity,
                                              permission=permission_words(permission), nip=company.nip),
                    _permission_fix(company, credentials, permission, action, lacks_scope))


def _permission_fix(company: Company, credentials: Credentials, permission: str, action: str,
                    lacks_scope: bool) -> str:
    alternative = _("; or set send = false for company {company} if it should not send", company=company.name) \
        if action == "send" else _("; or set receive = false for company {company} if it should not receive",
                                   company=company.name)
    app = WEB_APP.get(company.environment, WEB_APP["prod"])
    if isinstance(credentials, KsefToken) and lacks_scope:
        # A token's permissions are fixed when it is generated (PROTOCOL.md §9.1).
        return _("a token's permissions are fixed when it is generated: generate a new token "
                 "in the taxpayer's application (Aplikacja Podatnika {app}), logged in to NIP {nip}, ticking "
                 "{permission} (and {other} if needed), save it into {file} and revoke the old one{alternative}",
                 app=app, nip=company.nip, permission=permission_words(permission),
                 other=permission_words("InvoiceRead" if permission == "InvoiceWrite" else "InvoiceWrite"),
                 file=company.credentials.token_file, alternative=alternative)
    if isinstance(credentials, KsefToken):
        return _("the owner of NIP {nip} must grant {permission} to the person who generated this token (the "
                 "taxpayer's application, Aplikacja Podatnika {app} > Uprawnienia, or the ZAW-FA form){alternative}",
                 nip=company.nip, permission=permission_words(permission), app=app, alternative=alternative)
    return _("the owner of NIP {nip} must grant {permission} to this certificate's owner (the taxpayer's "
             "application, Aplikacja Podatnika {app} > Uprawnienia, or the ZAW-FA form){alternative}",
             nip=company.nip, permission=permission_words(permission), app=app, alternative=alternative)


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
