"""The rate limiter's durable record in real SQLite (issue #10 point 1): a grant or a block is committed before
`acquire`/`penalise` returns, grants taken together share a transaction, a killed daemon's successor knows
every window and block, and an unclean stop is judged by the boot it happened in. Virtual time for the
limiter; no test really sleeps."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

import pytest

from ksefd.clock import ManualClock
from ksefd.ksef.ratelimit import PRODUCTION_LIMITS, GroupLimits, RateLimiter
from ksefd.store import BootIdentity, RateLimitJournal, Store
from tests.ksef.virtual_time import VirtualClock
from tests.store.conftest import START

A, B = "Nip:1111111111", "Nip:2222222222"
BOOT = BootIdentity("boot-1", START.timestamp() - 86_400)


def rows(db_path: Path, sql: str) -> list[tuple[object, ...]]:
    """Read with a separate plain connection, as the next process would."""
    with sqlite3.connect(db_path) as conn:
        return list(conn.execute(sql).fetchall())


class IOAwareClock(VirtualClock):
    """Virtual time that stands still while a journal write is in SQLite's thread (`busy`), as a few
    milliseconds of real time would."""

    busy = 0

    async def _settle(self) -> None:
        await super()._settle()
        while self.busy:
            await asyncio.sleep(0.001)
            await super()._settle()


class Daemon:
    """One run: a store connection, its journal and a limiter on a shared virtual clock."""

    def __init__(self, store: Store, limiter: RateLimiter, journal: RateLimitJournal) -> None:
        self.store, self.limiter, self.journal = store, limiter, journal


@pytest.fixture
async def start(db_path: Path) -> AsyncIterator[Callable[..., object]]:
    opened: list[Store] = []
    clock = IOAwareClock(START.timestamp())

    async def run(boot: BootIdentity = BOOT, journal_wrapper: Callable[[RateLimitJournal], object] | None = None
                  ) -> Daemon:
        store = await Store.open(db_path, ManualClock(START))
        opened.append(store)
        journal = RateLimitJournal(store.db, store.clock.now, boot=lambda: boot)
        wrapped = journal_wrapper(journal) if journal_wrapper else journal
        limiter = RateLimiter(now=clock.now, sleep=clock.sleep, margin=0.0, journal=wrapped)  # type: ignore[arg-type]
        await limiter.load()
        return Daemon(store, limiter, journal)

    run.clock = clock  # type: ignore[attr-defined]
    yield run
    for store in opened:       # a "killed" run's connection is simply abandoned until here
        await store.close()


async def test_a_grant_is_committed_before_acquire_returns(start: Callable[..., object], db_path: Path) -> None:
    daemon: Daemon = await start()  # type: ignore[misc]
    await daemon.limiter.acquire(A, "invoiceSend")
    assert rows(db_path, "SELECT context, grp FROM rate_grants") == [(A, "invoiceSend")]
    await daemon.limiter.penalise(B, "invoiceExport", 120.0)
    assert rows(db_path, "SELECT context, until FROM rate_blocks") == [(B, pytest.approx(START.timestamp() + 120))]
    # The limiter's own commits ran with synchronous=NORMAL; the daemon's state transitions stay FULL (2).
    async with daemon.store.db.read() as conn, conn.execute("PRAGMA synchronous") as cursor:
        assert (await cursor.fetchone())[0] == 2  # type: ignore[index]


async def test_a_killed_daemon_s_successor_knows_every_window_and_block(start: Callable[..., object]) -> None:
    first: Daemon = await start()  # type: ignore[misc]
    clock: VirtualClock = start.clock  # type: ignore[attr-defined]
    for _ in range(30):                                                 # invoiceSend: 10/s, 30/min, 180/h
        first.limiter.answered(await clock.drive(first.limiter.acquire(A, "invoiceSend")))   # answered at once
    await first.limiter.penalise(B, "invoiceExport", 300.0)                              # (answers ride along)
    sent_until = clock.now()
    # kill -9: no close(), no save; the next run starts at once on the same file.
    second: Daemon = await start()  # type: ignore[misc]
    assert second.limiter.delay(A, "invoiceSend") == pytest.approx(START.timestamp() + 60 - clock.now())
    assert second.limiter.delay(B, "invoiceExport") == pytest.approx(300)
    assert second.limiter.delay(B, "invoiceSend") == pytest.approx(300)      # the block holds the whole context
    assert second.limiter.delay(A, "invoiceExport") == 0                # B's block never touches A
    assert sent_until - START.timestamp() == pytest.approx(2.0)


async def test_an_answer_time_rides_with_the_next_write_and_counts_after_a_restart(
        start: Callable[..., object], db_path: Path) -> None:
    """KSeF stamps a request when it arrives, after we granted it: the slot is counted from the answer."""
    daemon: Daemon = await start()  # type: ignore[misc]
    clock: VirtualClock = start.clock  # type: ignore[attr-defined]
    first = await daemon.limiter.acquire(A, "onlineSession")
    clock.t += 0.8                                                      # a slow answer
    daemon.limiter.answered(first)
    assert rows(db_path, "SELECT answered FROM rate_grants") == [(None,)]  # no write of its own...
    await daemon.limiter.acquire(A, "invoiceSend")                      # ...it rides with the next one
    assert rows(db_path, "SELECT grp, answered FROM rate_grants ORDER BY id") == [
        ("onlineSession", pytest.approx(START.timestamp() + 0.8)), ("invoiceSend", None)]
    assert daemon.limiter.transactions == 2
    clock.t += 59.5
    second: Daemon = await start()  # type: ignore[misc]                # killed 60.3 s after the grant
    assert second.limiter.granted(A, "onlineSession") == [pytest.approx(START.timestamp() + 0.8)]


async def test_a_request_in_flight_at_a_kill_is_counted_from_the_restart(
        start: Callable[..., object], db_path: Path) -> None:
    """Its row was committed before it was sent, but its answer never came back: KSeF may have counted it as
    late as the moment the process died, which is before the restart. So count it from the restart, once."""
    daemon: Daemon = await start()  # type: ignore[misc]
    clock: VirtualClock = start.clock  # type: ignore[attr-defined]
    for _ in range(10):
        await daemon.limiter.acquire(A, "invoiceSend")                  # 10/s; killed with them in flight
    clock.t += 5
    second: Daemon = await start()  # type: ignore[misc]
    assert second.limiter.granted(A, "invoiceSend") == [clock.now()] * 10
    assert second.limiter.delay(A, "invoiceSend") == pytest.approx(1.0)
    assert {r[0] for r in rows(db_path, "SELECT answered FROM rate_grants")} == {clock.now()}
    clock.t += 30
    third: Daemon = await start()  # type: ignore[misc]                 # not moved again
    assert third.limiter.granted(A, "invoiceSend") == [clock.now() - 30] * 10


async def test_grants_taken_together_share_one_transaction(start: Callable[..., object], db_path: Path) -> None:
    daemon: Daemon = await start()  # type: ignore[misc]
    contexts = [f"Nip:{n:010d}" for n in range(40)]
    await asyncio.gather(*(daemon.limiter.acquire(c, "invoiceStatus") for c in contexts))
    assert len(rows(db_path, "SELECT * FROM rate_grants")) == 40
    assert daemon.limiter.transactions <= 3


async def test_clean_and_unclean_stops_are_told_apart(start: Callable[..., object]) -> None:
    first: Daemon = await start()  # type: ignore[misc]
    assert await first.journal.start_run() is not None                   # load() already marked this run
    await first.limiter.close()
    second: Daemon = await start()  # type: ignore[misc]
    previous = await second.journal.start_run()                           # what load() saw: a clean stop...
    assert previous is not None and not previous.clean                    # ...then this run, killed, is not


async def test_after_a_kill_on_the_same_boot_nothing_is_presumed(start: Callable[..., object]) -> None:
    """Every request was sent after its row committed, and a commit survives a kill -9: the record is whole."""
    first: Daemon = await start()  # type: ignore[misc]
    await first.limiter.acquire(A, "invoiceSend")
    second: Daemon = await start()  # type: ignore[misc]
    assert second.limiter.delay(A, "invoiceSend") == 0
    assert second.limiter.delay(B, "sessionList") == 0


async def test_after_a_reboot_the_short_windows_are_presumed_full_until_the_boot(
        start: Callable[..., object]) -> None:
    """The machine went down: the last commits (synchronous=NORMAL) may be lost, so every group of every context,
    known or not, counts as having used its whole 1 s and 1 min allowance when this boot began."""
    first: Daemon = await start()  # type: ignore[misc]
    await first.limiter.acquire(A, "invoiceSend")
    clock: VirtualClock = start.clock  # type: ignore[attr-defined]
    clock.t += 20
    booted = clock.now() - 5
    second: Daemon = await start(BootIdentity("boot-2", booted))  # type: ignore[misc]
    assert second.limiter.delay(A, "invoiceSend") == pytest.approx(booted + 60 - clock.now())
    assert second.limiter.delay(B, "invoiceDownload") == pytest.approx(booted + 60 - clock.now())  # unseen context
    limits = PRODUCTION_LIMITS["invoiceSend"]
    assert len(second.limiter.granted(A, "invoiceSend")) == 1 + (limits.per_minute or 0)


async def test_when_the_boot_cannot_be_told_the_short_windows_are_presumed_full_now(
        start: Callable[..., object]) -> None:
    await start(BootIdentity(None, None))                                 # killed
    clock: VirtualClock = start.clock  # type: ignore[attr-defined]
    second: Daemon = await start(BootIdentity(None, None))  # type: ignore[misc]
    assert second.limiter.delay(A, "onlineSession") == pytest.approx(60.0)
    assert clock.now() == START.timestamp()


async def test_a_clean_stop_presumes_nothing_even_after_a_reboot(start: Callable[..., object]) -> None:
    first: Daemon = await start()  # type: ignore[misc]
    await first.limiter.close()
    second: Daemon = await start(BootIdentity("boot-2", START.timestamp()))  # type: ignore[misc]
    assert second.limiter.delay(A, "onlineSession") == 0


async def test_adopted_limits_survive_a_restart(start: Callable[..., object]) -> None:
    first: Daemon = await start()  # type: ignore[misc]
    first.limiter.apply_rate_limits_body(A, {"invoiceSend": {"perSecond": 1, "perMinute": 2, "perHour": 3}})
    await first.limiter.save_limits(A)
    second: Daemon = await start()  # type: ignore[misc]
    assert second.limiter.limits_for(A, "invoiceSend").per_hour == 3
    assert second.limiter.limits_for(B, "invoiceSend") == PRODUCTION_LIMITS["invoiceSend"]


class SlowJournal:
    """The real journal, whose commits wait for a go-ahead: a 429 can arrive while a grant is being written."""

    def __init__(self, inner: RateLimitJournal, clock: IOAwareClock) -> None:
        self.inner = inner
        self.clock = clock
        self.go = asyncio.Event()
        self.writing = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def record(self, grants: Sequence[tuple[str, str, float]], answers: Sequence[tuple[int, float]],
                     blocks: Mapping[str, float], voids: Sequence[int] = ()) -> list[int]:
        self.writing.set()
        await self.go.wait()
        self.clock.busy += 1
        try:
            return await self.inner.record(grants, answers, blocks, voids)
        finally:
            self.clock.busy -= 1


async def test_requests_queued_or_being_granted_when_a_429_arrives_wait_for_the_block(
        start: Callable[..., object]) -> None:
    """Nothing goes out into a known block: not the caller whose grant is being committed, not those waiting
    for a slot in the full second window, not those queued behind the group's lock."""
    clock: IOAwareClock = start.clock  # type: ignore[attr-defined]
    daemon: Daemon = await start(journal_wrapper=lambda j: SlowJournal(j, clock))  # type: ignore[misc]
    journal: SlowJournal = daemon.limiter._journal  # type: ignore[assignment]
    t0 = clock.now()
    released: list[float] = []

    async def caller() -> None:
        await daemon.limiter.acquire(A, "invoiceSend")                    # 10/s: callers 11..25 wait for a slot
        released.append(clock.now() - t0)

    async def scenario() -> None:
        callers = [asyncio.ensure_future(caller()) for _ in range(25)]
        await journal.writing.wait()                                      # the first grants are being committed
        penalty = asyncio.ensure_future(daemon.limiter.penalise(A, "invoiceSend", 100.0))
        await asyncio.sleep(0)
        journal.go.set()
        await asyncio.gather(penalty, *callers)

    await clock.drive(scenario())
    assert len(released) == 25 and min(released) >= 100.0
    assert daemon.limiter.delay(B, "invoiceSend") == 0                     # another company is not slowed


async def test_a_process_beside_the_daemon_observes_its_windows_and_blocks_without_writing(
        start: Callable[..., object], db_path: Path) -> None:
    """`ksefd check` beside a running daemon: it must honour the daemon's block and full windows, and must not
    take over the journal's run marker (the daemon's clean or unclean stop is judged by it)."""
    daemon: Daemon = await start()  # type: ignore[misc]
    for _ in range(10):
        daemon.limiter.answered(await daemon.limiter.acquire(A, "invoiceSend"))
    await daemon.limiter.penalise(B, "other", 40.0)
    marker = rows(db_path, "SELECT value FROM kv WHERE key = 'run'")
    clock: VirtualClock = start.clock  # type: ignore[attr-defined]
    side = RateLimiter(now=clock.now, sleep=clock.sleep, margin=0.0)
    await side.observe(daemon.store.rate_limits)
    assert side.delay(A, "invoiceSend") == pytest.approx(1.0)
    assert side.delay(B, "other") == pytest.approx(40.0)
    assert rows(db_path, "SELECT value FROM kv WHERE key = 'run'") == marker


async def test_a_positive_global_limit_survives_a_restart_for_every_context(start: Callable[..., object]) -> None:
    """`global` is per IP (PROTOCOL.md §14.5, §15): adopted in one context, after a restart it limits all."""
    first: Daemon = await start()  # type: ignore[misc]
    first.limiter.set_limits(A, {**PRODUCTION_LIMITS, "global": GroupLimits(2, None, None)})
    await first.limiter.save_limits(A)
    first.limiter.answered(await first.limiter.acquire(A, "other"))
    first.limiter.answered(await first.limiter.acquire(B, "other"))
    await first.limiter.close()
    second: Daemon = await start()  # type: ignore[misc]
    assert second.limiter.limits_for("Nip:3333333333", "global") == GroupLimits(2, None, None)
    assert second.limiter.delay("Nip:3333333333", "sessionMisc") == pytest.approx(1.0)


UNLIMITED = {**PRODUCTION_LIMITS, "invoiceStatus": GroupLimits(None, None, None)}


async def test_a_burst_of_one_group_commits_spare_rows_ahead_not_one_row_per_request(
        start: Callable[..., object], db_path: Path) -> None:
    """Issue #16 goal 5: an online trickle asks ~100 times a second; each request waited for its own commit."""
    daemon: Daemon = await start()  # type: ignore[misc]
    daemon.limiter.set_limits(A, UNLIMITED)
    for _ in range(100):
        daemon.limiter.answered(await daemon.limiter.acquire(A, "invoiceStatus"))
    assert daemon.limiter.transactions <= 12            # 1, 2, 4, 8, then 16 rows a commit
    used = rows(db_path, "SELECT count(*) FROM rate_grants WHERE answered IS NOT NULL")[0][0]
    assert used >= 100 - 16                              # all but the last commit's rows carry their answers


async def test_public_calls_at_the_per_ip_limit_share_commits(start: Callable[..., object], db_path: Path) -> None:
    """1 000 logins are 4 000 public calls at 60/s (issue #16 point 4): the per-IP window stays full, and spares
    capped by the room in it made every call wait for a commit of its own behind the daemon's other SQLite work."""
    daemon: Daemon = await start()  # type: ignore[misc]
    clock: VirtualClock = start.clock  # type: ignore[attr-defined]

    async def calls() -> None:
        for _ in range(240):
            grant = await daemon.limiter.acquire("", "anonymous")
            await clock.sleep(0.004)                      # its answer: the window's stamps lie apart, as on a wire
            daemon.limiter.answered(grant)

    await clock.drive(calls())
    assert clock.now() - START.timestamp() > 3.0                           # still 60 a second
    assert daemon.limiter.transactions <= 240 // 16 + 8                    # before: one a call past the first 60
    await daemon.limiter.close()
    assert rows(db_path, "SELECT count(*) FROM rate_grants") == [(240,)]   # the spares left were deleted


async def test_the_first_public_calls_commit_a_full_set_of_spares(start: Callable[..., object]) -> None:
    """At start-up the first logins' public calls doubled their spares from 1 (five commits for 31 calls), each
    commit behind the start-up SQLite work of 1 000 companies (issue #16 point 4); a company's groups still do."""
    daemon: Daemon = await start()  # type: ignore[misc]
    for _ in range(20):
        daemon.limiter.answered(await daemon.limiter.acquire("", "anonymous"))
    assert daemon.limiter.transactions == 2                 # 1 + 15 spares, then 1 + 15 more
    daemon.limiter.set_limits(A, UNLIMITED)
    for _ in range(20):
        daemon.limiter.answered(await daemon.limiter.acquire(A, "invoiceStatus"))
    assert daemon.limiter.transactions == 2 + 5             # 1, 2, 4, 8, 16 rows


async def test_spares_left_at_a_kill_count_as_requests_and_a_clean_stop_deletes_them(
        start: Callable[..., object], db_path: Path) -> None:
    """A spare row whose request was never sent only counts one request too many after a kill -9 (never one too
    few: every request sent had its row committed first); a clean stop leaves none behind."""
    first: Daemon = await start()  # type: ignore[misc]
    clock: VirtualClock = start.clock  # type: ignore[attr-defined]
    for _ in range(5):                                   # invoiceSend 10/s: rows 1, 2 + 1, 4 + 3 spare -> 7
        first.limiter.answered(await first.limiter.acquire(A, "invoiceSend"))
    committed = len(rows(db_path, "SELECT * FROM rate_grants"))
    assert 5 < committed <= 10                           # spares, but never more than the second window holds
    second: Daemon = await start()  # type: ignore[misc]                 # kill -9: no close()
    assert len(second.limiter.granted(A, "invoiceSend")) == committed   # the unused ones count, from now
    assert second.limiter.delay(A, "invoiceSend") == pytest.approx(0.0)  # still within 10/s
    for _ in range(3):
        second.limiter.answered(await second.limiter.acquire(A, "invoiceSend"))
    await second.limiter.close()
    third: Daemon = await start()  # type: ignore[misc]
    assert len(third.limiter.granted(A, "invoiceSend")) == committed + 3
    assert rows(db_path, "SELECT count(*) FROM rate_grants WHERE answered IS NULL") == [(0,)]
    assert clock.now() == START.timestamp()              # the virtual clock never had to wait


async def test_a_spare_row_unused_for_a_while_is_deleted_not_used(start: Callable[..., object],
                                                                  db_path: Path) -> None:
    daemon: Daemon = await start()  # type: ignore[misc]
    clock: VirtualClock = start.clock  # type: ignore[attr-defined]
    daemon.limiter.set_limits(A, UNLIMITED)
    for _ in range(2):                                   # the second commits one spare
        daemon.limiter.answered(await daemon.limiter.acquire(A, "invoiceStatus"))
    spare = rows(db_path, "SELECT max(id) FROM rate_grants")[0][0]
    clock.t += 5                                         # older than SPARE_TTL_S
    before = daemon.limiter.transactions
    late = await daemon.limiter.acquire(A, "invoiceStatus")
    assert late.id != spare and daemon.limiter.transactions == before + 1
    assert rows(db_path, f"SELECT count(*) FROM rate_grants WHERE id = {spare}") == [(0,)]


async def test_a_journal_write_is_one_round_trip_to_the_database_thread(start: Callable[..., object],
                                                                       db_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #16: the grant's commit went to SQLite's thread and back seven times (two PRAGMA switches, BEGIN,
    SELECT, INSERT, COMMIT...); now once, still committed (a second connection reads it) and still NORMAL
    for the journal only."""
    daemon: Daemon = await start()  # type: ignore[misc]
    conn = daemon.store.db._conn
    trips: list[object] = []
    real = conn._execute

    async def counted(fn: object, *args: object, **kwargs: object) -> object:
        trips.append(fn)
        return await real(fn, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(conn, "_execute", counted)
    t = START.timestamp()
    ids = await daemon.journal.record([(A, "invoiceSend", t), (A, "invoiceSend", t + 1)], [], {B: t + 99})
    assert len(trips) == 1
    assert rows(db_path, "SELECT id, grp FROM rate_grants") == [(ids[0], "invoiceSend"), (ids[1], "invoiceSend")]
    assert rows(db_path, "SELECT context, until FROM rate_blocks") == [(B, t + 99)]
    monkeypatch.undo()
    async with daemon.store.db.read() as read, read.execute("PRAGMA synchronous") as cursor:
        assert (await cursor.fetchone())[0] == 2  # type: ignore[index]


async def test_a_failed_journal_write_commits_nothing_and_leaves_synchronous_full(start: Callable[..., object],
                                                                                  db_path: Path) -> None:
    daemon: Daemon = await start()  # type: ignore[misc]
    with pytest.raises(sqlite3.Error):
        # The grant's INSERT runs, then the block's (NOT NULL `until`) fails: the whole transaction goes.
        await daemon.journal.record([(A, "invoiceSend", START.timestamp())], [], {B: None})  # type: ignore[dict-item]
    assert rows(db_path, "SELECT * FROM rate_grants") == []
    async with daemon.store.db.read() as read, read.execute("PRAGMA synchronous") as cursor:
        assert (await cursor.fetchone())[0] == 2  # type: ignore[index]
    assert await daemon.journal.record([(A, "invoiceSend", START.timestamp())], [], {}) == [1]   # still usable
    assert len(rows(db_path, "SELECT * FROM rate_grants")) == 1
