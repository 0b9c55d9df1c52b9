"""`ksefd credentials set -c CONFIG COMPANY`: paste a KSeF token once; it is cleaned, checked against KSeF (a real
login) and stored the platform's way (ksefd/daemon/credential_store.py says where and why).

The token is read from standard input: without echo when that is a terminal (getpass), else the whole input
(`systemd-ask-password | ksefd credentials set ...`, or a file redirected in). It is never an argument, so it
never shows in `ps` or in the shell's history.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import sys
import tomllib
from pathlib import Path
from typing import TextIO

from ksefd import i18n
from ksefd.i18n import _


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("credentials", help=_("store a company's KSeF token so that only the service reads it"))
    commands = parser.add_subparsers(dest="credentials_command", required=True)
    p = commands.add_parser("set", help=_("read a token on standard input (not echoed), check it with a KSeF "
                                          "login, store it encrypted (systemd-creds, DPAPI) or in a 0600 file"))
    p.add_argument("-c", "--config", type=Path, required=True, help=_("the config file of the daemon"))
    p.add_argument("company", metavar="COMPANY", help=_("the company's name in the config"))
    p.add_argument("--store", choices=["auto", "systemd", "file", "dpapi"], default="auto",
                   help=_("auto (default): DPAPI on Windows, systemd-creds when run as root where systemd has it, "
                          "else a file only its owner can read"))
    p.add_argument("--no-verify", action="store_true", help=_("store without logging in to KSeF first"))


def read_token(stdin: TextIO, company: str) -> str:
    if stdin.isatty():
        return getpass.getpass(_("KSeF token for {company} (not shown; paste and press Enter): ", company=company))
    return stdin.read()


def config_language(path: Path) -> str:
    """[daemon] language of the config, read leniently as read_target reads the rest (this command runs before
    the token file the full validation wants exists); Polish when it cannot be read."""
    with contextlib.suppress(OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        language = tomllib.loads(path.expanduser().read_text(encoding="utf-8")).get("daemon", {}).get("language")
        return language if language in i18n.LANGUAGES else i18n.DEFAULT
    return i18n.DEFAULT


async def run(args: argparse.Namespace, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    from ksefd.daemon.credential_store import CredentialStoreError, clean_token, read_target, store_token, verify

    stdin, out = stdin or sys.stdin, out or sys.stdout
    i18n.use(config_language(args.config))
    try:
        target = read_target(args.config, args.company)
        token = clean_token(read_token(stdin, target.company), target)
        if not args.no_verify:
            await verify(target, token)
            print(_("KSeF ({environment}) accepted the token {reference} for NIP {nip}",
                    environment=target.environment.upper(), reference=token.reference_number, nip=target.nip),
                  file=out)
        stored = await asyncio.to_thread(store_token, target, token, args.store)
    except CredentialStoreError as error:
        print(f"ksefd credentials: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(_("ksefd credentials: cannot store the token: {error}", error=error), file=sys.stderr)
        return 1
    print(_("stored ({kind}): {path}", kind=stored.kind, path=stored.path), file=out)
    for line in stored.instructions:
        print(f"  {line}", file=out)
    return 0
