"""structlog set-up: console on a TTY, JSON lines otherwise, plain lines with syslog priorities under
systemd's journal; secrets never reach a log line.

Formats (`[daemon] log_format`, `ksefd --log-format`):

* `console`: coloured, aligned, for a person at a terminal;
* `json`: one JSON object a line, for log shippers;
* `journal`: `<3>outbox.rejected company=acme file=...`: the `<N>` prefix is the syslog priority systemd reads
  from a service's stderr (sd-daemon(3), SyslogLevelPrefix=), so `journalctl -p warning` filters and colours by
  level; no timestamp, the journal adds its own;
* `auto` (default): `journal` when stderr is the journal stream systemd gave the service ($JOURNAL_STREAM names
  its device and inode, systemd.exec(5)), else `console` on a TTY, else `json`.

Every line about one outbox invoice carries `invoice=<id>`, its row id in the state database, the same id its
`events` rows have: one correlation id through the log and the audit trail.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

# Keys whose values are secrets (tokens, keys, passwords): replaced before rendering.
SECRET_KEY_RE = re.compile(r"(token|password|passwd|secret|private_key|authorization|encrypted_?key)", re.I)
REDACTED = "[redacted]"
# syslog priorities (RFC 5424) of structlog's level names
PRIORITIES = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "notice": 5, "info": 6,
              "debug": 7}


def redact_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key != "event" and SECRET_KEY_RE.search(key):
            event[key] = REDACTED
    return event


def is_journal(stream: TextIO, environ: MutableMapping[str, str] | None = None) -> bool:
    """True when `stream` is the journal stream systemd connected ($JOURNAL_STREAM = "DEVICE:INODE")."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        found = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return found.st_dev == int(device) and found.st_ino == int(inode)


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\\\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
    return text


def render_journal(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
    """`<N>event key=value ...` on one line (newlines inside values escaped: one journal entry per event)."""
    level = str(event.pop("level", "info"))
    event.pop("timestamp", None)
    name = str(event.pop("event", ""))
    fields = " ".join(f"{key}={_logfmt_value(value)}" for key, value in event.items())
    return f"<{PRIORITIES.get(level, 6)}>{name}" + (f" {fields}" if fields else "")


def choose_format(fmt: str, stream: TextIO) -> str:
    if fmt != "auto":
        return fmt
    if is_journal(stream):
        return "journal"
    return "console" if stream.isatty() else "json"


def dropping(events: frozenset[str]) -> Any:
    """A processor that leaves out the named events (the demo says those itself, in the reader's language)."""
    def drop(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event.get("event") in events:
            raise structlog.DropEvent
        return event
    return drop


def configure_logging(fmt: str = "auto", level: int = logging.INFO, *,
                      drop_events: frozenset[str] = frozenset()) -> None:
    chosen = choose_format(fmt, sys.stderr)
    renderer: Any
    if chosen == "console":
        renderer = structlog.dev.ConsoleRenderer()
    elif chosen == "journal":
        renderer = render_journal
    else:
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False)   # Polish letters readable (issue #14)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            dropping(drop_events),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
