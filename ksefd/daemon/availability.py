"""Is KSeF available? One monitor per KSeF target (environment + base URL), shared by its companies
(issue #11 item 1, PROTOCOL.md §1 and §8.1).

Two sources, combined:

* Latarnia (`GET /status`, `GET /messages`): polled every `latarnia_interval_seconds` (15 min) while all is
  well, every `latarnia_problem_interval_seconds` while something is wrong (an outage announced, or KSeF
  failing for the daemon), never more often. Its messages are kept in SQLite (store.announcements): a
  failure's FAILURE_START and FAILURE_END decide deadlines, also after a restart. A Latarnia that refuses
  (403) or cannot be reached is logged once, and is not an outage by itself;
* what the daemon itself sees from KSeF: failed logins and sends that never got an answer (connection
  refused or reset, timeouts, 5xx including 503 pages) make KSeF "unreachable" from that moment until
  a call succeeds again.

The verdict (`view()`): an announced outage (MAINTENANCE -> unavailability, FAILURE -> failure,
TOTAL_FAILURE -> total failure: the Ministry's modes), else KSeF unreachable without an announcement
(the taxpayer's own offline24, labelled so), else available.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from ksefd.clock import Clock
from ksefd.config import Company, Config
from ksefd.i18n import _
from ksefd.ksef import LatarniaClient, LatarniaUnavailable, Message, default_url, environment
from ksefd.store import Announcement, Store

from .failures import Failure, LastingFailure
from .runtime import sleep_unless_stopped

log = structlog.get_logger("ksefd.daemon.availability")

# Failure codes (failures.classify) that mean KSeF did not answer usefully at all.
UNREACHABLE_CODES = frozenset({"TransportError", "ServerError", "OutcomeUnknown", "os-error"})
ANNOUNCED = {"MAINTENANCE": "unavailability", "FAILURE": "failure", "TOTAL_FAILURE": "total-failure"}


@dataclass(frozen=True)
class Verdict:
    state: str                      # available | unavailability | failure | total-failure | unreachable
    since: dt.datetime | None
    announced: bool                 # the Ministry announced it (Latarnia), as opposed to what the daemon saw
    message: str                    # for a person
    event_id: int | None = None
    answers: bool = False           # announced, yet KSeF answers the daemon (a partial outage): offline invoices
                                    # may be sent; new ones are still issued offline until the outage ends

    @property
    def down(self) -> bool:
        return self.state != "available"

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "since": self.since.isoformat() if self.since else None,
                "announced": self.announced, "message": self.message, "eventId": self.event_id,
                "ksefAnswers": self.answers}


def is_unreachable(failure: Failure) -> bool:
    return failure.verdict == "transient" and failure.code in UNREACHABLE_CODES


def _announcement(m: Message) -> Announcement:
    return Announcement(m.id, m.event_id, m.category, m.type, m.title, m.text, m.start, m.end, m.version,
                        m.published)


class KsefAvailability:
    def __init__(self, target: str, latarnia_url: str, store: Store, clock: Clock, *, interval: float,
                 problem_interval: float, probe_url: str | None = None) -> None:
        self.target = target
        self.latarnia_url = latarnia_url
        self.store = store
        self.clock = clock
        self.interval = interval
        self.problem_interval = problem_interval
        self.probe_url = probe_url          # a public KSeF endpoint asked while KSeF seems unreachable
        self.latarnia_status: str | None = None         # last status Latarnia gave; None: never read
        self.latarnia_since: dt.datetime | None = None
        self.active_event: int | None = None
        self.latarnia_error: str | None = None
        self.checked_at: dt.datetime | None = None
        self.unreachable_since: dt.datetime | None = None
        self.unreachable_detail: str | None = None
        self.answering = False              # during an announced outage: the probe of KSeF's API succeeded
        self.history: list[Announcement] = []
        self.version = 0                                  # bumped when the verdict or the history changes
        self.poke = asyncio.Event()
        self._listeners: list[Callable[[Verdict, Verdict], None]] = []
        self._client = LatarniaClient(latarnia_url) if latarnia_url or probe_url else None
        self._failing = LastingFailure(log.bind(latarnia=latarnia_url), "availability.latarnia_unreadable")

    # --- what the companies use -------------------------------------------------------------------

    def on_change(self, listener: Callable[[Verdict, Verdict], None]) -> None:
        """`listener(before, after)` whenever the verdict changes (e.g. KSeF is back: send offline invoices)."""
        self._listeners.append(listener)

    def view(self) -> Verdict:
        status = self.latarnia_status
        if status in ANNOUNCED:
            return Verdict(ANNOUNCED[status], self.latarnia_since, True,
                           _("KSeF announced {status} (Latarnia {url})", status=status, url=str(self.latarnia_url)),
                           self.active_event,
                           answers=self.answering and self.unreachable_since is None)
        if self.unreachable_since is not None:
            return Verdict("unreachable", self.unreachable_since, False,
                           _("KSeF cannot be reached and no outage is announced: the taxpayer's offline24 applies "
                             "({detail})", detail=str(self.unreachable_detail)))
        return Verdict("available", None, False, _("KSeF is available"))

    def observe(self, failure: Failure | None) -> None:
        """What a login or a send saw: None for a KSeF answer, a Failure otherwise (only an unreachable KSeF
        counts; a refusal, a 429 or a hold is KSeF answering)."""
        before = self.view()
        if failure is None:
            if self.unreachable_since is None:
                return
            self.unreachable_since = self.unreachable_detail = None
            log.info("availability.ksef_reachable", target=self.target)
        elif is_unreachable(failure):
            self.answering = False
            self.unreachable_detail = failure.message
            if self.unreachable_since is not None:
                return
            self.unreachable_since = self.clock.now()
            log.warning("availability.ksef_unreachable", target=self.target, error=failure.message)
            self.poke.set()              # ask Latarnia soon whether an outage is announced
        else:
            return
        self._changed(before)

    # --- polling Latarnia ---------------------------------------------------------------------------

    async def load(self) -> None:
        self.history = await self.store.announcements.history(self.latarnia_url or self.target)

    async def poll_once(self) -> None:
        if self._client is None:
            return
        troubled = self.unreachable_since is not None or self.latarnia_status in ANNOUNCED
        reachable = bool(troubled and self.probe_url and await self._client.reachable(self.probe_url))
        if self.unreachable_since is not None and reachable:
            self.observe(None)          # KSeF answers again (the daemon holds its sends while it seems down)
        if not self.latarnia_url:
            return
        before = self.view()
        self.answering = reachable
        try:
            status = await self._client.status()
            messages = await self._client.messages()
        except LatarniaUnavailable as exc:
            self.latarnia_error = str(exc)
            self._failing.failed(error=str(exc), note="not an outage by itself; KSeF's own answers still count")
            return
        self._failing.cleared()
        self.latarnia_error = None
        self.checked_at = self.clock.now()
        known = {m.id: m for m in messages}
        known.update((m.id, m) for m in status.messages)
        changed = await self.store.announcements.record(self.latarnia_url, [_announcement(m) for m in known.values()])
        for item in changed:
            report = log.warning if item.type == "FAILURE_START" else log.info
            report("availability.announcement", target=self.target, type=item.type, category=item.category,
                        event_id=item.event_id, title=item.title, start=item.start, end=item.end)
        if changed:
            self.history = await self.store.announcements.history(self.latarnia_url)
            self.version += 1
        if status.status != self.latarnia_status:
            self.latarnia_since = self.clock.now()
            report = log.info if status.status == "AVAILABLE" else log.warning
            report("availability.latarnia_status", target=self.target, status=status.status,
                        was=self.latarnia_status)
        self.latarnia_status = status.status
        active = [m for m in status.messages if m.type in ("FAILURE_START", "MAINTENANCE_ANNOUNCEMENT")]
        self.active_event = active[-1].event_id if active else None
        self._changed(before)

    def next_interval(self) -> float:
        troubled = self.view().down or self.latarnia_status not in (None, "AVAILABLE")
        return self.problem_interval if troubled else self.interval

    async def run(self, stop: asyncio.Event) -> None:
        await self.load()
        while not stop.is_set():
            await self.poll_once()
            # Never sooner than the problem interval; a poke (KSeF just failed) cuts the regular wait short.
            if await sleep_unless_stopped(self.clock, stop, self.problem_interval):
                return
            rest = self.next_interval() - self.problem_interval
            if rest > 0 and not self.poke.is_set():
                await self._wait_poke_or(stop, rest)
            self.poke.clear()

    async def _wait_poke_or(self, stop: asyncio.Event, seconds: float) -> bool:
        poked = asyncio.ensure_future(self.poke.wait())
        slept = asyncio.ensure_future(sleep_unless_stopped(self.clock, stop, seconds))
        try:
            await asyncio.wait({poked, slept}, return_when=asyncio.FIRST_COMPLETED)
            return poked.done()
        finally:
            for task in (poked, slept):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    def _changed(self, before: Verdict) -> None:
        after = self.view()
        if (after.state, after.event_id, after.answers) == (before.state, before.event_id, before.answers):
            return
        self.version += 1
        log.info("availability.changed", target=self.target, state=after.state, was=before.state,
                 announced=after.announced)
        for listener in self._listeners:
            listener(before, after)


class AvailabilityBoard:
    """The monitors of every KSeF target the config uses (companies on one target share one)."""

    def __init__(self, config: Config, store: Store, clock: Clock) -> None:
        self.monitors: dict[tuple[str, str | None], KsefAvailability] = {}
        self.store, self.clock = store, clock
        for company in config.companies:
            self.ensure(company, config)

    @staticmethod
    def key(company: Company) -> tuple[str, str | None]:
        return (company.environment, company.base_url)

    def ensure(self, company: Company, config: Config) -> KsefAvailability:
        """The monitor of the company's KSeF target, made if no company used that target yet (also for a
        company a reload adds)."""
        key = self.key(company)
        if key not in self.monitors:
            url = config.latarnia_url or default_url(company.environment, company.base_url)
            api = environment(company.environment, company.base_url).api_url
            self.monitors[key] = KsefAvailability(
                f"{company.environment}:{company.base_url or 'official'}", url, self.store, self.clock,
                interval=config.latarnia_interval_seconds,
                problem_interval=config.latarnia_problem_interval_seconds,
                probe_url=f"{api}/security/public-key-certificates")
        return self.monitors[key]

    def for_company(self, company: Company) -> KsefAvailability:
        return self.monitors[self.key(company)]

    async def close(self) -> None:
        for monitor in self.monitors.values():
            with contextlib.suppress(Exception):
                await monitor.close()
