"""`ksefd demo`: the daemon against the embedded KSeF simulator, in a temporary folder, on a fresh machine.

Two companies — the official samples' seller and buyer — get KSeF tokens the way users do; invoices made
from the Ministry's samples (unique numbers, issued today; see ksefd.samples) are dropped into the
seller's outbox, and a live summary shows each one queued, sent, accepted with a KSeF number and its UPO
saved, then arriving in the buyer's inbox. Ctrl+C stops everything cleanly; with `--once` (the default
when standard input is not a terminal) the demo ends by itself once every invoice is done.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import aiohttp
from aiohttp import web

from ksefd.clock import warsaw_date
from ksefd.config import load_config
from ksefd.daemon.credential_expiry import warnings
from ksefd.daemon.runtime import Runtime
from ksefd.daemon.service import serve
from ksefd.daemon.state_words import state_label
from ksefd.demo_setup import offline_certificate, prepare_companies, write_config
from ksefd.i18n import _, counted, current
from ksefd.samples import has_attachment, make_invoice, sample_bytes, sample_names
from ksefd.sim.app import create_app
from ksefd.sim.config import SimConfig

FINAL = ("done", "rejected")
INBOX_WAIT = 120.0   # seconds the demo waits for the buyer's inbox after the last invoice is accepted


async def _start_simulator() -> tuple[web.AppRunner, str]:
    # hwm_lag 1 s: the buyer sees the invoices within seconds (real KSeF's HWM lag varies, PROTOCOL.md §6.1).
    runner = web.AppRunner(create_app(SimConfig(port=0, hwm_lag_s=1.0)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = int(runner.addresses[0][1])
    return runner, f"http://127.0.0.1:{port}/v2"


def drop_invoices(outbox: Path, seller_nip: str, buyer_nip: str, today: dt.date, count: int) -> list[tuple[str, bool]]:
    """Write `count` invoices made from the samples into the outbox the way an ERP should (tmp + rename);
    returns each file name and whether its buyer is identified by NIP (only those reach the buyer's inbox:
    one sample is sold to a consumer)."""
    outbox.mkdir(parents=True, exist_ok=True)
    # The sample with an attachment (Zalacznik) is refused in online sessions (PROTOCOL.md §4.2): left out.
    templates = [n for n in sample_names() if not has_attachment(sample_bytes(n))]
    names = []
    for index in range(count):
        template = templates[index % len(templates)]
        number = f"DEMO/{today:%Y/%m}/{index + 1:04d}"
        data = make_invoice(sample_bytes(template), number=number, seller_nip=seller_nip, buyer_nip=buyer_nip,
                            issue_date=today)
        name = f"demo-{index + 1:04d}-{template.removesuffix('.xml')}.xml"
        temp = outbox / f"{name}.tmp"
        temp.write_bytes(data)
        temp.rename(outbox / name)
        names.append((name, b"<NIP>" in data.split(b"<Podmiot2>", 1)[1].split(b"</Podmiot2>", 1)[0]))
    return names


class LiveSummary:
    """Prints one line each time an invoice changes state, read from the daemon's state database."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.seen: dict[str, str] = {}
        self.inbox_seen: set[str] = set()
        self.before_line: Callable[[], None] = lambda: None     # e.g. end a countdown's line first

    async def __call__(self, runtime: Runtime) -> None:
        for key, state, ksef_number in await runtime.store.invoices.changes():
            if self.seen.get(key) != state:
                self.seen[key] = state
                self.before_line()
                extra = f"  KSeF {ksef_number}" if ksef_number and state in ("accepted", "done") else ""
                note = _("  (sent/ has the XML, .ksef.json and .upo.xml)") if state == "done" else ""
                if state == "offline":
                    note = _("  (KSeF down: KOD I + KOD II and .offline.json in offline/, ready to print)")
                print(f"  {key:<40} {state_label(state):<13}{extra}{note}", file=self.out, flush=True)
        for company in runtime.config.companies:
            if not company.receive or not company.folders.inbox.exists():
                continue
            for path in sorted(company.folders.inbox.rglob("*.xml")):
                if path.name not in self.inbox_seen:
                    self.inbox_seen.add(path.name)
                    self.before_line()
                    print(_("  {company} inbox <- {file}", company=company.name, file=path.name), file=self.out,
                          flush=True)

    def all_done(self, expected: int) -> bool:
        return sum(1 for s in self.seen.values() if s in FINAL) >= expected


class InboxWait:
    """What the demo says while the buyer's inbox catches up: one line when the wait starts (the buyer asks
    KSeF on its own schedule, [receiving] cycle_minutes), then on a terminal a countdown to its next cycle."""

    def __init__(self, out: TextIO, buyer: str, expected: int) -> None:
        self.out, self.buyer, self.expected = out, buyer, expected
        self.started: float | None = None
        self.last_shown = -1
        self.live = out.isatty()

    async def show(self, runtime: Runtime, now: float, seen: int) -> None:
        if self.started is None:
            self.started = now
            print("\n" + _("All invoices are finished at KSeF. Waiting for {buyer}'s inbox: it asks KSeF for new "
                           "invoices once a cycle ({cycle}); the demo waits at most {seconds} s.", buyer=self.buyer,
                           cycle=self._cycle_text(runtime), seconds=f"{INBOX_WAIT:.0f}"), file=self.out, flush=True)
        if not self.live:
            return
        left = await self._seconds_to_next_cycle(runtime)
        text = (_("  waiting for {buyer}'s inbox: {seen} of {expected} arrived", buyer=self.buyer, seen=seen,
                  expected=self.expected)
                + (_(", next cycle in {seconds} s", seconds=f"{left:>3d}") if left is not None else "") + " ")
        shown = left if left is not None else int(now - self.started)
        if shown != self.last_shown:
            self.last_shown = shown
            print(f"\r{text}", end="", file=self.out, flush=True)

    def end_line(self) -> None:
        if self.live and self.last_shown != -1:
            print(file=self.out, flush=True)     # leave the countdown's line before what follows
            self.last_shown = -1

    def _cycle_text(self, runtime: Runtime) -> str:
        company = next((c for c in runtime.config.companies if c.name == self.buyer), None)
        minutes = company.receiving.cycle_minutes if company else 15.0
        return _("every {minutes} min", minutes=f"{minutes:g}")

    async def _seconds_to_next_cycle(self, runtime: Runtime) -> int | None:
        from ksefd.daemon.inbox.status import read_inbox_status

        company = next((c for c in runtime.config.companies if c.name == self.buyer), None)
        document = await read_inbox_status(runtime.store, self.buyer)
        if company is None or document is None:
            return None
        cycles = [s.get("lastCycleAt") for s in document.get("subjects", {}).values() if s.get("lastCycleAt")]
        if not cycles:
            return None
        last = max(dt.datetime.fromisoformat(str(c)) for c in cycles)
        next_at = last + dt.timedelta(minutes=company.receiving.cycle_minutes)
        return max(0, int((next_at - runtime.clock.now()).total_seconds()))


async def _announce_outage(base_url: str, seconds: float) -> None:
    """A FAILURE window from now, announced through the simulator's Latarnia (PROTOCOL.md §1, §8.1)."""
    root = base_url.removesuffix("/v2")
    start = dt.datetime.now(dt.UTC)
    window = {"from": start.isoformat(), "to": (start + dt.timedelta(seconds=seconds)).isoformat(),
              "kind": "FAILURE", "text": "Awaria KSeF (ksefd demo --outage)"}
    async with aiohttp.ClientSession() as http, http.post(f"{root}/sim/faults", json={"outages": [window]}) as answer:
        answer.raise_for_status()


async def run_demo(*, count: int, once: bool, keep: Path | None, stop: asyncio.Event | None = None,
                   out: TextIO = sys.stdout, stay: bool = False, outage: float | None = None) -> int:
    """`stay` (`ksefd demo --keep`): after the summary, the simulator and the daemon keep running until
    `stop`, with the config's path printed, for an ERP to be pointed at. `outage`: KSeF fails for that many
    seconds from the start (`ksefd demo --outage`)."""
    folder = keep or Path(tempfile.mkdtemp(prefix="ksefd-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    runner, base_url = await _start_simulator()
    stop = stop or asyncio.Event()
    try:
        print(_("KSeF simulator: {url}\nDemo folder:    {folder}", url=base_url, folder=folder), file=out)
        seller, buyer = await prepare_companies(base_url, folder)
        signer = offline_certificate(folder) if outage else None
        config_path = write_config(folder, base_url, seller, buyer, signer, language=current())
        config = load_config(config_path)
        if outage:
            await _announce_outage(base_url, outage)
            print(_("KSeF FAILURE announced for {seconds} s (the simulator's Latarnia; its API answers 503): the "
                    "invoices are issued offline at once, with KOD I and KOD II in {folder}, and sent with "
                    "offlineMode when KSeF is back; the buyer's inbox receives them after that.",
                    seconds=f"{outage:g}", folder=config.companies[0].folders.offline), file=out)
        today = warsaw_date(dt.datetime.now(dt.UTC))
        names = drop_invoices(config.companies[0].folders.outbox, seller.nip, buyer.nip, today, count)
        to_buyer = sum(1 for _, has_nip in names if has_nip)
        print(_("Dropped {invoices} into {outbox} ({seller}, NIP {seller_nip} -> {buyer}, NIP {buyer_nip}); "
                "Ctrl+C stops.", invoices=counted(len(names), "invoice"), outbox=config.companies[0].folders.outbox,
                seller=seller.name, seller_nip=seller.nip, buyer=buyer.name, buyer_nip=buyer.nip), file=out)
        # What `ksefd status` would warn about (the demo logs in with KSeF tokens, which end with 2026).
        for warning in warnings(config, today):
            print(_("  WARNING {warning}", warning=warning), file=out)
        print(file=out)
        summary = LiveSummary(out)
        waiting = InboxWait(out, buyer.name, to_buyer)
        summary.before_line = waiting.end_line
        reported: list[int] = []

        def report() -> int:
            waiting.end_line()
            done = sum(1 for s in summary.seen.values() if s == "done")
            print("\n" + _("{done} of {count} invoices accepted by KSeF with a UPO; {arrived} of the {to_buyer} "
                           "addressed to NIP {buyer_nip} delivered to {buyer}'s inbox.", done=done, count=len(names),
                           arrived=len(summary.inbox_seen), to_buyer=to_buyer, buyer_nip=buyer.nip,
                           buyer=buyer.name), file=out)
            print(_("Look around: {folder}/data  (status: ksefd status -c {config})", folder=folder,
                    config=config_path), file=out)
            code = 0 if done == len(names) else 1
            print(_("Demo done.") if code == 0 else _("Demo done, but not every invoice was accepted (see above)."),
                  file=out, flush=True)
            if stay:
                print("\n" + _("Still running (--keep): the simulator at {url} and the daemon with the config\n"
                               "  {config}\nDrop invoices into {outbox}; more taxpayers: ksefd sim taxpayer NIP --url "
                               "{url} --token-out FILE. Ctrl+C stops.", url=base_url, config=config_path,
                               outbox=config.companies[0].folders.outbox), file=out, flush=True)
            elif not once:
                print(_("The daemon keeps running; Ctrl+C ends the demo."), file=out, flush=True)
            reported.append(code)
            return code

        async def progress(runtime: Runtime) -> None:
            await summary(runtime)
            if reported or not summary.all_done(len(names)):
                return
            now = asyncio.get_running_loop().time()
            # The buyer's inbox follows on its next cycle (after an outage too: the demo's config retries soon,
            # demo_setup.SHORT_RETRIES); do not wait for it for ever.
            if len(summary.inbox_seen) >= to_buyer or (waiting.started is not None
                                                        and now - waiting.started > INBOX_WAIT):
                report()
                if once:
                    stop.set()
                return
            await waiting.show(runtime, now, len(summary.inbox_seen))

        await serve(config, stop, on_progress=progress)
        return reported[0] if reported else report()
    finally:
        await runner.cleanup()
