"""The fault soak and the crash campaign (issue #15), shared by their scripts (benchmarks/fault_soak.py,
benchmarks/crash_campaign.py) and their reduced forms in CI (tests/daemon/test_fault_soak.py,
tests/daemon/test_crash_campaign.py).

Two companies, each the other's customer: A sends to B and B sends to A, so the daemon sends N invoices and
receives the same N through the inbox. The simulator runs in this process with a counting middleware in
front of everything (requests, faults by kind, 429s, and requests sent while a rate-limit block was on,
which the simulator answers with "... w trakcie blokady ..."). Verification reads only files and the
simulator's own records: every invoice accepted exactly once (a second submission only as 440 of the same
document) with its KSeF number and UPO in sent/, every invoice delivered once to the buyer's inbox.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from ksefd.config import Config, load_config
from ksefd.daemon.service import serve
from ksefd.ksef.crypto import sha256_b64
from ksefd.sim.app import create_app
from ksefd.sim.clock import SystemClock
from ksefd.sim.config import SimConfig
from ksefd.store import InvoiceState, Store
from tests.daemon.support import ROOT, invoice, today, token_file

A, B = "9999999999", "1111111111"
COMPANIES = {"alfa": A, "beta": B}
SOAK_FAULTS = ("seed={seed},5xx=0.1,html=0.5,drop=0.05,unavailable=0.05,upo_delay=2,late=0.1,late_by=4,"
               "session_ttl=10,outage={outage_at}:{outage_for}")


@dataclass
class Counts:
    requests: int = 0
    by_fault: Counter[str] = field(default_factory=Counter)
    too_many: int = 0                # 429 answers
    during_block: int = 0            # requests sent while a rate-limit block was on
    statuses: Counter[int] = field(default_factory=Counter)
    sim_tally: dict[str, Any] = field(default_factory=dict)    # the simulator's own (GET /sim/ratelimits)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "faults": dict(self.by_fault), "429": self.too_many,
                "during_block": self.during_block, "statuses": dict(sorted(self.statuses.items()))}


def counting_middleware(counts: Counts) -> Any:
    @web.middleware
    async def count(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        if not (request.path.startswith("/v2/") or request.path.startswith("/storage/")):
            return await handler(request)
        counts.requests += 1
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            counts.statuses[exc.status] += 1
            raise
        counts.statuses[response.status] += 1
        if response.status in (400, 401, 404, 410, 415) and isinstance(response, web.Response) and response.body:
            text = response.body if isinstance(response.body, bytes) else b""
            for code in (b"21184", b"21180", b"21181", b"21182"):
                if code in text:
                    counts.by_fault[f"ksef-{code.decode()}"] += 1
        if fault := response.headers.get("X-Sim-Fault"):
            counts.by_fault[fault] += 1
        if response.status == 429:
            counts.too_many += 1
            body = response.body if isinstance(response, web.Response) else b""
            if isinstance(body, bytes) and b"w trakcie blokady" in body:
                counts.during_block += 1
        return response
    return count


@dataclass
class World:
    folder: Path
    server: TestServer
    base_url: str
    counts: Counts
    config_path: Path
    files: dict[str, dict[str, bytes]]          # company -> name -> bytes dropped into its outbox

    @property
    def sim_world(self) -> Any:
        from ksefd.sim.world import WORLD
        return self.server.app[WORLD]

    def config(self) -> Config:
        return load_config(self.config_path)

    async def close(self) -> None:
        from ksefd.sim import ratelimits
        tally = ratelimits.limiter(self.sim_world).tally.to_json()
        self.counts.sim_tally = {k: v for k, v in tally.items() if k != "duringBlock"} | {
            "duringBlock": tally["duringBlock"][:5]}
        await self.server.close()


async def start_world(folder: Path, *, faults: str = "", limits: str = "test", hwm_lag_s: float = 1.0,
                      processing_delay_s: float = 0.0, daemon: dict[str, Any] | None = None,
                      sending: dict[str, Any] | None = None, bursts: bool = False) -> World:
    counts = Counts()
    app = create_app(SimConfig(limits_profile=limits, hwm_lag_s=hwm_lag_s,
                               processing_delay_s=processing_delay_s), SystemClock())
    burster = Bursts(counts)
    if bursts:
        app.middlewares.insert(1, burster.middleware())    # inside the sim's error middleware
    app.middlewares.insert(0, counting_middleware(counts))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base_url = f"http://127.0.0.1:{server.port}/v2"
    async with aiohttp.ClientSession() as http:
        tokens = {name: await token_file(http, base_url, folder, nip) for name, nip in COMPANIES.items()}
        if faults:                               # from now on (the outage window counts from here)
            async with http.post(f"http://127.0.0.1:{server.port}/sim/faults", json={"spec": faults}) as resp:
                assert resp.status == 200, await resp.text()
    burster.started = time.monotonic()
    config_path = _write_config(folder, base_url, tokens, daemon or {}, sending or {})
    return World(folder, server, base_url, counts, config_path, {name: {} for name in COMPANIES})


def _write_config(folder: Path, base_url: str, tokens: dict[str, Path], daemon: dict[str, Any],
                  sending: dict[str, Any]) -> Path:
    options = {"settle_seconds": 0, "rescan_interval_seconds": 0.5, "shutdown_grace_seconds": 3, **daemon}
    send = {"retry_min_seconds": 1, "retry_max_seconds": 4, "hold_retry_seconds": 3,
            "online_idle_close_seconds": 2, **sending}
    lines = ["[ksef]", 'environment = "test"', f'base_url = "{base_url}"', "", "[daemon]", 'data_dir = "data"',
             *(f"{k} = {json.dumps(v)}" for k, v in options.items()), "", "[sending]",
             *(f"{k} = {json.dumps(v)}" for k, v in send.items())]
    for name, nip in COMPANIES.items():
        lines += ["", "[[companies]]", f'name = "{name}"', f'nip = "{nip}"', f'token_file = "{tokens[name]}"',
                  "[companies.receiving]", f"backfill_from = {today() - dt.timedelta(days=1)}"]
    path = folder / "ksefd.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def drop_invoices(world: World, company: str, names: list[str]) -> None:
    """Invoices from `company` to the other one, dropped as a careful ERP does (temp name, rename)."""
    config = world.config()
    outbox = config.company(company).folders.outbox
    outbox.mkdir(parents=True, exist_ok=True)
    seller = COMPANIES[company]
    buyer = next(nip for other, nip in COMPANIES.items() if other != company)
    for name in names:
        data = invoice(f"{company.upper()}/{name}", seller=seller, buyer=buyer)
        world.files[company][name] = data
        temp = outbox / f".{name}.tmp"
        temp.write_bytes(data)
        temp.rename(outbox / name)


# --- verification ----------------------------------------------------------------------------------

@dataclass
class Verdict:
    accepted: int = 0
    received: int = 0
    repeats_440: int = 0
    problems: list[str] = field(default_factory=list)


def progress(world: World) -> str:
    """One line: per company, invoices with a UPO, files in the inbox, and the states still waiting."""
    config = world.config()
    parts = []
    for company in COMPANIES:
        folders = config.company(company).folders
        waiting: Counter[str] = Counter()
        for path in folders.outbox.glob("*.state.json"):
            try:
                waiting[json.loads(path.read_bytes())["state"]] += 1
            except (OSError, ValueError, KeyError):
                continue
        parts.append(f"{company}: {len(list(folders.sent.glob('*.upo.xml')))} sent, "
                     f"{len(list(folders.inbox.rglob('*.xml')))} received, waiting {dict(waiting)}")
    return "; ".join(parts)


def sent_complete(world: World) -> bool:
    config = world.config()
    return all(len(list(config.company(c).folders.sent.glob("*.upo.xml"))) == len(files)
               for c, files in world.files.items())


def inbox_complete(world: World) -> bool:
    config = world.config()
    for company in COMPANIES:
        expected = sum(len(files) for other, files in world.files.items() if other != company)
        if len(list(config.company(company).folders.inbox.rglob("*.xml"))) < expected:
            return False
    return True


def verify(world: World) -> Verdict:
    verdict = Verdict()
    config = world.config()
    numbers: dict[str, str] = {}                 # hash -> KSeF number, from sent/
    for company, files in world.files.items():
        folders = config.company(company).folders
        for name, data in files.items():
            stem = name.removesuffix(".xml")
            record_path = folders.sent / f"{stem}.ksef.json"
            if not record_path.exists() or (folders.sent / name).read_bytes() != data:
                verdict.problems.append(f"{company}/{name}: not in sent/")
                continue
            number = json.loads(record_path.read_bytes())["ksefNumber"]
            upo = folders.sent / f"{stem}.upo.xml"
            if not upo.exists() or number.encode() not in upo.read_bytes():
                verdict.problems.append(f"{company}/{name}: no UPO naming {number}")
            numbers[sha256_b64(data)] = number
            verdict.accepted += 1
        leftovers = [p.name for p in folders.rejected.iterdir()] if folders.rejected.exists() else []
        if leftovers:
            verdict.problems.append(f"{company}: rejected {leftovers[:5]}")
    by_hash: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in world.sim_world.store.values("invoices"):
        by_hash[record["invoiceHash"]].append(record)
    for digest, records in by_hash.items():
        accepted = [r["ksefNumber"] for r in records if r["status"]["code"] == 200]
        if digest not in numbers or accepted != [numbers[digest]]:
            verdict.problems.append(f"KSeF accepted {accepted} for one document (sent/ says {numbers.get(digest)})")
        for other in (r for r in records if r["status"]["code"] != 200):
            if other["status"]["code"] == 440 and \
                    other["status"].get("extensions", {}).get("originalKsefNumber") == numbers.get(digest):
                verdict.repeats_440 += 1
            else:
                verdict.problems.append(f"another submission of {numbers.get(digest)}: {other['status']}")
    for company in COMPANIES:                    # the inbox: every invoice of the other company, once
        expected = {numbers[sha256_b64(d)] for other, files in world.files.items() if other != company
                    for d in files.values() if sha256_b64(d) in numbers}
        inbox = config.company(company).folders.inbox
        found = Counter(p.stem for p in inbox.rglob("*.xml"))
        doubles = [n for n, c in found.items() if c > 1]
        if doubles or set(found) != expected:
            verdict.problems.append(f"{company} inbox: {len(found)} files, expected {len(expected)}; "
                                    f"missing {sorted(expected - set(found))[:3]}, extra "
                                    f"{sorted(set(found) - expected)[:3]}, twice {doubles[:3]}")
        for path in inbox.rglob("*.xml"):
            meta = inbox / path.relative_to(inbox).with_suffix(".json")
            if meta.exists() and json.loads(meta.read_bytes()).get("invoiceHash") != sha256_b64(path.read_bytes()):
                verdict.problems.append(f"{path.name}: not the invoice KSeF holds")
        verdict.received += sum(found.values())
    return verdict


async def final_states(world: World) -> Counter[str]:
    config = world.config()
    async with await Store.open(config.state_db) as store:
        rows = [r for c in COMPANIES for r in await store.invoices.in_state(c, *InvoiceState)]
    return Counter(str(r.state) for r in rows)


@dataclass
class Bursts:
    """429 bursts: every `every_s` seconds, for `lasting_s`, a request gets 429 with Retry-After and blocks
    the sender for `block_s` (as KSeF does when another client of the same context used up the limit: the
    daemon cannot foresee it from the limits it read). A request sent while blocked is counted and extends
    the block, as the real KSeF does (PROTOCOL.md §7)."""

    counts: Counts
    every_s: float = 7.0
    lasting_s: float = 1.5
    block_s: int = 2
    started: float | None = None          # None: not yet (set once the test's own setup is done)
    blocked_until: dict[str, float] = field(default_factory=dict)

    def middleware(self) -> Any:
        from ksefd.sim.errors import TooManyRequests

        @web.middleware
        async def burst(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
            from ksefd.sim import ratelimits
            path = ratelimits._spec_path(request) if request.path.startswith("/v2/") else None
            group = ratelimits.group_of(request.method, path) if path else None
            if group is None or not request.headers.get("Authorization") or self.started is None:
                return await handler(request)
            who = f"{request.headers['Authorization']} {group}"      # KSeF blocks per context and group
            now = time.monotonic()
            if now < self.blocked_until.get(who, 0.0):      # counted by counting_middleware (its text)
                self.blocked_until[who] = now + self.block_s
                raise TooManyRequests(self.block_s, ["Żądanie wysłane w trakcie blokady przedłużyło ją."])
            if (now - self.started) % self.every_s < self.lasting_s:
                self.blocked_until[who] = now + self.block_s
                raise TooManyRequests(self.block_s, ["Przekroczono limit 10 żądań na sekundę. Spróbuj ponownie "
                                                     f"po {self.block_s} sekundach."])
            return await handler(request)
        return burst


# --- the soak ----------------------------------------------------------------------------------------

@dataclass
class SoakReport:
    invoices: int
    wall_s: float
    runs: int
    counts: Counts
    verdict: Verdict

    def lines(self) -> list[str]:
        c, v = self.counts, self.verdict
        moved = v.accepted + v.received
        return [f"sent {v.accepted} and received {v.received} in {self.wall_s:.1f} s ({self.runs} daemon runs)",
                f"requests {c.requests} ({c.requests / max(moved, 1):.2f} per invoice sent or received)",
                f"faults injected {dict(c.by_fault)}; 429 answers {c.too_many}, "
                f"requests during a block {c.during_block}",
                f"retries (answers that forced one: faults + 429 + 21184-style 400s) "
                f"{sum(c.by_fault.values()) + c.too_many}; second submissions resolved as 440 {v.repeats_440}",
                f"statuses {dict(sorted(c.statuses.items()))}",
                f"simulator's rate-limit tally {c.sim_tally}",
                "problems: " + ("none" if not v.problems else "; ".join(v.problems[:10]))]


async def nightly_audit(world: World) -> None:
    """The daemon's nightly reconciliation (ksefd/daemon/inbox/reconcile.py) run now, on the daemon's own state
    database: invoices KSeF committed late, behind a high-water mark already passed, are never in a later
    window (PROTOCOL.md §6.4); the audit is what finds them."""
    from ksefd.clock import SystemClock as DaemonClock
    from ksefd.daemon.inbox.worker import InboxWorker
    from ksefd.ksef.auth import ContextIdentifier
    from ksefd.ksef.client import KsefClient
    from ksefd.ksef.credentials import KsefToken
    config = world.config()
    clock = DaemonClock()
    async with await Store.open(config.state_db) as store:
        for name, nip in COMPANIES.items():
            company = config.company(name)
            assert company.credentials.token_file is not None
            client = KsefClient("test", base_url=world.base_url, clock=clock)
            try:
                context = client.context(ContextIdentifier.nip(nip),
                                         KsefToken.parse(company.credentials.token_file.read_text().strip()))
                worker = InboxWorker(company, context, store, clock)
                report = await worker.reconcile("Subject2")
                print(f"soak: audit {name}: {len(report.missing)} missing, {len(report.fetched)} fetched",
                      file=sys.stderr, flush=True)
            except Exception as exc:     # a fault hit the audit: the next round tries again
                print(f"soak: audit {name} failed: {exc}", file=sys.stderr, flush=True)
            finally:
                await client.close()


def generous_send_limits(world: World) -> None:
    """Per-context TEST overrides (as POST /testdata/rate-limits sets them) so that the trickle can go through
    online sessions at a useful pace: PRD allows 30 online sends a minute, which would make a soak take hours."""
    from ksefd.sim import ratelimits
    fast = {"perSecond": 20, "perMinute": 1200, "perHour": 72000}
    for nip in COMPANIES.values():
        world.sim_world.store.put(ratelimits.OVERRIDES, nip, {"rateLimits": {
            "invoiceSend": fast, "onlineSession": fast, "onlineSessionClose": fast, "invoiceStatus": fast}})


async def soak(folder: Path, per_company: int, *, seed: int = 1, outage_at: float = 8, outage_for: float = 4,
               trickle_share: float = 0.1, limit_s: float = 900) -> SoakReport:
    """Each company sends `per_company` invoices to the other under the soak's faults. Most are a backlog
    dropped at once (batch sessions); `trickle_share` of them arrive in waves of 3 while the daemon runs
    (online sessions, where 21184 and session expiry strike). The daemon runs until everything is accepted
    with its UPO; then in drain mode (`serve(once=True)`, one inbox cycle each, as a timer would start it)
    until both inboxes are complete."""
    faults = SOAK_FAULTS.format(seed=seed, outage_at=outage_at, outage_for=outage_for)
    world = await start_world(folder, faults=faults, sending={"batch_threshold": 40}, bursts=True)
    generous_send_limits(world)
    names = [f"FV-{n:05d}.xml" for n in range(per_company)]
    trickle = max(3, int(per_company * trickle_share))
    backlog, waves = names[:-trickle], [names[-trickle:][i:i + 3] for i in range(0, trickle, 3)]
    try:
        for company in COMPANIES:
            drop_invoices(world, company, backlog)
        started = time.perf_counter()
        runs = 1
        stop = asyncio.Event()
        async with asyncio.timeout(limit_s):
            daemon = asyncio.ensure_future(serve(world.config(), stop))
            try:
                for wave in waves:
                    await asyncio.sleep(0.4)
                    for company in COMPANIES:
                        drop_invoices(world, company, wave)
                looks = 0
                while not sent_complete(world) and not daemon.done():
                    await asyncio.sleep(0.5)
                    looks += 1
                    if looks % 20 == 0:
                        print(f"soak: {progress(world)}", file=sys.stderr, flush=True)
            finally:
                stop.set()
                await daemon
            audits = 0
            while not (sent_complete(world) and inbox_complete(world)):
                runs += 1
                await serve(world.config(), asyncio.Event(), once=True)
                print(f"soak: run {runs}: {progress(world)}", file=sys.stderr, flush=True)
                if not inbox_complete(world):
                    await asyncio.sleep(1.0)     # late commits: the HWM passes them a few seconds later
                if runs >= 4 and not inbox_complete(world) and audits < 3:
                    audits += 1                  # what is still missing was committed behind the HWM
                    await nightly_audit(world)
        wall = time.perf_counter() - started
        return SoakReport(per_company * len(COMPANIES), wall, runs, world.counts, verify(world))
    finally:
        await world.close()


# --- the crash campaign ----------------------------------------------------------------------------

@dataclass
class CampaignReport:
    kills: int
    wall_s: float
    counts: Counts
    verdict: Verdict
    states: Counter[str]

    def lines(self) -> list[str]:
        c, v = self.counts, self.verdict
        return [f"{self.kills} SIGKILLs; sent {v.accepted}, received {v.received} in {self.wall_s:.1f} s",
                f"requests {c.requests}; 429 answers {c.too_many}; requests during a rate-limit block "
                f"{c.during_block}; faults {dict(c.by_fault)}",
                f"second submissions resolved as 440 of the same document: {v.repeats_440}",
                f"simulator's rate-limit tally {c.sim_tally}",
                f"final invoice states {dict(self.states)}",
                "problems: " + ("none" if not v.problems else "; ".join(v.problems[:10]))]


async def _daemon(config: Path, log: Path, *args: str) -> asyncio.subprocess.Process:
    with log.open("ab") as sink:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ksefd", "--log-format", "json", "run", "-c", str(config), *args,
            cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def crash_campaign(folder: Path, per_company: int, kills: int, *, seed: int = 15,
                         max_gap_s: float = 1.5, limit_s: float = 900) -> CampaignReport:
    """SIGKILL the daemon `kills` times at random moments while both companies send and receive (new
    invoices keep arriving between kills), restarting it at once each time; then a drain run and, for the
    inbox, more runs until both inboxes are complete."""
    rng = random.Random(seed)
    world = await start_world(folder, limits="test", processing_delay_s=0.01, bursts=True,
                              sending={"batch_threshold": 30, "batch_max_invoices": 60})
    log = folder / "daemon.log"
    names = [f"FV-{n:05d}.xml" for n in range(per_company)]
    waves = [names[: per_company // 2]] + [names[per_company // 2 + i:: kills] for i in range(kills)]
    started = time.perf_counter()
    running: list[asyncio.subprocess.Process] = []

    async def campaign() -> None:
        for run in range(kills):
            for company in COMPANIES:
                drop_invoices(world, company, waves[run])
            running.append(proc := await _daemon(world.config_path, log))
            await asyncio.sleep(rng.uniform(0.3, max_gap_s))
            proc.send_signal(signal.SIGKILL)
            code = await proc.wait()
            if code != -signal.SIGKILL:
                raise AssertionError(f"run {run + 1} ended on its own ({code}); see {log}")
        for company in COMPANIES:
            drop_invoices(world, company, waves[kills])
        while not (sent_complete(world) and inbox_complete(world)):
            running.append(proc := await _daemon(world.config_path, log, "--once"))
            if await proc.wait() != 0:
                raise AssertionError(f"the drain run failed; see {log}")
            if not inbox_complete(world):
                await asyncio.sleep(1.0)

    unfinished = []
    try:
        try:
            async with asyncio.timeout(limit_s):
                await campaign()
        except TimeoutError:
            unfinished.append(f"not finished after {limit_s:.0f} s: {progress(world)}")
        wall = time.perf_counter() - started
        verdict = verify(world)
        verdict.problems[:0] = unfinished
        return CampaignReport(kills, wall, world.counts, verdict, await final_states(world))
    finally:
        for proc in running:          # never leave a daemon behind
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await world.close()
