"""The edges of the daemon's life (DESIGN.md conventions 2 and 3; modelled on uvicorn's server lifecycle).

* `ShutdownSignals`: a context manager that catches SIGINT, SIGTERM (and SIGBREAK, Ctrl+Break on Windows)
  with `signal.signal`, which works on every platform; the first signal asks for a graceful stop (the
  drain), a second one sets `force`, which the drain honours by cutting its grace short. The handlers in
  place before are restored on exit, so a test or an embedding program gets its own back.
* `guarded`: runs a background duty (the heartbeat, the certificate renewal, one company's half) so that its
  failure is logged and retried instead of ending the TaskGroup, and with it every other company.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import traceback
from collections.abc import Awaitable, Callable
from types import FrameType, TracebackType
from typing import Any

import structlog

from .failures import Backoff, LastingFailure

log = structlog.get_logger("ksefd.daemon")

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGBREAK") if hasattr(signal, name))


class ShutdownSignals:
    """`with ShutdownSignals(stop, force): ...` inside a running event loop."""

    def __init__(self, stop: asyncio.Event, force: asyncio.Event | None = None) -> None:
        self.stop = stop
        self.force = force if force is not None else asyncio.Event()
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> ShutdownSignals:
        self._loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        # A signal handler runs between two bytecodes of the main thread: only hand the work to the loop.
        self.received.append(signum)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._react, signum, len(self.received))

    def _react(self, signum: int, count: int) -> None:
        name = signal.Signals(signum).name
        if count == 1:
            log.info("daemon.signal", signal=name, action="graceful stop (a second signal forces)")
            self.stop.set()
        else:
            log.warning("daemon.signal", signal=name, action="forced stop")
            self.stop.set()
            self.force.set()


async def guarded(name: str, duty: Callable[[], Awaitable[None]], stop: asyncio.Event, *,
                  first_retry: float = 1.0, max_retry: float = 60.0) -> None:
    """Run `duty()` until it returns or `stop` is set; an exception is logged (once when it starts, then
    slowly, and when it clears) and `duty` is started again after a capped backoff."""
    failing = LastingFailure(log, "daemon.task_failed")
    backoff = Backoff(first_retry, max_retry)
    while not stop.is_set():
        try:
            await duty()
            failing.cleared(task=name)
            return
        except Exception as exc:   # one duty's failure must not end the others (DESIGN.md convention 3)
            delay = backoff.next_delay()
            failing.failed(task=name, error=repr(exc), where=traceback.format_exc(limit=-3), retry_in=delay)
            await real_sleep(stop, delay)


async def every(seconds: float, step: Callable[[], Awaitable[None]], stop: asyncio.Event, name: str) -> None:
    """`step()` now and then every `seconds` until `stop`; a failing step is logged and tried again at the
    next tick (a SQLite hiccup in the heartbeat must not stop the daemon)."""
    failing = LastingFailure(log, "daemon.task_failed")
    while not stop.is_set():
        try:
            await step()
            failing.cleared(task=name)
        except Exception as exc:
            failing.failed(task=name, error=repr(exc), where=traceback.format_exc(limit=-3))
        await real_sleep(stop, seconds)


async def real_sleep(stop: asyncio.Event, seconds: float) -> None:
    """Wait `seconds` of real time, or less if `stop` is set. Real time on purpose: these are the daemon's
    own housekeeping intervals (liveness, retries of a bug), not business timers an injected clock drives."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
