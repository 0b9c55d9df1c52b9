"""`ksefd service install|remove|start|stop|debug`: ksefd as a Windows service, with pywin32's service framework
(optional extra: `pip install ksefd[windows]`; docs/service.md has the exact commands).

The service runs the same `serve(config, stop)` as `ksefd run` (ksefd.daemon.service); the Service Control
Manager's Stop sets the same `stop` event SIGTERM sets on Linux, so a stop drains exactly as there
(work in flight gets `shutdown_grace_seconds`, sessions are closed, the database is closed).

Defaults live under %ProgramData%\\ksefd: the config `ksefd.toml`, the log `logs\\ksefd.log` (JSON lines: a
service has no console). The config path chosen at install time is kept in the service's registry key
(pywin32 custom option "config"). Everything but the pywin32 class itself is plain Python, tested on Linux.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING, TextIO

from ksefd.i18n import _

if TYPE_CHECKING:
    from ksefd.config import Config

SERVICE_NAME = "ksefd"
DISPLAY_NAME = "ksefd KSeF daemon"
DESCRIPTION = "Sends the ERP's invoices to KSeF and fetches received invoices (ksefd)."
ACTIONS = ("install", "remove", "start", "stop", "restart", "debug")
STARTUP = ("auto", "delayed", "manual", "disabled")
EX_CONFIG = 78
STOP_MARGIN_SECONDS = 30        # added to shutdown_grace_seconds for the SCM's stop wait hint


@dataclass(frozen=True)
class WindowsPaths:
    root: PureWindowsPath
    config: PureWindowsPath
    data: PureWindowsPath
    log: PureWindowsPath


def default_paths(environ: Mapping[str, str] | None = None) -> WindowsPaths:
    """%ProgramData%\\ksefd\\{ksefd.toml, data, logs\\ksefd.log} (C:\\ProgramData when the variable is unset)."""
    env = os.environ if environ is None else environ
    root = PureWindowsPath(env.get("ProgramData") or env.get("PROGRAMDATA") or r"C:\ProgramData") / "ksefd"
    return WindowsPaths(root, root / "ksefd.toml", root / "data", root / "logs" / "ksefd.log")


def framework_argv(action: str, startup: str = "auto", wait: int | None = None) -> list[str]:
    """The argv for pywin32's `win32serviceutil.HandleCommandLine` (options before the command)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown service action {action!r}; use one of {', '.join(ACTIONS)}")
    if startup not in STARTUP:
        raise ValueError(f"unknown startup type {startup!r}; use one of {', '.join(STARTUP)}")
    argv = [SERVICE_NAME]
    if action == "install":
        argv += ["--startup", startup]
    if wait is not None and action in ("start", "stop", "restart"):
        argv += ["--wait", str(wait)]
    return [*argv, action]


def stop_wait_hint_ms(config: Config | None) -> int:
    grace = config.shutdown_grace_seconds if config is not None else 30.0
    return int((grace + STOP_MARGIN_SECONDS) * 1000)


Serve = Callable[["Config", asyncio.Event], Awaitable[object]]   # serve() returns the --once problems


def _default_serve(config: Config, stop: asyncio.Event) -> Awaitable[object]:
    from ksefd.daemon.service import serve
    return serve(config, stop)


class ServiceRunner:
    """Runs `serve` on its own event loop (the service's main thread) and stops it from any other thread.

    `stop()` is the SCM's SvcStop: it may come before the loop exists, while it runs, or twice."""

    def __init__(self, config: Config, serve: Serve = _default_serve) -> None:
        self.config = config
        self._serve = serve
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._stop_requested = False
        self.started = threading.Event()

    def run(self) -> None:
        """Blocks until `serve` returns (after a stop and its drain)."""
        asyncio.run(self._main())

    async def _main(self) -> None:
        event = asyncio.Event()
        with self._lock:
            self._loop, self._event = asyncio.get_running_loop(), event
            if self._stop_requested:
                event.set()
        self.started.set()
        try:
            await self._serve(self.config, event)
        finally:
            with self._lock:
                self._loop = None

    def stop(self) -> None:
        """Ask for the drain, as SIGTERM does for `ksefd run` (thread-safe, idempotent)."""
        with self._lock:
            self._stop_requested = True
            if self._loop is not None and self._event is not None:
                self._loop.call_soon_threadsafe(self._event.set)


def open_log(path: Path) -> TextIO:
    """The service's log file (append, line-buffered); structlog writes JSON lines to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a", encoding="utf-8", buffering=1)


def run_configured(config_path: Path, log_path: Path | None, stop_hook: Callable[[ServiceRunner], None]) -> int:
    """The body of SvcDoRun: log to the file (None: to the console, `ksefd service debug`), load the config
    (78 on a bad one, as `ksefd run`), serve until stopped. `stop_hook(runner)` hands the runner to whoever
    receives SvcStop."""
    import logging

    from ksefd.config import ConfigError, load_config
    from ksefd.logs import configure_logging

    if log_path is not None:
        sys.stderr = open_log(log_path)
    configure_logging("json")
    try:
        config = load_config(config_path)
    except ConfigError as error:
        print(f"ksefd: {error}", file=sys.stderr)
        return EX_CONFIG
    configure_logging("json", getattr(logging, config.log_level.upper()))
    runner = ServiceRunner(config)
    stop_hook(runner)
    runner.run()
    return 0


def main(action: str, config: Path | None, startup: str = "auto") -> int:
    """`ksefd service ACTION`: Windows only; elsewhere it says what to use instead."""
    if sys.platform == "win32":   # pragma: no cover - Windows only
        return _windows_main(action, config, startup)
    print(_("ksefd service: Windows services exist only on Windows; on Linux install the systemd unit "
            "(systemd/ksefd.service, docs/service.md)"), file=sys.stderr)
    return 2


if sys.platform == "win32":   # pragma: no cover - pywin32 exists only on Windows; mypy on Linux skips this
    import servicemanager
    import win32service
    import win32serviceutil

    def _windows_main(action: str, config: Path | None, startup: str) -> int:
        chosen = (config or Path(default_paths().config)).absolute()
        if action == "install" and not chosen.exists():
            print(_("ksefd service: {config} does not exist; write the config first (config.example.toml)",
                    config=chosen), file=sys.stderr)
            return EX_CONFIG
        win32serviceutil.HandleCommandLine(KsefdService, argv=framework_argv(action, startup))
        if action == "install":
            win32serviceutil.SetServiceCustomOption(SERVICE_NAME, "config", str(chosen))
        return 0

    class KsefdService(win32serviceutil.ServiceFramework):
        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = DISPLAY_NAME
        _svc_description_ = DESCRIPTION

        def __init__(self, args: list[str]) -> None:
            super().__init__(args)
            self.runner: ServiceRunner | None = None

        def _keep(self, runner: ServiceRunner) -> None:
            self.runner = runner

        def SvcDoRun(self) -> None:
            paths = default_paths()
            config = win32serviceutil.GetServiceCustomOption(SERVICE_NAME, "config", str(paths.config))
            # ServiceFramework.SvcRun has reported SERVICE_RUNNING before calling this, and reports STOPPED after.
            servicemanager.LogInfoMsg(f"ksefd: starting with {config}")
            log = Path(paths.log) if servicemanager.RunningAsService() else None    # None: `ksefd service debug`
            code = run_configured(Path(config), log, self._keep)
            if code:
                servicemanager.LogErrorMsg(f"ksefd: the config {config} is invalid; see {paths.log}")

        def SvcStop(self) -> None:
            hint = stop_wait_hint_ms(self.runner.config if self.runner else None)
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=hint)
            if self.runner is not None:
                self.runner.stop()
