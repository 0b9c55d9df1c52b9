"""The command line's arguments: every command, its options and their help (in the help's language, see
ksefd.cli._main)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ksefd import __version__
from ksefd.i18n import _


def _sim_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sim", help=_("run the KSeF API 2.0 simulator (behaves like the MF TEST environment)"))
    p.add_argument("--host", default="127.0.0.1", help=_("address to bind (default 127.0.0.1)"))
    p.add_argument("--port", type=int, default=8080, help=_("port to bind (default 8080; 0 picks a free one)"))
    p.add_argument("--state", type=Path, default=None,
                   help=_("SQLite file that keeps the simulator's state across restarts (default: memory)"))
    p.add_argument("--limits", choices=["test", "production", "off"], default="test",
                   help=_("rate-limit profile (test and production both use the PRD numbers)"))
    p.add_argument("--faults", default="", help=_("fault switches, e.g. '5xx=0.1,latency=0.2' (see README)"))
    p.add_argument("--processing-delay", type=float, default=0.0,
                   help=_("seconds an invoice stays in statuses 100/150 before its verdict"))
    p.add_argument("--hwm-lag", type=float, default=5.0,
                   help=_("seconds permanentStorageHwmDate trails now"))
    commands = p.add_subparsers(dest="sim_command", metavar="taxpayer")
    t = commands.add_parser("taxpayer", help=_("in a running `ksefd sim`: create a taxpayer and write its KSeF "
                                               "token (and a login certificate) to files, for testing an ERP"))
    t.add_argument("nip", metavar="NIP", help=_("the taxpayer's NIP (10 digits, valid check digit)"))
    t.add_argument("--token-out", type=Path, required=True, metavar="FILE", help=_("write the KSeF token here"))
    t.add_argument("--permissions", default="read,write",
                   help=_("the token's permissions: read, write or KSeF names, comma-separated (default read,write)"))
    t.add_argument("--cert-out", type=Path, metavar="FILE", help=_("also keep a certificate that logs in (PEM)"))
    t.add_argument("--key-out", type=Path, metavar="FILE", help=_("... and its private key (PEM, not encrypted)"))
    t.add_argument("--url", default=None, help=_("the simulator's address (default http://127.0.0.1:8080/v2)"))


def _run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help=_("run the daemon: send every company's outbox to KSeF"))
    p.add_argument("-c", "--config", type=Path, required=True, help=_("the config file (see config.example.toml)"))
    p.add_argument("--once", action="store_true",
                   help=_("drain mode: exit once every file dropped so far is finished (accepted or rejected); "
                          "exit code 3 if a company could not do what its config asks (on hold, no login, "
                          "receiving failed)"))


def _status_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help=_("per company: queued, in KSeF, accepted today, rejected, holds, errors"))
    p.add_argument("-c", "--config", type=Path, required=True, help=_("the config file of the daemon"))
    p.add_argument("--json", action="store_true", help=_("print JSON instead of text"))


def _reload_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("reload", help=_("make the running daemon read its config again (companies added, removed, "
                                        "switched on/off, credentials); the same as SIGHUP, also on Windows"))
    p.add_argument("-c", "--config", type=Path, required=True, help=_("the config file of the daemon"))


def _resume_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("resume", help=_("try a company on hold again now (after fixing its token, certificate "
                                        "or permissions); reaches the running daemon"))
    p.add_argument("-c", "--config", type=Path, required=True, help=_("the config file of the daemon"))
    p.add_argument("company", help=_("the company's name, as in [[companies]] name"))


def _check_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check", help=_("does the set-up work? folders, state DB, KSeF, login, permissions, expiry"))
    p.add_argument("-c", "--config", type=Path, required=True, help=_("the config file of the daemon"))
    p.add_argument("companies", nargs="*", metavar="COMPANY", help=_("check only these companies (default: all)"))
    p.add_argument("--json", action="store_true", help=_("print JSON instead of text"))


def _ops_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("validate", help=_("run the local checks on invoice files (no network; codes as in rejected/)"))
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--nip", help=_("the seller's (company's) NIP"))
    p.add_argument("-c", "--config", type=Path, help=_("take the NIP from this config's --company"))
    p.add_argument("--company", help=_("the company in the config whose outbox the files are for"))
    p.add_argument("--json", action="store_true", help=_("print JSON instead of text"))
    p = sub.add_parser("qr", help=_("KOD I (verification QR code) of an invoice in sent/: link and image"))
    p.add_argument("file", type=Path, metavar="FILE", help=_("sent/NAME.xml or sent/NAME.ksef.json"))
    p.add_argument("-o", "--output", type=Path, help=_("image to write, .png or .svg (default: ./NAME.qr.png)"))
    p.add_argument("--no-image", action="store_true", help=_("print the link only"))
    p = sub.add_parser("requeue", help=_("copy a fixed file from rejected/ back into the outbox (recorded)"))
    p.add_argument("-c", "--config", type=Path, required=True, help=_("the config file of the daemon"))
    p.add_argument("company", metavar="COMPANY")
    p.add_argument("name", metavar="NAME", help=_("the file's name in the company's rejected/ folder"))
    p.add_argument("--force", action="store_true", help=_("requeue even if the local checks still refuse it"))
    p = sub.add_parser("service", help=_("Windows: install, remove, start or stop ksefd as a Windows service"))
    p.add_argument("action", choices=["install", "remove", "start", "stop", "restart", "debug"])
    p.add_argument("-c", "--config", type=Path, help=_("config file (default: %%ProgramData%%\\ksefd\\ksefd.toml)"))
    p.add_argument("--startup", choices=["auto", "delayed", "manual", "disabled"], default="auto",
                   help=_("start type at install (default auto: at boot)"))


def _demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help=_("the daemon against the embedded simulator: two demo companies, "
                                      "invoices from the official samples, live summary"))
    p.add_argument("--invoices", type=int, default=9, help=_("how many invoices to drop (default 9)"))
    p.add_argument("--dir", type=Path, default=None, help=_("folder to work in (default: a new temporary one)"))
    p.add_argument("--once", action=argparse.BooleanOptionalAction, default=None,
                   help=_("end when every invoice is done (default: when standard input is not a terminal)"))
    p.add_argument("--language", choices=["pl", "en"], default="pl",
                   help=_("the language of the demo and of its config (default pl)"))
    p.add_argument("--keep", action="store_true",
                   help=_("once the invoices are done, keep the simulator and the daemon running (Ctrl+C stops) "
                          "and print the config's path: point an ERP at it"))
    p.add_argument("--outage", type=float, nargs="?", const=20.0, default=None, metavar="SECONDS",
                   help=_("KSeF fails for SECONDS (default 20) from the start: the invoices are issued offline "
                          "(KOD I/KOD II) and sent with offlineMode once KSeF is back"))


def _certificate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`ksefd certificate enroll|list|revoke` (ksefd/certificate_cli.py)."""
    parser = sub.add_parser("certificate", help=_("KSeF certificates: enroll, list, revoke"))
    commands = parser.add_subparsers(dest="certificate_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", type=Path, required=True, help=_("the config file"))
        p.add_argument("company", help=_("the company's name in the config"))
        p.add_argument("--login-certificate", type=Path, help=_("log in with this certificate (.crt/.pem/.p12) "
                                                                "instead of the company's configured one"))
        p.add_argument("--login-key", type=Path, help=_("the private key of --login-certificate"))
        p.add_argument("--login-password-file", type=Path, help=_("the file with the password of --login-key"))

    enroll = commands.add_parser("enroll", help=_("request a new KSeF certificate for the company's login person"))
    common(enroll)
    enroll.add_argument("--type", choices=["authentication", "offline"], required=True,
                        help=_("authentication: logs in to KSeF; offline: signs KOD II on offline invoices"))
    enroll.add_argument("--key", choices=["ec", "rsa"], default="ec", help=_("key type (default EC P-256)"))
    enroll.add_argument("--update-config", action="store_true",
                        help=_("change the config file (kept as .bak); otherwise the lines to paste are printed"))
    listing = commands.add_parser("list", help=_("the KSeF certificates of the company's login person"))
    common(listing)
    revoke = commands.add_parser("revoke", help=_("revoke a KSeF certificate"))
    common(revoke)
    revoke.add_argument("serial", help=_("the certificate's serial number (16 hex digits, see `list`)"))
    revoke.add_argument("--reason", choices=["Unspecified", "Superseded", "KeyCompromise"], default="Unspecified")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ksefd", description=_("KSeF (API 2.0) daemon for file-based ERPs"),
        epilog=_("Language: the config's [daemon] language (Polish where there is no config); this help: "
                 "KSEFD_LANGUAGE=pl|en, else English when LANG/LC_ALL/LC_MESSAGES starts with \"en\", else Polish."))
    parser.add_argument("--version", action="version", version=f"ksefd {__version__}")
    parser.add_argument("--log-format", choices=["auto", "console", "json", "journal"], default=None,
                        help=_("log format (default: the config's log_format, else auto)"))
    sub = parser.add_subparsers(dest="command", required=True)
    _sim_parser(sub)
    _demo_parser(sub)
    _run_parser(sub)
    _status_parser(sub)
    _resume_parser(sub)
    _reload_parser(sub)
    _certificate_parser(sub)
    _check_parser(sub)
    _ops_parsers(sub)
    from ksefd import credentials_cli
    credentials_cli.add_parser(sub)
    return parser
