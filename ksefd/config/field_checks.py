"""The configuration's field checks (NIP, names, URLs, credentials, options, uniqueness): each problem collected
with the field's path, its value and the fix, in the reader's language and in English for the logs (issue #14)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any
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
    Credentials,
    ReceivingOptions,
    SendingOptions,
    nip_is_valid,
)


class FieldChecks:
    """Collects problems (`problem`) and checks single fields; `load._Builder` adds the file's structure."""

    def __init__(self, base_dir: Path, environ: Mapping[str, str], language: str = i18n.DEFAULT) -> None:
        self.base_dir = base_dir
        self.environ = environ
        self.language = language
        self.problems: list[str] = []          # in `language`, for people
        self.english: list[str] = []           # the same, in English, for the logs

    def problem(self, path: str, value: Any, fix: str, **values: Any) -> None:
        """`fix` is a message id (N_), with `{name}` placeholders filled from `values`."""
        shown = "" if value is MISSING else f"{show(value)} "
        self.problems.append(f"{path}: {shown}{fill(fix, self.language, values)}")
        self.english.append(f"{path}: {shown}{fill(fix, 'en', values)}")

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
            self.problem(f"{path}.token_file", MISSING, N_("and certificate are both set: choose one way to "
                                                           "authenticate (a KSeF token or a certificate)"))
        if section.certificate and not section.private_key and not pkcs12:
            self.problem(f"{path}.private_key", MISSING, N_("is required with certificate (the .key file the "
                                                             "certificate was issued for), unless it is a "
                                                             ".p12/.pfx"))
        if (section.private_key or section.private_key_password_file) and not section.certificate:
            self.problem(f"{path}.certificate", MISSING, N_("is required when private_key or "
                                                             "private_key_password_file is set"))
        offline_pkcs12 = (section.offline_certificate or "").lower().endswith(PKCS12_SUFFIXES)
        if section.offline_certificate and not section.offline_private_key and not offline_pkcs12:
            self.problem(f"{path}.offline_private_key", MISSING, N_("is required with offline_certificate (the "
                                                                     ".key file of the Offline certificate)"))
        if (section.offline_private_key or section.offline_private_key_password_file) \
                and not section.offline_certificate:
            self.problem(f"{path}.offline_certificate", MISSING, N_("is required when offline_private_key or "
                                                                     "offline_private_key_password_file is set"))
        if (section.send or section.receive) and not (section.token_file or section.certificate):
            self.problem(f"{path}.token_file", MISSING, N_("or certificate is required: the company sends or "
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
                         maximum=show(options.retry_max_seconds))

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


MISSING: Any = _Missing()


def fill(message: str, language: str, values: dict[str, Any]) -> str:
    text = i18n.translate(message, language)
    return text.format(**values) if values else text



def show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def is_loopback(host: str) -> bool:
    """localhost or a loopback address: where plain http is allowed (tokens never leave the machine)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
