"""sd_notify(3) without a dependency: tell systemd (Type=notify in systemd/ksefd.service) that start-up is
done, what the daemon is doing, that it is alive, and that it is stopping.

The protocol is one datagram of `KEY=VALUE` lines to the unix socket named in $NOTIFY_SOCKET; a name that
starts with '@' is in the abstract namespace (a leading NUL byte). When $NOTIFY_SOCKET is unset (not under
systemd, or on Windows) every call is a no-op returning False, so callers never need to ask first.
A failed send is logged and swallowed: monitoring must never stop the daemon.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

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
