"""Reading and validating the configuration file; every problem is collected into one ConfigError."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from ksefd import i18n
from ksefd.i18n import N_

from .field_checks import MISSING, FieldChecks, fill
from .model import (
    Company,
    CompanySection,
    Config,
    ConfigError,
    DaemonSection,
    Folders,
    KsefSection,
    ReceivingOptions,
    SendingOptions,
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


def _error(message: str, source: Path | None, language: str, **values: Any) -> ConfigError:
    return ConfigError([fill(message, language, values)], source, language=language,
                       english=[fill(message, "en", values)])


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


class _Builder(FieldChecks):
    """The whole file: its structure (msgspec), then each company; the field checks are FieldChecks'."""

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
                self.problem(at, MISSING, N_("unknown key; did you mean {suggestion}? known keys: {keys}"),
                             suggestion=repr(close[0]), keys=", ".join(known))
            else:
                self.problem(at, MISSING, N_("unknown key; known keys: {keys}"), keys=", ".join(known))
            return
        missing = re.match(r"Object missing required field `(.+)`", what)
        if missing:
            self.problem(f"{path}{where}.{missing.group(1)}", MISSING, N_("is required"))
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
                self.problem(key, MISSING, N_("unknown top-level key; did you mean [{suggestion}]? known: {keys}"),
                             suggestion=close[0], keys=", ".join(sorted(_TOP)))
            else:
                self.problem(key, MISSING, N_("unknown top-level key; known: {keys}"), keys=", ".join(sorted(_TOP)))
        ksef = self.convert(raw.get("ksef"), KsefSection, "ksef")
        if "daemon" not in raw:
            self.problem("daemon.data_dir", MISSING, N_("is required (a [daemon] table with data_dir)"))
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
            self.problem("companies", MISSING, N_("at least one [[companies]] block is required"))
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
                    self.problems[i] += fill(N_(' (company "{name}")'), self.language, {"name": raw["name"]})
                    self.english[i] += fill(N_(' (company "{name}")'), "en", {"name": raw["name"]})

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
            return MISSING
    return node
