"""The configuration's shape: the TOML file's sections as msgspec Structs (unknown keys rejected) and
the resolved, validated values the daemon uses (paths absolute, options merged per company)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from ksefd.i18n import N_, translate

Environment = Literal["test", "demo", "prod"]
SubjectType = Literal["Subject1", "Subject2", "Subject3", "SubjectAuthorized"]
NIP_WEIGHTS = (6, 5, 7, 2, 3, 4, 5, 6, 7)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MARKER_PATTERN = re.compile(r"^\.[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
PKCS12_SUFFIXES = (".p12", ".pfx")
Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class ConfigError(Exception):
    """The configuration is unusable; `problems` lists every finding. The CLI exits 78 (EX_CONFIG)."""

    def __init__(self, problems: list[str], source: Path | None = None, *, language: str = "en",
                 english: list[str] | None = None) -> None:
        self.problems = problems                     # in `language`, for people (the file's [daemon] language)
        self.english = english if english is not None else problems      # for the logs (issue #14)
        self.source = source
        if source:
            header = translate(N_("invalid configuration in {file}:"), language).format(file=source)
        else:
            header = translate(N_("invalid configuration:"), language)
        super().__init__(header + "\n" + "\n".join(f"  - {p}" for p in problems))


class Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class KsefSection(Strict, frozen=True):
    environment: Environment = "test"
    base_url: str | None = None
    latarnia_url: str | None = None                  # KSeF's status service (PROTOCOL.md §1); default per environment
    latarnia_interval_seconds: Annotated[float, msgspec.Meta(ge=60)] = 900.0        # while KSeF is available
    latarnia_problem_interval_seconds: Annotated[float, msgspec.Meta(ge=0.5)] = 60.0   # while something is wrong


class DaemonSection(Strict, frozen=True):
    data_dir: str
    state_db: str | None = None                      # default: data_dir/state.sqlite3
    rescan_interval_seconds: Positive = 30.0         # watchfiles misses events on network shares
    settle_seconds: NonNegative = 2.0                # size and mtime unchanged this long = finished
    shutdown_grace_seconds: NonNegative = 30.0
    log_format: Literal["auto", "console", "json", "journal"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    language: Literal["pl", "en"] = "pl"             # what people read: status, CLI messages (issue #14)
    # "127.0.0.1:9464": /healthz, /readyz, /metrics and the status page (ksefd/daemon/http_server.py); off if unset
    http: str | None = None


class SendingOptions(Strict, frozen=True):
    """Sending policy ([sending], overridable per company in [companies.sending])."""

    batch_threshold: Annotated[int, msgspec.Meta(ge=1)] = 100      # queue length that switches to batch
    batch_max_invoices: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 10_000   # PROTOCOL.md §5
    online_idle_close_seconds: Positive = 300.0      # close an idle online session (and fetch its UPO)
    retry_min_seconds: Positive = 60.0               # first backoff after a transient failure
    retry_max_seconds: Positive = 3600.0             # backoff cap (doubling in between)
    hold_retry_seconds: Positive = 900.0             # slow retry of a company on hold
    # Offline invoicing (PROTOCOL.md §8, README "Offline invoicing"): "auto" issues an invoice offline (KOD I/II
    # written at once, sent later with offlineMode) during an announced outage, or once KSeF has been
    # unreachable and the invoice has waited offline_after_seconds; "off" lets invoices wait for KSeF.
    offline: Literal["auto", "off"] = "auto"
    offline_after_seconds: NonNegative = 300.0


class ReceivingOptions(Strict, frozen=True):
    """Receiving options ([receiving], overridable per company in [companies.receiving])."""

    subject_types: tuple[SubjectType, ...] = ("Subject2",)
    # A date, "now" (no history), or None: the first day of the previous month, Polish time, so the first
    # run fetches the purchases of the VAT period still being booked (issue #10 point 5). `Any` because
    # msgspec takes one string-like type per field; config/load.py checks the value.
    backfill_from: Any = None
    inbox_layout: Literal["flat", "year-month"] = "flat"
    cycle_minutes: Annotated[float, msgspec.Meta(ge=1)] = 15.0    # per subject type (PROTOCOL.md §6.4)
    reconcile: bool = True
    reconcile_at: dt.time = dt.time(2, 30)           # Europe/Warsaw local time, nightly
    reconcile_window_days: Annotated[int, msgspec.Meta(ge=1, le=365)] = 7
    hook_command: tuple[str, ...] | None = None      # argv; the delivered XML's path is appended
    hook_marker_suffix: str | None = None            # e.g. ".ready": <ksefNumber>.ready after delivery
    hook_timeout_seconds: Positive = 60.0


class CompanySection(Strict, frozen=True):
    name: str
    nip: str
    enabled: bool = True             # false: the daemon leaves the company alone (no login, no folders)
    send: bool = True
    receive: bool = True
    token_file: str | None = None
    certificate: str | None = None
    private_key: str | None = None
    private_key_password_file: str | None = None
    # The KSeF certificate of type Offline that signs KOD II (PROTOCOL.md §8.6), its key and the key's password.
    offline_certificate: str | None = None
    offline_private_key: str | None = None
    offline_private_key_password_file: str | None = None
    # Renew KSeF certificates this many days before they expire (MF advises two months); false: never.
    certificate_renewal: bool = True
    renew_before_days: Annotated[int, msgspec.Meta(ge=1, le=365)] = 60
    environment: Environment | None = None
    base_url: str | None = None
    outbox: str | None = None
    sent: str | None = None
    rejected: str | None = None
    inbox: str | None = None
    offline: str | None = None                       # offline invoices' QR codes, JSON (data_dir/<name>/offline)
    sending: dict[str, Any] | None = None
    receiving: dict[str, Any] | None = None


@dataclass(frozen=True)
class Credentials:
    token_file: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    private_key_password_file: Path | None = None
    offline_certificate: Path | None = None
    offline_private_key: Path | None = None
    offline_private_key_password_file: Path | None = None

    @property
    def kind(self) -> Literal["token", "certificate", "none"]:
        return "token" if self.token_file else "certificate" if self.certificate else "none"


@dataclass(frozen=True)
class Folders:
    outbox: Path
    sent: Path
    rejected: Path
    inbox: Path
    offline: Path                 # KOD I / KOD II images and NAME.offline.json of offline invoices


@dataclass(frozen=True)
class Company:
    name: str
    nip: str
    send: bool
    receive: bool
    environment: Environment
    base_url: str | None          # None: the environment's official URL (ksefd.ksef.environments)
    credentials: Credentials
    folders: Folders
    sending: SendingOptions
    receiving: ReceivingOptions
    certificate_renewal: bool = True
    renew_before_days: int = 60


@dataclass(frozen=True)
class Config:
    source: Path | None
    environment: Environment
    base_url: str | None
    latarnia_url: str | None      # None: per environment (ksefd.ksef.latarnia.default_url)
    latarnia_interval_seconds: float
    latarnia_problem_interval_seconds: float
    data_dir: Path
    state_db: Path
    rescan_interval_seconds: float
    settle_seconds: float
    shutdown_grace_seconds: float
    log_format: Literal["auto", "console", "json", "journal"]
    log_level: Literal["debug", "info", "warning", "error"]
    companies: tuple[Company, ...]           # the enabled ones: what the daemon runs
    switched_off: tuple[str, ...] = ()       # names of [[companies]] with enabled = false
    language: Literal["pl", "en"] = "pl"     # [daemon] language
    http: tuple[str, int] | None = None          # [daemon] http: where the health/metrics endpoint listens

    def company(self, name: str) -> Company:
        for company in self.companies:
            if company.name == name:
                return company
        raise KeyError(name)


def nip_is_valid(nip: str) -> bool:
    """10 digits whose weighted sum (6,5,7,2,3,4,5,6,7) mod 11 is the last digit (10 is never valid)."""
    if len(nip) != 10 or not nip.isascii() or not nip.isdigit():
        return False
    check = sum(int(d) * w for d, w in zip(nip, NIP_WEIGHTS, strict=False)) % 11
    return check != 10 and check == int(nip[9])
