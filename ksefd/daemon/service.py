"""`serve(config, stop)`: the one core of the daemon (DESIGN.md conventions 1-5). `ksefd run`, `ksefd demo`,
systemd and a Windows service are thin shells that differ only in how they set `stop`.

Phases, each logged:

* startup: open the state database (migrations), restore the rate limiter's windows, create each
  sending company's worker;
* main loop: every company's worker, the limiter's autosave and the heartbeat, all owned by one
  TaskGroup, until `stop` is set, or, with `once=True` (drain mode), until every company has nothing
  left to do (`OutboxWorker.settled`);
* shutdown: workers stop taking new work; what is in flight gets `shutdown_grace_seconds` to finish
  (then it is cancelled, which is safe: every step is persisted before its KSeF call); online sessions
  are closed, the limiter saved, the database closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog

from ksefd import __version__
from ksefd.clock import Clock, SystemClock
from ksefd.config import Config
from ksefd.ksef.ratelimit import RateLimiter
from ksefd.store import Store

from .inbox_runner import run_inbox
from .outbox_worker import OutboxWorker
from .runtime import Runtime, StoreLimiterPersistence

log = structlog.get_logger("ksefd.daemon")

HEARTBEAT_SECONDS = 5.0
SETTLED_CHECK_SECONDS = 0.2
SETTLED_ROUNDS = 3          # drain mode ends after this many settled looks in a row (files may be landing)


async def serve(config: Config, stop: asyncio.Event, *, clock: Clock | None = None, once: bool = False,
                on_progress: Callable[[Runtime], Awaitable[None]] | None = None) -> None:
    """Run the daemon until `stop` is set (or, with `once`, until nothing is left to do).

    `on_progress(runtime)`, if given, is awaited about every 0.2 s while running (e.g. `ksefd demo` reads
    `runtime.store` there to print a live summary; `status.gather` does the reading)."""
    runtime = await _startup(config, clock or SystemClock(), once)
    try:
        await _main_loop(runtime, stop, on_progress)
    finally:
        await _shutdown(runtime)


async def _startup(config: Config, clock: Clock, once: bool) -> Runtime:
    store = await Store.open(config.state_db, clock)
    limiter = RateLimiter(now=lambda: clock.now().timestamp(), sleep=clock.sleep,
                          store=StoreLimiterPersistence(store))
    await limiter.load()
    runtime = Runtime(config, store, clock, limiter, once=once)
    senders = [c.name for c in config.companies if c.send]
    log.info("daemon.started", version=__version__, state_db=str(config.state_db), companies=len(config.companies),
             sending=senders, once=once)
    return runtime


async def _main_loop(runtime: Runtime, stop: asyncio.Event,
                     on_progress: Callable[[Runtime], Awaitable[None]] | None) -> None:
    workers = [OutboxWorker(runtime, c) for c in runtime.config.companies if c.send]
    draining = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(w.run(draining), name=f"outbox:{w.company.name}") for w in workers]
        receivers = [group.create_task(run_inbox(runtime, c, draining), name=f"inbox:{c.name}")
                     for c in runtime.config.companies if c.receive]     # issue #6: KSeF -> inbox
        helpers = [group.create_task(_heartbeat(runtime, draining), name="heartbeat"),
                   group.create_task(_autosave(runtime, draining), name="limiter-autosave")]
        await _until_done(runtime, stop, workers, on_progress, receivers)
        log.info("daemon.draining", grace_seconds=runtime.config.shutdown_grace_seconds)
        draining.set()
        for worker in workers:
            worker.ctx.wake()
            worker.intake.poke.set()
        _, late = await asyncio.wait([*tasks, *receivers, *helpers], timeout=runtime.config.shutdown_grace_seconds)
        for task in late:
            log.warning("daemon.drain_timeout", task=task.get_name())
            task.cancel()
    closing = [w.close_online() for w in workers]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(1.0, runtime.config.shutdown_grace_seconds)):
            await asyncio.gather(*closing)


async def _until_done(runtime: Runtime, stop: asyncio.Event, workers: list[OutboxWorker],
                      on_progress: Callable[[Runtime], Awaitable[None]] | None,
                      receivers: Sequence[asyncio.Task[None]] = ()) -> None:
    """Wait for `stop`; in drain mode also for every worker to be settled a few looks in a row."""
    calm = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SETTLED_CHECK_SECONDS)   # real time: a check, not a business timer
        if on_progress is not None:
            await on_progress(runtime)
        if runtime.once:
            settled = all([await w.settled() for w in workers]) and all(r.done() for r in receivers)
            calm = calm + 1 if settled else 0
            if calm >= SETTLED_ROUNDS:
                log.info("daemon.drained")
                return


async def _heartbeat(runtime: Runtime, draining: asyncio.Event) -> None:
    started = time.time()
    while not draining.is_set():
        await runtime.store.heartbeat.beat("daemon", {"version": __version__, "uptimeSeconds": round(
            time.time() - started), "companies": [c.name for c in runtime.config.companies]})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(draining.wait(), HEARTBEAT_SECONDS)


async def _autosave(runtime: Runtime, draining: asyncio.Event) -> None:
    """The limiter's windows, saved every few seconds (and at shutdown) so a restart does not spend a
    quota twice (issue #5 item 4)."""
    while not draining.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(draining.wait(), HEARTBEAT_SECONDS)
        await runtime.limiter.save()


async def _shutdown(runtime: Runtime) -> None:
    with contextlib.suppress(Exception):
        await runtime.limiter.save()
    with contextlib.suppress(Exception):
        await runtime.store.heartbeat.beat("daemon", {"version": __version__, "stopped": True})
    await runtime.close_clients()
    await runtime.store.close()
    log.info("daemon.stopped")
