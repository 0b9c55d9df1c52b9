"""Reading and validating the configuration file; every problem is collected into one ConfigError."""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
import os
import re
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec

from ksefd import i18n
from ksefd.i18n import N_

from .model import (
    MARKER_PATTERN,
    NAME_PATTERN,
    PKCS12_SUFFIXES,
    Company,
    CompanySection,
    Config,
    ConfigError,
    Credentials,
    DaemonSection,
    Folders,
    KsefSection,
    ReceivingOptions,
    SendingOptions,
    nip_is_valid,
)


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """The config at `path`; ConfigError lists every problem, each naming the key, the value and the fix, in
    the file's own [daemon] language (`ConfigError.english` for the logs, issue #14)."""
    source = Path(path).expanduser().absolute()
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _error(N_("{file}: no such file; pass the config file with -c PATH"), source, i18n.DEFAULT,
                     file=source) from None
    except (OSError, UnicodeDecodeError) as error:
        raise _error(N_("{file}: cannot be read ({error})"), source, i18n.DEFAULT, file=source,
                     error=error) from None
    return parse_config(text, base_dir=source.parent, source=source, environ=environ)


def parse_config(text: str, *, base_dir: Path, source: Path | None = None,
                 environ: Mapping[str, str] | None = None) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        language = "en" if _LANGUAGE_EN.search(text) else i18n.DEFAULT
        raise _error(N_("not valid TOML: {error}; correct the line named (a missing quote or bracket is the "
                        "usual cause)"), source, language, error=error) from None
    builder = _Builder(base_dir, os.environ if environ is None else environ, _language(raw))
    config = builder.build(raw, source)
    if builder.problems or config is None:
        raise ConfigError(builder.problems, source, language=builder.language, english=builder.english)
    return config


# [daemon] language = "en" in a file that is not valid TOML: its errors in English all the same.
_LANGUAGE_EN = re.compile(r"""^\s*language\s*=\s*["']en["']""", re.MULTILINE)


def _language(raw: dict[str, Any]) -> str:
    daemon = raw.get("daemon")
    language = daemon.get("language") if isinstance(daemon, dict) else None
    return language if language in i18n.LANGUAGES else i18n.DEFAULT


def _fill(message: str, language: str, values: dict[str, Any]) -> str:
    text = i18n.translate(message, language)
    return text.format(**values) if values else text


def _error(message: str, source: Path | None, language: str, **values: Any) -> ConfigError:
    return ConfigError([_fill(message, language, values)], source, language=language,
                       english=[_fill(message, "en", values)])


_T = TypeVar("_T", bound=msgspec.Struct)
_CHOICES = {"environment": "test, demo, prod", "offline": "auto, off",
            "log_format": "auto, console, json, journal",
            "log_level": "debug, info, warning, error", "language": "pl, en", "inbox_layout": "flat, year-month",
            "subject_types": "Subject1, Subject2, Subject3, SubjectAuthorized"}
_TOP = {"ksef", "daemon", "sending", "receiving", "companies"}


@dataclass(frozen=True)
class _Entry:
    company: Company
    enabled: bool


class _Builder:
    def __init__(self, base_dir: Path, environ: Mapping[str, str], language: str = i18n.DEFAULT) -> None:
        self.base_dir = base_dir
        self.environ = environ
        self.language = language
        self.problems: list[str] = []          # in `language`, for people
        self.english: list[str] = []           # the same, in English, for the logs

    def problem(self, path: str, value: Any, fix: str, **values: Any) -> None:
        """`fix` is a message id (N_), with `{name}` placeholders filled from `values`."""
        shown = "" if value is _MISSING else f"{_show(value)} "
        self.problems.append(f"{path}: {shown}{_fill(fix, self.language, values)}")
        self.english.append(f"{path}: {shown}{_fill(fix, 'en', values)}")

    # structure ------------------------------------------------------------------------------

    def convert(self, raw: Any, cls: type[_T], path: str) -> _T | None:
        if raw is not None and not isinstance(raw, dict):
            self.problem(path, raw, N_("must be a table ([section] or {key = value})"))
            return None
        try:
            return msgspec.convert(raw or {}, cls, strict=True)
        except msgspec.ValidationError as error:
            self._explain(str(error), raw or {}, cls, path)
            return None

    def _explain(self, message: str, raw: dict[str, Any], cls: type[msgspec.Struct], path: str) -> None:
        what, _, where = message.partition(" - at `$")
        where = where.rstrip("`")
        unknown = re.match(r"Object contains unknown field `(.+)`", what)
        if unknown:
            key = unknown.group(1)
            known = [f for f in cls.__struct_fields__ if f not in ("sending", "receiving")]
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5) or \
                [k for k in known if k.startswith(key) or key.startswith(k)][:1]
            at = f"{path}{where}.{key}".replace("..", ".")
            if close:
                self.problem(at, _MISSING, N_("unknown key; did you mean {suggestion}? known keys: {keys}"),
                             suggestion=repr(close[0]), keys=", ".join(known))
            else:
                self.problem(at, _MISSING, N_("unknown key; known keys: {keys}"), keys=", ".join(known))
            return
        missing = re.match(r"Object missing required field `(.+)`", what)
        if missing:
            self.problem(f"{path}{where}.{missing.group(1)}", _MISSING, N_("is required"))
            return
        field = re.findall(r"\.(\w+)", where)
        choices = _CHOICES.get(field[0]) if field else None
        if choices and "enum" in what:
            self.problem(f"{path}{where}", _lookup(raw, where), N_("is invalid: use one of {choices}"),
                         choices=choices)
        else:
            self.problem(f"{path}{where}", _lookup(raw, where), N_("is invalid: {error}"),
                         error=what.replace("`", ""))

    # the whole file --------------------------------------------------------------------------

    def build(self, raw: dict[str, Any], source: Path | None) -> Config | None:
        for key in sorted(set(raw) - _TOP):
            close = difflib.get_close_matches(key, sorted(_TOP), n=1, cutoff=0.6)
            if close:
                self.problem(key, _MISSING, N_("unknown top-level key; did you mean [{suggestion}]? known: {keys}"),
                             suggestion=close[0], keys=", ".join(sorted(_TOP)))
            else:
                self.problem(key, _MISSING, N_("unknown top-level key; known: {keys}"), keys=", ".join(sorted(_TOP)))
        ksef = self.convert(raw.get("ksef"), KsefSection, "ksef")
        if "daemon" not in raw:
            self.problem("daemon.data_dir", _MISSING, N_("is required (a [daemon] table with data_dir)"))
        daemon = self.convert(raw.get("daemon"), DaemonSection, "daemon") if "daemon" in raw else None
        # A bad [sending]/[receiving] is reported once here, not again under every company.
        sending = raw.get("sending") or {}
        receiving = raw.get("receiving") or {}
        if self.convert(sending, SendingOptions, "sending") is None:
            sending = {}
        if self.convert(receiving, ReceivingOptions, "receiving") is None:
            receiving = {}
        if ksef and ksef.base_url:
            self.check_url("ksef.base_url", ksef.base_url)
        if ksef and ksef.latarnia_url:
            self.check_url("ksef.latarnia_url", ksef.latarnia_url)
        companies_raw = raw.get("companies")
        if not isinstance(companies_raw, list) or not companies_raw:
            self.problem("companies", _MISSING, N_("at least one [[companies]] block is required"))
            companies_raw = []
        if ksef is None or daemon is None:
            return None
        data_dir = self.path(daemon.data_dir)
        companies = [self.company(item, i, ksef, data_dir, sending, receiving)
                     for i, item in enumerate(companies_raw)]
        switched_off = tuple(c.company.name for c in companies if c is not None and not c.enabled)
        ready = tuple(c.company for c in companies if c is not None and c.enabled)
        self.check_unique(tuple(c.company for c in companies if c is not None))
        if self.problems:
            return None
        return Config(source=source, environment=ksef.environment, base_url=ksef.base_url,
                      latarnia_url=ksef.latarnia_url, latarnia_interval_seconds=ksef.latarnia_interval_seconds,
                      latarnia_problem_interval_seconds=ksef.latarnia_problem_interval_seconds, data_dir=data_dir,
                      state_db=self.path(daemon.state_db) if daemon.state_db else data_dir / "state.sqlite3",
                      rescan_interval_seconds=daemon.rescan_interval_seconds,
                      settle_seconds=daemon.settle_seconds, shutdown_grace_seconds=daemon.shutdown_grace_seconds,
                      log_format=daemon.log_format, log_level=daemon.log_level, companies=ready,
                      switched_off=switched_off, language=daemon.language,
                      http=self.listen_address("daemon.http", daemon.http))

    def company(self, raw: Any, index: int, ksef: KsefSection, data_dir: Path, sending: Any,
                receiving: Any) -> _Entry | None:
        path = f"companies[{index}]"
        before = len(self.problems)
        try:
            company = self._company(raw, path, ksef, data_dir, sending, receiving)
            enabled = not (isinstance(raw, dict) and raw.get("enabled") is False)
            return None if company is None else _Entry(company, enabled)
        finally:
            if isinstance(raw, dict) and isinstance(raw.get("name"), str):
                for i in range(before, len(self.problems)):
                    self.problems[i] += _fill(N_(' (company "{name}")'), self.language, {"name": raw["name"]})
                    self.english[i] += _fill(N_(' (company "{name}")'), "en", {"name": raw["name"]})

    def _company(self, raw: Any, path: str, ksef: KsefSection, data_dir: Path, sending: Any,
                 receiving: Any) -> Company | None:
        section = self.convert(raw, CompanySection, path)
        if section is None:
            return None
        before = len(self.problems)
        self.check_name(f"{path}.name", section.name)
        self.check_nip(f"{path}.nip", section.nip)
        merged_sending = self.convert(_merge(sending, section.sending), SendingOptions, f"{path}.sending")
        merged_receiving = self.convert(_merge(receiving, section.receiving), ReceivingOptions,
                                        f"{path}.receiving")
        if section.base_url:
            self.check_url(f"{path}.base_url", section.base_url)
        credentials = self.credentials(path, section)
        if merged_sending:
            self.check_sending(f"{path}.sending", merged_sending)
        if merged_receiving:
            merged_receiving = self.check_receiving(f"{path}.receiving", merged_receiving)
        if len(self.problems) > before or merged_sending is None or merged_receiving is None:
            return None
        home = data_dir / section.name
        folders = Folders(*(self.path(getattr(section, f)) if getattr(section, f) else home / f
                            for f in ("outbox", "sent", "rejected", "inbox", "offline")))
        # A company that names its own environment does not inherit [ksef].base_url (meant for another).
        base_url = section.base_url or (ksef.base_url if section.environment is None else None)
        return Company(name=section.name, nip=section.nip, send=section.send, receive=section.receive,
                       environment=section.environment or ksef.environment, base_url=base_url,
                       credentials=credentials, folders=folders, sending=merged_sending,
                       receiving=merged_receiving, certificate_renewal=section.certificate_renewal,
                       renew_before_days=section.renew_before_days)

    # values ---------------------------------------------------------------------------------

    def path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def check_name(self, path: str, name: str) -> None:
        if not NAME_PATTERN.match(name):
            self.problem(path, name, N_("is not a usable name: use 1-64 letters, digits, '-' or '_', starting "
                                        "with a letter or digit (it names the folder data_dir/<name>)"))

    def check_nip(self, path: str, nip: str) -> None:
        if len(nip) != 10 or not nip.isascii() or not nip.isdigit():
            self.problem(path, nip, N_("is not a NIP: write its 10 digits without dashes, spaces or a PL prefix, "
                                       "e.g. \"5265877635\""))
        elif not nip_is_valid(nip):
            self.problem(path, nip, N_("fails the NIP checksum (weights 6,5,7,2,3,4,5,6,7 mod 11); check the "
                                       "digits against the company's registration"))

    def listen_address(self, path: str, value: str | None) -> tuple[str, int] | None:
        """[daemon] http = "HOST:PORT". Only a loopback address: the status page and /metrics have no login, so
        they are for this machine (a reverse proxy or node exporter's textfile can publish them further)."""
        if value is None:
            return None
        host, _, port = value.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            self.problem(path, value, N_('is not HOST:PORT; e.g. "127.0.0.1:9464" (port 0: a free port, logged)'))
            return None
        if not is_loopback(host):
            self.problem(path, value, N_("listens beyond this machine; the status page has no login: use "
                                         "127.0.0.1 (or ::1, localhost) and publish it through a reverse proxy if "
                                         "needed"))
            return None
        return host, int(port)

    def check_url(self, path: str, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problem(path, url, N_("is not an http(s) URL; e.g. \"http://127.0.0.1:8080/v2\" for the "
                                       "simulator"))
        elif parts.scheme == "http" and not is_loopback(parts.hostname):
            self.problem(path, url, N_("uses plain http to another machine; tokens would travel unencrypted: "
                                       "use https (plain http is allowed only for 127.0.0.1/localhost)"))

    def credentials(self, path: str, section: CompanySection) -> Credentials:
        names = ("token_file", "certificate", "private_key", "private_key_password_file", "offline_certificate",
                 "offline_private_key", "offline_private_key_password_file")
        found = {n: self.credential(f"{path}.{n}", getattr(section, n)) for n in names}
        creds = Credentials(**found)
        pkcs12 = section.certificate is not None and section.certificate.lower().endswith(PKCS12_SUFFIXES)
        if section.token_file and section.certificate:
            self.problem(f"{path}.token_file", _MISSING, N_("and certificate are both set: choose one way to "
                                                           "authenticate (a KSeF token or a certificate)"))
        if section.certificate and not section.private_key and not pkcs12:
            self.problem(f"{path}.private_key", _MISSING, N_("is required with certificate (the .key file the "
                                                             "certificate was issued for), unless it is a "
                                                             ".p12/.pfx"))
        if (section.private_key or section.private_key_password_file) and not section.certificate:
            self.problem(f"{path}.certificate", _MISSING, N_("is required when private_key or "
                                                             "private_key_password_file is set"))
        offline_pkcs12 = (section.offline_certificate or "").lower().endswith(PKCS12_SUFFIXES)
        if section.offline_certificate and not section.offline_private_key and not offline_pkcs12:
            self.problem(f"{path}.offline_private_key", _MISSING, N_("is required with offline_certificate (the "
                                                                     ".key file of the Offline certificate)"))
        if (section.offline_private_key or section.offline_private_key_password_file) \
                and not section.offline_certificate:
            self.problem(f"{path}.offline_certificate", _MISSING, N_("is required when offline_private_key or "
                                                                     "offline_private_key_password_file is set"))
        if (section.send or section.receive) and not (section.token_file or section.certificate):
            self.problem(f"{path}.token_file", _MISSING, N_("or certificate is required: the company sends or "
                                                            "receives, so ksefd must authenticate in its NIP "
                                                            "context"))
        return creds

    def credential(self, path: str, value: str | None) -> Path | None:
        if value is None:
            return None
        candidates: list[Path] = []
        directory = self.environ.get("CREDENTIALS_DIRECTORY")
        bare = Path(value).name == value and value not in (".", "..")
        if bare and directory:
            candidates.append(Path(directory) / value)
        candidates.append(self.path(value))
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        where = " or ".join(str(c) for c in candidates)
        if directory or not bare:
            self.problem(path, value, N_("not found: looked for {paths}; give the path of an existing file"),
                         paths=where)
        else:
            self.problem(path, value, N_("not found: looked for {paths} ($CREDENTIALS_DIRECTORY is not set); give "
                                         "the path of an existing file"), paths=where)
        return None

    def check_sending(self, path: str, options: SendingOptions) -> None:
        if options.retry_min_seconds > options.retry_max_seconds:
            self.problem(f"{path}.retry_min_seconds", options.retry_min_seconds,
                         N_("is greater than retry_max_seconds ({maximum}); lower it"),
                         maximum=_show(options.retry_max_seconds))

    def check_receiving(self, path: str, options: ReceivingOptions) -> ReceivingOptions:
        options = self.check_backfill(path, options)
        if not options.subject_types:
            self.problem(f"{path}.subject_types", [], N_("is empty; list at least one, e.g. [\"Subject2\"]"))
        elif len(set(options.subject_types)) != len(options.subject_types):
            self.problem(f"{path}.subject_types", list(options.subject_types),
                         N_("lists a subject type twice; list each once"))
        if options.hook_marker_suffix is not None and (
                not MARKER_PATTERN.match(options.hook_marker_suffix)
                or options.hook_marker_suffix.lower() in (".xml", ".json")):
            self.problem(f"{path}.hook_marker_suffix", options.hook_marker_suffix,
                         N_("must be a file suffix such as \".ready\" (a dot, then letters/digits; not "
                            ".xml/.json)"))
        if options.hook_command is None:
            return options
        if not options.hook_command or not options.hook_command[0]:
            self.problem(f"{path}.hook_command", list(options.hook_command),
                         N_("is empty; give the program and its arguments, e.g. [\"/usr/local/bin/erp-import\"]"))
            return options
        program = options.hook_command[0]
        if os.sep in program or (os.altsep and os.altsep in program):
            found = str(self.path(program)) if self.path(program).is_file() else None
        else:
            found = shutil.which(program)
        if found is None:
            self.problem(f"{path}.hook_command", program, N_("is not an existing program (give an absolute path "
                                                             "or a command on PATH)"))
            return options
        return msgspec.structs.replace(options, hook_command=(found, *options.hook_command[1:]))

    def check_backfill(self, path: str, options: ReceivingOptions) -> ReceivingOptions:
        """`backfill_from`: a TOML date, "now", or a quoted ISO date (accepted as the date it names)."""
        value = options.backfill_from
        if value is None or value == "now" or (isinstance(value, dt.date) and not isinstance(value, dt.datetime)):
            return options
        if isinstance(value, str):
            try:
                return msgspec.structs.replace(options, backfill_from=dt.date.fromisoformat(value))
            except ValueError:
                pass
        self.problem(f"{path}.backfill_from", value, N_("is not a date: write a date such as 2026-02-01 (no "
                                                        "quotes), or \"now\" to skip invoices from before the "
                                                        "first start; leave it out to start at the first day of "
                                                        "the previous month"))
        return options

    def check_unique(self, companies: tuple[Company, ...]) -> None:
        names: dict[str, str] = {}
        targets: dict[tuple[str, str], str] = {}
        folders: dict[Path, tuple[str, str]] = {}
        for index, company in enumerate(companies):
            path = f"companies[{index}]"
            if (holder := names.setdefault(company.name.lower(), company.name)) is not company.name:
                self.problem(f"{path}.name", company.name, N_("is already the name of company \"{holder}\"; "
                                                             "names must be unique, ignoring case (they name "
                                                             "folders)"), holder=holder)
            target = (company.base_url or company.environment, company.nip)
            if (holder := targets.setdefault(target, company.name)) is not company.name:
                self.problem(f"{path}.nip", company.nip, N_("is also the NIP of company \"{holder}\" on "
                                                           "{target}; use one entry per NIP and KSeF environment "
                                                           "(they share rate limits, checkpoints and duplicate "
                                                           "checks)"), holder=holder, target=target[0])
            for kind in ("outbox", "sent", "rejected", "inbox", "offline"):
                folder = getattr(company.folders, kind).resolve()
                label = (kind, company.name)
                if (holder_of := folders.setdefault(folder, label)) is not label:
                    self.problem(f"{path}.{kind}", str(folder), N_("is also the {kind} of company \"{holder}\"; "
                                                                   "every folder must be distinct"),
                                 kind=holder_of[0], holder=holder_of[1])


class _Missing:
    pass


_MISSING: Any = _Missing()


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def _merge(defaults: Any, overrides: dict[str, Any] | None) -> Any:
    if not isinstance(defaults, dict):
        return overrides or {}
    return {**defaults, **(overrides or {})}


def _lookup(raw: Any, where: str) -> Any:
    """The raw value at a msgspec path such as `.companies[0].nip`."""
    node = raw
    for name, index in re.findall(r"\.(\w+)|\[(\d+)\]", where):
        try:
            node = node[name] if name else node[int(index)]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return node


def is_loopback(host: str) -> bool:
    """localhost or a loopback address: where plain http is allowed (tokens never leave the machine)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
