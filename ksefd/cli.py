"""Command line: the only place that parses arguments and exits (DESIGN.md)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ksefd import i18n
from ksefd.cli_arguments import build_parser
from ksefd.i18n import _
from ksefd.logs import configure_logging

if TYPE_CHECKING:
    from ksefd.config import Config

EX_CONFIG = 78           # sysexits.h EX_CONFIG: bad configuration (also a data folder or state DB ksefd cannot write)
EX_SOFTWARE = 70         # sysexits.h EX_SOFTWARE: the installation is broken (the FA(3) schema cannot be compiled)
EX_TEMPFAIL = 75         # sysexits.h EX_TEMPFAIL: another ksefd is already running on this state database
EX_UNFINISHED = 3        # `ksefd run --once`: a company could not do what its config asks (on hold, no login, ...)


async def _run_demo(args: argparse.Namespace) -> int:
    from ksefd.demo import run_demo

    i18n.use(args.language)
    if args.invoices < 1:
        print(_("ksefd demo: --invoices must be at least 1"), file=sys.stderr)
        return 2
    once = args.once if args.once is not None else not sys.stdin.isatty()
    from ksefd.daemon.lifecycle import ShutdownSignals

    stop = asyncio.Event()
    with ShutdownSignals(stop):
        return await run_demo(count=args.invoices, once=once and not args.keep, keep=args.dir, stop=stop,
                              stay=args.keep, outage=args.outage)


async def _sim_taxpayer(args: argparse.Namespace) -> int:
    from ksefd.sandbox import DEFAULT_SIM_URL, SandboxError, api_url, config_lines, make_taxpayer, parse_permissions

    base_url = api_url(args.url or DEFAULT_SIM_URL)
    try:
        permissions = parse_permissions(args.permissions)
        taxpayer = await make_taxpayer(base_url, args.nip, permissions, args.token_out, args.cert_out, args.key_out)
    except SandboxError as error:
        print(f"ksefd sim taxpayer: {error}", file=sys.stderr)
        return 1
    print(_("Taxpayer {nip} created in the simulator at {url}", nip=taxpayer.nip, url=base_url))
    print(_("KSeF token ({permissions}) written to {file}", permissions=", ".join(taxpayer.permissions),
            file=taxpayer.token_file))
    if taxpayer.certificate:
        print(_("Login certificate written to {certificate}, its key to {key}", certificate=taxpayer.certificate,
                key=taxpayer.private_key))
    print("\n" + _("A config for ksefd (ksefd.toml):") + "\n")
    print(config_lines(taxpayer, base_url))
    return 0


async def _run_sim(args: argparse.Namespace) -> int:
    from ksefd.sim import faults
    from ksefd.sim.app import serve
    from ksefd.sim.clock import SystemClock
    from ksefd.sim.config import SimConfig

    try:    # a bad switch stops the start with the switch and the fix, not a traceback
        faults.parse(args.faults, SystemClock().now())
    except ValueError as exc:
        print(f"ksefd sim: --faults: {exc}", file=sys.stderr)
        return EX_CONFIG
    config = SimConfig(host=args.host, port=args.port, state_path=args.state, limits_profile=args.limits,
                       faults=args.faults, processing_delay_s=args.processing_delay, hwm_lag_s=args.hwm_lag)
    from ksefd.daemon.lifecycle import ShutdownSignals

    def ready(base_url: str) -> None:
        print(_("KSeF simulator listening on {url}  (Ctrl+C stops)", url=base_url), flush=True)

    stop = asyncio.Event()
    with ShutdownSignals(stop):
        await serve(config, stop, ready)
    return 0


def _load(path: Path) -> Config:
    from ksefd.config import load_config
    return load_config(path)


def freeze_startup_objects() -> None:
    """What start-up built (tens of MB of imported modules, the schema, the config) lives as long as the daemon:
    kept out of the cyclic garbage collector, whose full passes over it were a tenth of the CPU an online
    invoice cost (issue #16). Garbage made later is collected as before."""
    gc.collect()
    gc.freeze()


async def _run_daemon(config: Config, once: bool) -> int:
    from ksefd import heap
    from ksefd.daemon.instance import AlreadyRunning, StartupProblem
    from ksefd.daemon.lifecycle import ShutdownSignals
    from ksefd.daemon.reload import ReloadSignal
    from ksefd.daemon.service import serve
    from ksefd.invoice import SchemaUnavailable

    freeze_startup_objects()
    heap.fix_mmap_threshold()       # big buffers go back to the system when freed (ksefd.heap, issue #16)
    stop, force, reload = asyncio.Event(), asyncio.Event(), asyncio.Event()
    try:
        # A first signal drains, a second one forces (DESIGN.md convention 2); SIGHUP reloads the config.
        with ShutdownSignals(stop, force), ReloadSignal(reload):
            problems = await serve(config, stop, once=once, force=force, reload=reload)
    except StartupProblem as problem:
        print(_("ksefd: cannot start: {problem}", problem=problem), file=sys.stderr)
        return EX_CONFIG
    except AlreadyRunning as running:
        print(f"ksefd: {running}", file=sys.stderr)
        return EX_TEMPFAIL
    except SchemaUnavailable as error:
        print(f"ksefd: {error}", file=sys.stderr)
        return EX_SOFTWARE
    if once and problems:
        print(_("ksefd run --once: not everything the config asks could be done:"), file=sys.stderr)
        for problem_text in problems:
            print(f"  - {problem_text}", file=sys.stderr)
        print(_("Fix the above (see `ksefd status`), then run again."), file=sys.stderr)
        return EX_UNFINISHED
    return 0


async def _resume(config: Config, company: str) -> int:
    from ksefd.clock import SystemClock
    from ksefd.daemon.resume import request_resume
    from ksefd.store import Store

    names = [c.name for c in config.companies]
    if company not in names:
        print(_("ksefd resume: no company {company} in {config}; the companies are: {names}", company=repr(company),
                config=config.source, names=", ".join(names)),
              file=sys.stderr)
        return 2
    if not config.state_db.exists():
        print(_("ksefd resume: no state database yet at {path}: nothing is on hold", path=config.state_db),
              file=sys.stderr)
        return 0
    async with await Store.open(config.state_db) as store:
        outcome = await request_resume(store, company, SystemClock())
    print(outcome.message, file=sys.stderr if outcome.exit_code else sys.stdout)
    return outcome.exit_code


async def _reload(config: Config) -> int:
    from ksefd.clock import SystemClock
    from ksefd.daemon.reload import request_reload
    from ksefd.daemon.status import gather
    from ksefd.store import Store

    if not config.state_db.exists():
        print(_("ksefd reload: no state database yet at {path}: ksefd has not run with this config; `ksefd run` "
                "reads it at its start", path=config.state_db), file=sys.stderr)
        return 1
    clock = SystemClock()
    async with await Store.open(config.state_db) as store:
        running = (await gather(store, config, clock)).running
        outcome = await request_reload(store, clock.now(), daemon_running=running)
    print(f"ksefd reload: {outcome.message}", file=sys.stdout if outcome.ok else sys.stderr)
    return 0 if outcome.ok else EX_CONFIG


async def _show_status(config: Config, as_json: bool) -> int:
    from ksefd.clock import SystemClock
    from ksefd.daemon.status import gather, render
    from ksefd.store import Store

    if not config.state_db.exists():
        print(_("no state database yet at {path}: ksefd has not run with this config", path=config.state_db),
              file=sys.stderr)
        return 1
    from ksefd.clock import warsaw_today
    from ksefd.daemon.credential_expiry import warnings

    async with await Store.open(config.state_db) as store:
        status = await gather(store, config, SystemClock())
    # Credential ends (issue #12 point 7): every company still on a KSeF token, certificates within 60 days.
    due = warnings(config, warsaw_today(SystemClock()))
    if as_json:
        print(json.dumps({**status.to_json(), "credentialWarnings": due}, ensure_ascii=False, indent=2))
    else:
        print(render(status) + ("\n\n" + _("Credentials") + "\n" + "\n".join(_("  WARNING {warning}", warning=w)
                                                                             for w in due) if due else ""))
    return 0


async def _run_check(config: Config, companies: list[str], as_json: bool) -> int:
    from ksefd.daemon.check import run_check
    from ksefd.daemon.check_report import render, to_json_text

    report = await run_check(config, companies)
    print(to_json_text(report) if as_json else render(report))
    return 0 if report.ok else 1


def _validate(args: argparse.Namespace) -> int:
    from ksefd.clock import SystemClock, warsaw_today
    from ksefd.config import ConfigError, nip_is_valid
    from ksefd.daemon import validate

    nip = args.nip
    if args.config is not None:
        try:
            config = _load(args.config)
            i18n.use(config.language)       # the hints as the daemon writes them to error.json
            nip = config.company(args.company).nip if args.company else nip
        except ConfigError as error:
            print(f"ksefd: {error}", file=sys.stderr)
            return EX_CONFIG
        except KeyError:
            print(_("ksefd validate: no company {company} in {config}", company=repr(args.company),
                    config=args.config), file=sys.stderr)
            return 2
    if not nip or not nip_is_valid(nip):
        print(_("ksefd validate: give the seller's NIP: --nip NIP (10 digits), or -c CONFIG --company NAME"),
              file=sys.stderr)
        return 2
    verdicts = validate.validate_files(args.files, nip=nip, today=warsaw_today(SystemClock()))
    print(validate.to_json_text(verdicts) if args.json else validate.render(verdicts))
    return 0 if all(v.ok for v in verdicts) else 1


def _qr(args: argparse.Namespace) -> int:
    from ksefd.daemon.qr_code import QrError, invoice_code, record_path, write_image

    try:
        code = invoice_code(args.file)
        print(code.link)
        if not args.no_image:
            stem = record_path(args.file).name.removesuffix(".ksef.json")
            written = write_image(code, args.output or Path(f"{stem}.qr.png"))
            print(_("KOD I ({label}) written to {file}", label=code.label, file=written))
    except QrError as error:
        print(f"ksefd qr: {error}", file=sys.stderr)
        return 1
    return 0


async def _requeue(config: Config, args: argparse.Namespace) -> int:
    from ksefd.clock import SystemClock
    from ksefd.daemon.requeue import RequeueError, requeue

    try:
        done = await requeue(config, args.company, args.name, SystemClock(), force=args.force)
    except RequeueError as error:
        print(f"ksefd requeue: {error}", file=sys.stderr)
        return 1
    print(_("{source} copied to {target} (the rejected copy stays); ksefd sends it as a new invoice",
            source=done.source, target=done.target))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()          # here, so that a closed pipe is seen inside the try
        return code
    except BrokenPipeError:
        # `ksefd status | head`: the reader is gone, which is not an error. Python would complain again when
        # it flushes stdout at exit; point stdout at devnull so that it does not (Python docs, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None = None) -> int:
    # No config read yet: --help (and argparse's own errors) speak the environment's language; everything after
    # that speaks the config's, and Polish, the default, where there is none (issue #14 point 1).
    i18n.use(i18n.from_environment())
    parser = build_parser()
    args = parser.parse_args(argv)
    i18n.use(i18n.DEFAULT)
    if args.command == "sim" and args.sim_command == "taxpayer":
        configure_logging(args.log_format or "console", logging.WARNING)
        return asyncio.run(_sim_taxpayer(args))
    if args.command == "sim":
        configure_logging(args.log_format or "auto")
        return asyncio.run(_run_sim(args))
    if args.command == "demo":
        # The live summary is the demo's output; log lines only for warnings and errors. The demo itself says
        # the credential advice in the reader's language, so the daemon's English log line of it is left out.
        configure_logging(args.log_format or "console", logging.WARNING,
                          drop_events=frozenset({"credentials.expiring"}))
        return asyncio.run(_run_demo(args))
    if args.command == "service":
        from ksefd.winservice import main as service_main
        return service_main(args.action, args.config, args.startup)
    if args.command == "credentials":       # reads the config leniently: the token file may not exist yet
        configure_logging(args.log_format or "console", logging.WARNING)
        from ksefd import credentials_cli
        return asyncio.run(credentials_cli.run(args))
    if args.command in ("validate", "qr"):        # no config needed, nothing but the files
        configure_logging(args.log_format or "console", logging.WARNING)
        return _validate(args) if args.command == "validate" else _qr(args)
    from ksefd.config import ConfigError
    try:
        config = _load(args.config)
    except ConfigError as error:
        print(f"ksefd: {error}", file=sys.stderr)
        return EX_CONFIG
    i18n.use(config.language)      # what people read from here on ([daemon] language, issue #14)
    level = getattr(logging, config.log_level.upper())
    if args.command != "run":       # a report for people (check, status, ...): log lines only for what went wrong
        level = max(level, logging.WARNING)
    configure_logging(args.log_format or config.log_format, level)
    if args.command == "run":
        return asyncio.run(_run_daemon(config, args.once))
    if args.command == "status":
        return asyncio.run(_show_status(config, args.json))
    if args.command == "resume":
        return asyncio.run(_resume(config, args.company))
    if args.command == "reload":
        return asyncio.run(_reload(config))
    if args.command == "certificate":
        from ksefd import certificate_cli
        return asyncio.run(certificate_cli.run(config, args))
    if args.command == "check":
        return asyncio.run(_run_check(config, args.companies, args.json))
    if args.command == "requeue":
        return asyncio.run(_requeue(config, args))
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
