"""When a company's way into KSeF ends, and the warnings about it (issue #12 point 7).

* a KSeF certificate: its `notAfter`; from `CERTIFICATE_WARNING_DAYS` (60) days before it, the daemon warns
  once a day in its log (MF advises renewing two months ahead), and the status page and `ksefd status` show it;
* a KSeF token: the regulation ends token login on 31.12.2026 (PROTOCOL.md §9.1, §15), so every company still on
  a token is warned about, always, with the way to a certificate (docs/certificates.md).

`/metrics` publishes the days left (`ksefd_credential_expiry_days`). Reading is cheap and safe to repeat: only
the certificate is parsed (never the private key), a PKCS#12 file once per change of its modification time,
and nothing read here is secret.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from ksefd import i18n
from ksefd.clock import Clock, warsaw_date
from ksefd.config import Company, Config
from ksefd.i18n import _, counted
from ksefd.ksef import CredentialsError, load_certificates, load_pkcs12

from .check_local import CERTIFICATE_WARNING_DAYS, TOKEN_LOGIN_LAST_DAY

log = structlog.get_logger("ksefd.daemon.credentials")

CERTIFICATES_DOC = "docs/certificates.md"
_PKCS12 = (".p12", ".pfx")


@dataclass(frozen=True)
class Expiry:
    company: str
    kind: Literal["token", "certificate"]
    last_day: dt.date                 # the last day the credential logs in
    source: Path

    def days_left(self, today: dt.date) -> int:
        return (self.last_day - today).days

    def warning(self, today: dt.date) -> str | None:
        """What a person should read about it today (in the current language), or None when nothing is due yet."""
        days = self.days_left(today)
        last_day = f"{self.last_day:%d.%m.%Y}"
        if self.kind == "token":
            if days < 0:
                return _("{company} logs in with a KSeF token: token login ended on {date}. Move "
                         "it to a KSeF certificate (`ksefd certificate enroll`, see {doc})", company=self.company,
                         date=last_day, doc=CERTIFICATES_DOC)
            return _("{company} logs in with a KSeF token: token login ends on {date} (in {days}). Move it to "
                     "a KSeF certificate (`ksefd certificate enroll`, see {doc})", company=self.company,
                     date=last_day, days=counted(days, "day"), doc=CERTIFICATES_DOC)
        if days > CERTIFICATE_WARNING_DAYS:
            return None
        if days < 0:
            return _("{company}: the KSeF certificate {file} expired on {date}. Renew it (`ksefd certificate "
                     "enroll`, see {doc}); ksefd picks up the new files at its next login, no restart needed",
                     company=self.company, file=self.source, date=last_day, doc=CERTIFICATES_DOC)
        return _("{company}: the KSeF certificate {file} expires on {date} (in {days}). Renew it (`ksefd "
                 "certificate enroll`, see {doc}); ksefd picks up the new files at its next login, no restart "
                 "needed", company=self.company, file=self.source, date=last_day, days=counted(days, "day"),
                 doc=CERTIFICATES_DOC)


_cache: dict[tuple[Path, int], dt.date] = {}


def _certificate_last_day(company: Company, path: Path) -> dt.date:
    mtime = path.stat().st_mtime_ns
    found = _cache.get((path, mtime))
    if found is not None:
        return found
    if path.suffix.lower() in _PKCS12:
        password_file = company.credentials.private_key_password_file
        password = password_file.read_bytes() if password_file is not None else None
        not_after = load_pkcs12(path, password).certificate.not_valid_after_utc
    else:
        not_after = min(c.not_valid_after_utc for c in load_certificates(path.read_bytes(), str(path)))
    day = warsaw_date(not_after)
    _cache[(path, mtime)] = day
    return day


def credential_expiry(company: Company) -> Expiry | None:
    """The company's credential end, or None when it cannot be read (the login reports why, with the fix)."""
    files = company.credentials
    if files.token_file is not None:
        return Expiry(company.name, "token", TOKEN_LOGIN_LAST_DAY, files.token_file)
    if files.certificate is None:
        return None
    try:
        return Expiry(company.name, "certificate", _certificate_last_day(company, files.certificate),
                      files.certificate)
    except (OSError, ValueError, CredentialsError):
        return None


def expiries(config: Config) -> list[Expiry]:
    return [e for e in (credential_expiry(c) for c in config.companies if c.send or c.receive) if e is not None]


def warnings(config: Config, today: dt.date) -> list[str]:
    """Every credential warning due today (for `ksefd status`, the status page and the daily log)."""
    return [w for w in (e.warning(today) for e in expiries(config)) if w is not None]


async def warn_daily(config: Config, clock: Clock) -> None:
    """One log line per company whose credential needs attention; the daemon runs this at start and daily."""
    today = warsaw_date(clock.now())
    for expiry in expiries(config):
        with i18n.using("en"):        # JSON logs stay English (issue #14 point 1)
            message = expiry.warning(today)
        if message is not None:
            log.warning("credentials.expiring", company=expiry.company, kind=expiry.kind,
                        last_day=expiry.last_day.isoformat(), days_left=expiry.days_left(today), advice=message)
