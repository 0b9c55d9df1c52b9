"""Renewal of KSeF certificates before they expire (issue #13 item 4; PROTOCOL.md §9.3, §15).

    renewer = CertificateRenewer(config, store, clock, client_for)
    await renewer.run_once()          # once a day per credential, and at start-up (the lead's hook)

For each KSeF certificate the config names (`certificate` of type Authentication, `offline_certificate` of type
Offline), grouped by fingerprint so one person's certificate used by many companies is renewed once: ask KSeF its
real validTo (`/certificates/query`; a certificate KSeF does not list is a qualified one, renewed at its provider);
within `renew_before_days` of it, enroll a successor with a fresh key, store it beside the old files, switch the
configured files to it once it is valid (certificate_switch.py), and keep the old pair. `certificate_renewal =
false` on a company opts it out (a certificate is renewed while one company using it wants that).

A resumable step machine: each step is recorded in SQLite (store/certificates.py) before the next one acts, so a
kill -9 at any moment neither loses the new key (it is on disk, encrypted, before KSeF hears of it) nor enrolls
twice (a lost enrollment answer is found again by the successor's unique name; KSeF never certifies one key twice).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog
from cryptography.hazmat.primitives.asymmetric import ec

from ksefd.clock import WARSAW
from ksefd.config import Company, Config
from ksefd.i18n import _
from ksefd.ksef import (
    CertificateCredentials,
    CertificateManager,
    CertificateType,
    ContextIdentifier,
    EnrollmentFailed,
    EnrollmentPending,
    KsefClient,
    KsefError,
    PrivateKey,
    build_csr,
    certificate_serial_hex,
    key_files,
    load_private_key,
    new_key,
    public_key_der,
)
from ksefd.store import Renewal, Store

from .certificate_files import login_credentials, offline_credentials
from .certificate_switch import CertificateFiles, next_path, remove_next, switch
from .words import shown, stored_error

log = structlog.get_logger("ksefd.daemon.certificate_renewal")

Checkpoint = Callable[[str], None]
RETRY = dt.timedelta(hours=1)
_PKCS12 = (".p12", ".pfx")
_KSEF_SERIAL = re.compile(r"[0-9A-F]{16}")


class _Clock(Protocol):
    def now(self) -> dt.datetime: ...


@dataclass
class Target:
    """One certificate to watch and the companies that use it."""

    certificate_type: CertificateType
    credentials: CertificateCredentials
    files: list[CertificateFiles]
    companies: list[Company] = field(default_factory=list)

    @property
    def renew_before(self) -> dt.timedelta:
        return dt.timedelta(days=min(c.renew_before_days for c in self.companies))


def _files(company: Company, certificate_type: str) -> CertificateFiles | None:
    creds = company.credentials
    if certificate_type == "Authentication":
        paths = (creds.certificate, creds.private_key, creds.private_key_password_file)
    else:
        paths = (creds.offline_certificate, creds.offline_private_key, creds.offline_private_key_password_file)
    certificate, key, password = paths
    if certificate is None or certificate.suffix.lower() in _PKCS12 or key is None or password is None:
        return None     # a .p12 or an unencrypted key: not ours to rewrite (`ksefd certificate enroll` makes both)
    return CertificateFiles(certificate, key, password)


def targets(config: Config) -> list[Target]:
    """The KSeF-renewable certificates of the companies that did not opt out, one Target per certificate."""
    found: dict[tuple[str, str], Target] = {}
    types: tuple[CertificateType, ...] = ("Authentication", "Offline")
    for company in config.companies:
        if not company.certificate_renewal:
            continue
        for certificate_type in types:
            files = _files(company, certificate_type)
            if files is None:
                continue
            try:
                creds = login_credentials(company) if certificate_type == "Authentication" \
                    else offline_credentials(company)
            except KsefError as exc:
                log.warning("daemon.certificate_unreadable", company=company.name, type=certificate_type,
                            error=exc.message)
                continue
            if creds is None:
                continue
            target = found.setdefault((certificate_type, creds.fingerprint), Target(certificate_type, creds, []))
            target.companies.append(company)
            if files not in target.files:
                target.files.append(files)
    return list(found.values())


class CertificateRenewer:
    def __init__(self, config: Config, store: Store, clock: _Clock, client_for: Callable[[Company], KsefClient], *,
                 checkpoint: Checkpoint | None = None, overlap: dt.timedelta | None = None) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.client_for = client_for
        self.checkpoint: Checkpoint = checkpoint or (lambda _: None)
        self.overlap = overlap          # validFrom = old validTo - overlap (default: at once)

    async def run_once(self) -> list[Renewal]:
        """One pass over every certificate; returns the renewal rows touched. Failures are recorded, not raised."""
        touched = await self._finish_switches()
        for target in targets(self.config):
            try:
                row = await self._target(target)
            except (KsefError, OSError) as exc:
                log.warning("daemon.certificate_renewal_error", type=target.certificate_type,
                            certificate=str(target.files[0].certificate), error=str(exc))
                existing = await self.store.certificates.find(target.credentials.fingerprint, target.certificate_type)
                if existing is not None:
                    row = await self.store.certificates.update(existing.id, last_error=stored_error(exc),
                                                               attempts=existing.attempts + 1,
                                                               next_attempt_at=self.clock.now() + RETRY)
                else:
                    continue
            if row is not None:
                touched.append(row)
        return touched

    async def _finish_switches(self) -> list[Renewal]:
        """A switch cut short leaves the configured key and certificate of different pairs, which `targets` cannot
        load: finish it from the database alone."""
        finished = []
        for row in await self.store.certificates.all():
            if row.state != "switching":
                continue
            files = [f for c in self.config.companies if c.name in row.companies
                     and (f := _files(c, row.certificate_type)) is not None]
            unique = list(dict.fromkeys(files)) or [self._primary(row)]
            finished.append(await self._complete_switch(unique, row))
        return finished

    def _manager(self, target: Target) -> CertificateManager:
        company = target.companies[0]
        creds = target.credentials if target.certificate_type == "Authentication" else login_credentials(company)
        context = self.client_for(company).context(ContextIdentifier.nip(company.nip), creds)
        return context.certificates()

    async def _target(self, target: Target) -> Renewal | None:
        row = await self.store.certificates.find(target.credentials.fingerprint, target.certificate_type)
        now = self.clock.now()
        if row is not None and row.next_attempt_at is not None and now < row.next_attempt_at:
            return row
        manager = self._manager(target)
        if row is None:
            row = await self._plan(target, manager)
            if row is None:
                return None
        return await self._advance(target, manager, row)

    async def _plan(self, target: Target, manager: CertificateManager) -> Renewal | None:
        serial = certificate_serial_hex(target.credentials.certificate)
        # KSeF serial numbers are 16 hex digits (openapi.json); anything else is a qualified certificate.
        listed = await manager.query(serial=serial) if _KSEF_SERIAL.fullmatch(serial) else []
        if not listed:
            log.debug("daemon.certificate_not_ksef", serial=serial, certificate=str(target.files[0].certificate))
            return None       # a qualified certificate: KSeF cannot renew it
        valid_to = listed[0].valid_to
        if valid_to - self.clock.now() > target.renew_before:
            return None
        primary = target.files[0]
        row = await self.store.certificates.plan(
            certificate_type=target.certificate_type, old_fingerprint=target.credentials.fingerprint,
            old_serial=serial, old_valid_to=valid_to, certificate_path=str(primary.certificate),
            key_path=str(primary.private_key), password_file=str(primary.password_file),
            companies=sorted({c.name for c in target.companies}))
        log.info("daemon.certificate_renewal_planned", serial=serial, type=target.certificate_type,
                 valid_to=valid_to.isoformat(), companies=row.companies)
        return row

    # the step machine --------------------------------------------------------------------------------------
    async def _advance(self, target: Target, manager: CertificateManager, row: Renewal) -> Renewal:
        while True:
            step = getattr(self, f"_step_{row.state}", None)
            if step is None:          # switched: nothing left
                return row
            following: Renewal | None = await step(target, manager, row)
            if following is None or following.state == row.state:
                return following or row
            if following.next_attempt_at is not None and self.clock.now() < following.next_attempt_at:
                return following              # a refused step waits for its retry time
            log.info("daemon.certificate_renewal_step", renewal=row.id, state=following.state, serial=following.serial)
            row = following

    def _primary(self, row: Renewal) -> CertificateFiles:
        return CertificateFiles(Path(row.certificate_path), Path(row.key_path), Path(row.password_file))

    def _key(self, row: Renewal) -> PrivateKey:
        primary = self._primary(row)
        return load_private_key(next_path(primary.private_key).read_bytes(),
                                key_files.read_password(primary.password_file), str(next_path(primary.private_key)))

    async def _step_planned(self, target: Target, manager: CertificateManager, row: Renewal) -> Renewal:
        primary = self._primary(row)
        if not next_path(primary.private_key).exists():     # after a crash here the key on disk is reused
            # The same kind of key as the certificate being replaced (EC P-256 or RSA 2048), a fresh one.
            key = new_key("ec" if isinstance(target.credentials.private_key, ec.EllipticCurvePrivateKey) else "rsa")
            key_files.write_key(next_path(primary.private_key), key, key_files.read_password(primary.password_file))
        self.checkpoint("key_written")
        return await self.store.certificates.update(row.id, state="key_saved", last_error=None, next_attempt_at=None)

    async def _step_key_saved(self, target: Target, manager: CertificateManager, row: Renewal) -> Renewal:
        now = self.clock.now()
        start = now if self.overlap is None else max(now, row.old_valid_to - self.overlap)
        row = await self.store.certificates.update(row.id, state="submitting", valid_from=start)
        return await self._submit(target, manager, row)

    async def _submit(self, target: Target, manager: CertificateManager, row: Renewal) -> Renewal:
        key = self._key(row)
        data = await manager.enrollment_data()
        start = row.valid_from
        later = start is not None and start > self.clock.now() + dt.timedelta(minutes=1)
        started = await manager.submit(row.name, target.certificate_type, build_csr(data, key),
                                       start if later else None)
        self.checkpoint("submitted")
        return await self.store.certificates.update(row.id, state="submitted", reference=started.reference_number)

    async def _step_submitting(self, target: Target, manager: CertificateManager, row: Renewal) -> Renewal:
        """The answer to the enrollment may have been lost: find the certificate by its name and key first."""
        serial = await self._find_issued(manager, row)
        if serial is not None:
            return await self.store.certificates.update(row.id, state="issued", serial=serial)
        return await self._submit(target, manager, row)

    async def _find_issued(self, manager: CertificateManager, row: Renewal) -> str | None:
        listed = [c.certificate_serial_number for c in await manager.query(name=row.name) if c.name == row.name]
        mine = public_key_der(self._key(row))
        for found in await manager.retrieve(listed) if listed else []:
            if public_key_der(found.x509().public_key()) == mine:   # type: ignore[arg-type]
                return found.certificate_serial_number
        return None

    async def _step_submitted(self, target: Target, manager: CertificateManager, row: Renewal) -> Renewal:
        assert row.reference is not None
        try:
            serial = await manager.wait(row.reference)
        except EnrollmentPending:
            return row                         # asked again at the next run
        except EnrollmentFailed as exc:
            found = await self._find_issued(manager, row)     # 400 "already certified": ours, from a lost answer
            if found is not None:
                return await self.store.certificates.update(row.id, state="issued", serial=found)
            log.warning("daemon.certificate_renewal_refused", renewal=row.id, error=exc.message)
            next_path(Path(row.key_path)).unlink(missing_ok=True)      # a fresh key for the next try
            return await self.store.certificates.update(row.id, state="planned", reference=None,
                                                        last_error=exc.message, attempts=row.attempts + 1,
                                                        next_attempt_at=self.clock.now() + RETRY)
        return await self.store.certificates.update(row.id, state="issued", serial=serial)

    async def _step_issued(self, target: Target, manager: CertificateManager, row: Renewal) -> Renewal:
        assert row.serial is not None
        issued = await manager.collect(row.serial, self._key(row), target.certificate_type, row.name)
        key_files.write_certificate(next_path(Path(row.certificate_path)), issued.certificate)
        self.checkpoint("certificate_written")
        cert = issued.certificate
        return await self.store.certificates.update(row.id, state="saved", valid_from=cert.not_valid_before_utc,
                                                    new_valid_to=cert.not_valid_after_utc)

    async def _step_saved(self, target: Target, manager: CertificateManager, row: Renewal) -> Renewal:
        if row.valid_from is not None and self.clock.now() < row.valid_from:
            return row                         # not valid yet: the old certificate serves until then
        return await self.store.certificates.update(row.id, state="switching")

    async def _step_switching(self, target: Target, manager: CertificateManager, row: Renewal) -> Renewal:
        return await self._complete_switch(target.files, row)

    async def _complete_switch(self, files: list[CertificateFiles], row: Renewal) -> Renewal:
        switch(files, self._primary(row), row.old_serial, halfway=lambda: self.checkpoint("switch_half"))
        row = await self.store.certificates.update(row.id, state="switched", last_error=None)
        remove_next(self._primary(row))
        log.info("daemon.certificate_switched", renewal=row.id, old_serial=row.old_serial, serial=row.serial,
                 companies=row.companies, valid_to=row.new_valid_to.isoformat() if row.new_valid_to else None)
        return row


async def renew_due_certificates(config: Config, store: Store, clock: _Clock,
                                 client_for: Callable[[Company], KsefClient]) -> list[Renewal]:
    """The daemon's hook: one pass of CertificateRenewer (run it once a day and at start-up)."""
    return await CertificateRenewer(config, store, clock, client_for).run_once()


TOKEN_END = dt.date(2026, 12, 31)       # PROTOCOL.md §9.1, §15: KSeF tokens end with 2026


def token_companies(config: Config) -> list[str]:
    """The companies that still log in with a KSeF token (for `ksefd check`: they stop working after 31.12.2026)."""
    return [c.name for c in config.companies if c.credentials.token_file is not None and (c.send or c.receive)]


def describe(row: Renewal, now: dt.datetime) -> str:
    """One line of `ksefd status` about a renewal, in the current language, dates in Warsaw time."""
    who = ", ".join(row.companies)
    kind = _("Authentication") if row.certificate_type == "Authentication" else _("Offline")
    if row.state == "switched":
        until = _(" until {date}", date=_day(row.new_valid_to)) if row.new_valid_to else ""
        return _("{type} certificate of {companies}: renewed, now {serial}{until} (old {old} kept until {date})",
                 type=kind, companies=who, serial=row.serial, until=until, old=row.old_serial,
                 date=_day(row.old_valid_to))
    text = _("{type} certificate {serial} of {companies} expires {date}: renewal {state}", type=kind,
             serial=row.old_serial, companies=who, date=_day(row.old_valid_to), state=row.state)
    if row.state == "saved" and row.valid_from is not None:
        text += _(", successor {serial} used from {date}", serial=row.serial, date=_day(row.valid_from))
    if row.last_error:
        retry = _(", next try {time}", time=f"{row.next_attempt_at.astimezone(WARSAW):%d.%m.%Y %H:%M}") \
            if row.next_attempt_at and row.next_attempt_at > now else ""
        text += _("; last error: {error}{retry}", error=shown(row.last_error), retry=retry)
    return text


def _day(moment: dt.datetime) -> str:
    return f"{moment.astimezone(WARSAW):%d.%m.%Y}"


async def renewal_lines(store: Store, now: dt.datetime) -> list[str]:
    """Every renewal as `describe` words it, oldest first (for `ksefd status` and `ksefd check`)."""
    return [describe(row, now) for row in await store.certificates.all()]
