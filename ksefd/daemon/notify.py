"""sd_notify(3) without a dependency: tell systemd (Type=notify in systemd/ksefd.service) that start-up is
done, what the daemon is doing, that it is alive, and that it is stopping.

The protocol is one datagram of `KEY=VALUE` lines to the unix socket named in $NOTIFY_SOCKET; a name that
starts with '@' is in the abstract namespace (a leading NUL byte). When $NOTIFY_SOCKET is unset (not under
systemd, or on Windows) every call is a no-op returning False, so callers never need to ask first.
A failed send is logged and swallowed: monitoring must never stop the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

import structlog

log = structlog.get_logger("ksefd.daemon.notify")


def notify(*fields: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `fields` (e.g. "READY=1") as one message; True if systemd got it."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    family = getattr(socket, "AF_UNIX", None)
    if not address or family is None or not address.startswith(("/", "@")):
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(fields).encode("utf-8"), target)
    except OSError as exc:
        log.warning("notify.failed", socket=address, error=str(exc))
        return False
    return True


def ready(environ: Mapping[str, str] | None = None) -> bool:
    """Start-up is complete: systemd marks the unit active (and starts counting the watchdog)."""
    return notify("READY=1", environ=environ)


def status(text: str, environ: Mapping[str, str] | None = None) -> bool:
    """A one-line summary shown by `systemctl status ksefd` (newlines would end the field)."""
    return notify("STATUS=" + " ".join(text.split()), environ=environ)


def watchdog(environ: Mapping[str, str] | None = None) -> bool:
    """The main loop is alive; without it for WatchdogSec= systemd kills and restarts the service."""
    return notify("WATCHDOG=1", environ=environ)


def stopping(environ: Mapping[str, str] | None = None) -> bool:
    """The drain has begun (systemctl shows "deactivating" instead of a hung "active")."""
    return notify("STOPPING=1", environ=environ)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC (sd_watchdog_enabled(3) advises pinging at
    half the timeout), or None when the watchdog is off or meant for another process ($WATCHDOG_PID)."""
    env = os.environ if environ is None else environ
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2


# Once a minute: an idle daemon under systemd is woken by the watchdog (every half WatchdogSec=, 30 s) and this
# alone. The summary was read company by company (status.gather): 75-200 ms of CPU for 100 companies, 1-2 % of a
# core every 10 s; now a few queries over all companies (notify_status.summary, ~0.3 ms) (issue #16 point 4).
STATUS_EVERY_SECONDS = 60.0


async def keepalive(stop: asyncio.Event, summary: Callable[[], Awaitable[str]] | None = None,
                    environ: Mapping[str, str] | None = None) -> None:
    """Until `stop` is set: WATCHDOG=1 every half $WATCHDOG_USEC and, when `summary` is given, STATUS=<summary()>
    about every minute. A task on the daemon's event loop: if the loop hangs, the pings stop and systemd
    restarts the service (WatchdogSec=). Returns at once when not under systemd."""
    env = os.environ if environ is None else environ
    if not env.get("NOTIFY_SOCKET"):
        return
    interval = watchdog_interval(env)
    tick = min(interval, STATUS_EVERY_SECONDS) if interval else STATUS_EVERY_SECONDS
    since_status = STATUS_EVERY_SECONDS          # the first round sends a status at once
    while not stop.is_set():
        if interval:
            watchdog(env)
        if summary is not None and since_status >= STATUS_EVERY_SECONDS:
            with contextlib.suppress(Exception):  # a failing summary must not stop the pings
                status(await summary(), env)
            since_status = 0.0
        with contextlib.suppress(TimeoutError):  # real time: a liveness signal, not a business timer
            await asyncio.wait_for(stop.wait(), tick)
        since_status += tick
