"""Reload without restart (issue #14 point 4): the config file is read again and applied per company.

Asked for in two ways that end in the same place:
* SIGHUP (`systemctl reload ksefd`, `kill -HUP`): `ReloadSignal` sets the daemon's reload event;
* `ksefd reload -c CONFIG`, on every platform (a Windows service gets no SIGHUP): the command writes a request
  into the state database (kv namespace `control`), which both already open, as `ksefd resume` does
  (resume.py), then writes STATE_DB.reload; on Linux that file's inotify event wakes the daemon (no polling,
  reload_nudge.py), elsewhere the daemon looks for the request every `RELOAD_LOOK_SECONDS`; it writes back
  the outcome.

Applying: an invalid new config is refused with the same messages as at start, and the running one stays.
Otherwise, companies are compared by name: a removed one (or one switched off with `enabled = false`) is
stopped as the drain stops all (in-flight work gets its grace period; every step is persisted before its
KSeF call, so what is cut resumes at the next start); an added one (or one switched on) is started; a changed
one (any setting, or its credential files' contents) is stopped and started again, logging in with the new
credentials. Unchanged companies are not touched. data_dir and state_db cannot change under a running
daemon: such a config is refused with "restart" as the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import signal
import time
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any, Protocol

import structlog

from ksefd import i18n
from ksefd.config import Company, Config, ConfigError, load_config
from ksefd.i18n import _
from ksefd.store import Store

from .connection import CompanyConnection, Fingerprint, credential_fingerprint
from .outbox.sending_off import return_unsent
from .outbox.worker import OutboxWorker
from .reload_nudge import nudge, open_nudge
from .runtime import Runtime

log = structlog.get_logger("ksefd.daemon")

CONTROL_NAMESPACE = "control"
REQUEST_KEY = "reload"              # written by `ksefd reload`, taken (deleted) by the daemon
RESULT_KEY = "reload_result"        # the daemon's answer: JSON {requestedAt, at, ok, message}
RELOAD_LOOK_SECONDS = 2.0
RESTART_ONLY = ("data_dir", "state_db")


class Reloadable(Protocol):
    """What of the running daemon (service.Daemon) a reload uses."""

    runtime: Runtime
    workers: list[OutboxWorker]
    connections: dict[str, CompanyConnection]

    def add_company(self, company: Company) -> None: ...
    async def remove_company(self, name: str) -> None: ...
    def start_watcher(self) -> None: ...


class ReloadSignal:
    """`with ReloadSignal(event): ...`: SIGHUP sets `event` (POSIX; elsewhere `ksefd reload` does)."""

    def __init__(self, event: asyncio.Event) -> None:
        self.event = event
        self._previous: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> ReloadSignal:
        self._loop = asyncio.get_running_loop()
        if hasattr(signal, "SIGHUP"):
            self._previous = signal.signal(signal.SIGHUP, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if hasattr(signal, "SIGHUP") and self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        assert self._loop is not None       # only hand the work to the loop (as ShutdownSignals does)
        self._loop.call_soon_threadsafe(self._react)

    def _react(self) -> None:
        log.info("daemon.signal", signal="SIGHUP", action="reload the config")
        self.event.set()


@dataclass
class Plan:
    added: list[Company] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[Company] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def runs(company: Company) -> bool:
    return company.send or company.receive


def plan(old: Config, new: Config, fingerprints: dict[str, Fingerprint]) -> Plan:
    """What to stop and start: by name; a company that neither sends nor receives does not run."""
    before = {c.name: c for c in old.companies if runs(c)}
    after = {c.name: c for c in new.companies if runs(c)}
    result = Plan()
    for name, company in after.items():
        if name not in before:
            result.added.append(company)
        elif company != before[name] or credential_fingerprint(company) != fingerprints.get(name):
            result.changed.append(company)
        else:
            result.unchanged.append(name)
    result.removed = [name for name in before if name not in after]
    return result


def restart_only_changes(old: Config, new: Config) -> list[str]:
    return [key for key in RESTART_ONLY if getattr(old, key) != getattr(new, key)]


@dataclass
class ReloadOutcome:
    ok: bool
    message: str


class Reloader:
    """Applies reloads to one running daemon, one at a time."""

    def __init__(self, daemon: Reloadable) -> None:
        self.daemon = daemon
        self.lock = asyncio.Lock()
        self.fingerprints = {c.name: credential_fingerprint(c) for c in daemon.runtime.config.companies}

    async def reload(self) -> ReloadOutcome:
        async with self.lock:
            return await self._reload()

    async def _reload(self) -> ReloadOutcome:
        runtime = self.daemon.runtime
        old = runtime.config
        if old.source is None:
            return ReloadOutcome(False, _("this daemon was not started from a config file: nothing to re-read"))
        try:
            new = await asyncio.to_thread(load_config, old.source)
        except ConfigError as error:       # the same words as `ksefd run` prints at start (cli.py)
            log.error("daemon.reload_rejected", config=str(old.source), problems=error.english,
                      kept="the running config")
            return ReloadOutcome(False, _("{error}\nThe running config stays; fix the file and reload again.",
                                          error=error))
        restart = restart_only_changes(old, new)
        if restart:
            keys = ", ".join(f"[daemon] {key}" for key in restart)
            log.error("daemon.reload_rejected", config=str(old.source), problems=[f"{keys} changed"],
                      kept="the running config")
            return ReloadOutcome(False, _("{config}: {keys} cannot change while ksefd runs: restart it (systemctl "
                                          "restart ksefd) to use the new value; the running config stays.",
                                          config=old.source, keys=keys))
        steps = plan(old, new, self.fingerprints)
        for name in steps.removed + [c.name for c in steps.changed]:
            await self.daemon.remove_company(name)
        runtime.config = new
        i18n.use(new.language)
        sending_before = {w.company.name for w in self.daemon.workers}
        for company in steps.added + steps.changed:
            if not company.send:     # as at start: claimed but unsent files go back into outbox/
                await return_unsent(runtime, company)
            self.fingerprints[company.name] = credential_fingerprint(company)
            self.daemon.add_company(company)
        if {w.company.name for w in self.daemon.workers} - sending_before:
            self.daemon.start_watcher()     # the new outboxes are watched too
        for name in steps.removed:
            self.fingerprints.pop(name, None)
        added, changed = [c.name for c in steps.added], [c.name for c in steps.changed]
        log.info("daemon.reloaded", config=str(old.source), added=added, removed=steps.removed, changed=changed,
                 unchanged=steps.unchanged, switched_off=list(new.switched_off))
        parts = [f"{label}: {', '.join(names)}" for label, names in (
            (_("added"), added), (_("removed"), steps.removed), (_("restarted with the new settings"), changed),
            (_("unchanged"), steps.unchanged)) if names]
        return ReloadOutcome(True, _("config {config} reloaded; {what}", config=old.source,
                                     what="; ".join(parts) or _("no companies")))


async def watch_reloads(daemon: Reloadable, requested: asyncio.Event, stop: asyncio.Event) -> None:
    """Until `stop`: reload when `requested` is set (SIGHUP) or `ksefd reload` left a request (seen at once when
    its nudge wakes us, reload_nudge.py; by looking every RELOAD_LOOK_SECONDS where there is no such watch)."""
    reloader = Reloader(daemon)
    store = daemon.runtime.store
    watch = open_nudge(store.path)
    look: float | None = RELOAD_LOOK_SECONDS      # the first look also finds a request left before the start
    try:
        while not stop.is_set():
            waiters = [asyncio.ensure_future(requested.wait()), asyncio.ensure_future(stop.wait())]
            if watch is not None:
                waiters.append(asyncio.ensure_future(watch.event.wait()))
            try:
                await asyncio.wait(waiters, timeout=look, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waiters:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if stop.is_set():
                return
            if watch is not None:
                watch.event.clear()
                look = None
            asked = await store.kv.get(CONTROL_NAMESPACE, REQUEST_KEY)
            if not requested.is_set() and asked is None:
                continue
            requested.clear()
            if asked is not None:
                await store.kv.delete(CONTROL_NAMESPACE, REQUEST_KEY)
            outcome = await reloader.reload()
            await store.kv.put(CONTROL_NAMESPACE, RESULT_KEY, json.dumps({
                "requestedAt": asked, "at": daemon.runtime.clock.now().isoformat(), "ok": outcome.ok,
                "message": outcome.message}, ensure_ascii=False))
    finally:
        if watch is not None:
            watch.close()


async def request_reload(store: Store, now: dt.datetime, *, daemon_running: bool, wait_seconds: float = 20.0,
                         poll_seconds: float = 0.2) -> ReloadOutcome:
    """`ksefd reload`: leave the request, wait for the running daemon's answer (real time: another process)."""
    asked = now.isoformat()
    await store.kv.put(CONTROL_NAMESPACE, REQUEST_KEY, asked)
    await asyncio.to_thread(nudge, store.path, asked)       # after the row: the woken daemon finds it
    if not daemon_running:
        return ReloadOutcome(True, _("no daemon is running: the request waits, and `ksefd run` reads the config at "
                                     "its start anyway"))
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(poll_seconds)
        text = await store.kv.get(CONTROL_NAMESPACE, RESULT_KEY)
        result = json.loads(text) if text else None
        if isinstance(result, dict) and result.get("requestedAt") == asked:
            return ReloadOutcome(bool(result["ok"]), str(result["message"]))
    return ReloadOutcome(True, _("the request was left for the running daemon; it has not answered yet (see its "
                                 "log, or `ksefd status` in a moment)"))
