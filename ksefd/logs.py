"""structlog set-up: console on a TTY, JSON lines otherwise; secrets never reach a log line."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Keys whose values are secrets (tokens, keys, passwords): replaced before rendering.
SECRET_KEY_RE = re.compile(r"(token|password|passwd|secret|private_key|authorization|encrypted_?key)", re.I)
REDACTED = "[redacted]"


def redact_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if key != "event" and SECRET_KEY_RE.search(key):
            event[key] = REDACTED
    return event


def configure_logging(fmt: str = "auto", level: int = logging.INFO) -> None:
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
