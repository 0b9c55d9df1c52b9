"""One failure vocabulary for both halves, lasting failures logged sparingly, and the signal context
manager (issue #9)."""

from __future__ import annotations

import asyncio
import os
import signal

import structlog
from structlog.testing import capture_logs

from ksefd.daemon.failures import Backoff, LastingFailure, backoff_delay, classify
from ksefd.daemon.lifecycle import ShutdownSignals
from ksefd.ksef.errors import CredentialsError, RateLimited


def test_a_lasting_failure_is_logged_when_it_starts_then_slowly_then_when_it_clears() -> None:
    now = [0.0]
    failing = LastingFailure(structlog.get_logger("t"), "outbox.dispatch_failed", interval=300,
                             monotonic=lambda: now[0])
    with capture_logs() as logs:
        for _ in range(60):                 # every 5 s for 5 minutes: one line, not sixty
            failing.failed(error="disk full")
            now[0] += 5
        failing.failed(error="disk full")   # 300 s after the first: a reminder with the count
        failing.cleared()
        failing.cleared()                   # already clear: nothing more
    assert [e["event"] for e in logs] == ["outbox.dispatch_failed", "outbox.dispatch_failed",
                                          "outbox.dispatch_failed.cleared"]
    assert logs[1]["times"] == 61 and logs[1]["still_failing_seconds"] == 300
    assert logs[2]["failed_seconds"] == 300


def test_one_classification_and_one_backoff() -> None:
    assert classify(CredentialsError("no file")).verdict == "hold"
    limited = classify(RateLimited(42.0, group="invoiceSend"))
    assert (limited.verdict, limited.retry_after) == ("transient", 42.0)
    assert classify(ValueError("bug")).code == "unexpected"
    backoff = Backoff(1, 8)
    assert [backoff.next_delay() for _ in range(5)] == [1, 2, 4, 8, 8]
    assert backoff.next_delay(retry_after=30) == 30 and backoff_delay(1, 8, 1) == 1


async def test_signals_first_stops_second_forces_and_old_handlers_come_back() -> None:
    def before(_signum: int, _frame: object) -> None:
        raise AssertionError("the daemon's handler should be in place")

    previous = signal.signal(signal.SIGTERM, before)
    try:
        stop, force = asyncio.Event(), asyncio.Event()
        with ShutdownSignals(stop, force) as signals:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), 5)
            assert not force.is_set()
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.wait_for(force.wait(), 5)
            assert signals.received == [signal.SIGTERM, signal.SIGINT]
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, previous)
