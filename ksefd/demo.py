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
from pathlib import Path
from typing import TextIO

import aiohttp
from aiohttp import web

from ksefd.clock import warsaw_date
from ksefd.config import load_config
from ksefd.daemon.runtime import Runtime
from ksefd.daemon.service import serve
from ksefd.demo_setup import offline_certificate, prepare_companies, write_config
from ksefd.samples import has_attachment, make_invoice, sample_bytes, sample_names
from ksefd.sim.app import create_app
from ksefd.sim.config import SimConfig

FINAL = ("done", "rejected")
INBOX_WAIT = 120.0   # seconds the demo waits for the buyer's inbox after the last invoice is accepted
OUTAGE_INBOX_WAIT = 10.0


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

    async def __call__(self, runtime: Runtime) -> None:
        for key, state, ksef_number in await runtime.store.invoices.changes():
            if self.seen.get(key) != state:
                self.seen[key] = state
                extra = f"  KSeF {ksef_number}" if ksef_number and state in ("accepted", "done") else ""
                note = "  (sent/ has the XML, .ksef.json and .upo.xml)" if state == "done" else ""
                if state == "offline":
                    note = "  (KSeF down: KOD I + KOD II and .offline.json in offline/, ready to print)"
                print(f"  {key:<40} {state:<11}{extra}{note}", file=self.out, flush=True)
        for company in runtime.config.companies:
            if not company.receive or not company.folders.inbox.exists():
                continue
            for path in sorted(company.folders.inbox.rglob("*.xml")):
                if path.name not in self.inbox_seen:
                    self.inbox_seen.add(path.name)
                    print(f"  {company.name} inbox <- {path.name}", file=self.out, flush=True)

    def all_done(self, expected: int) -> bool:
        return sum(1 for s in self.seen.values() if s in FINAL) >= expected


async def _announce_outage(base_url: str, seconds: float) -> None:
    """A FAILURE window from now, announced through the simulator's Latarnia (PROTOCOL.md §1, §8.1)."""
    root = base_url.removesuffix("/v2")
    start = dt.datetime.now(dt.UTC)
    window = {"from": start.isoformat(), "to": (start + dt.timedelta(seconds=seconds)).isoformat(),
              "kind": "FAILURE", "text": "Awaria KSeF (ksefd demo --outage)"}
    async with aiohttp.ClientSession() as http, http.post(f"{root}/sim/faults", json={"outages": [window]}) as answer:
        answer.raise_for_status()


async def run_demo(*, count: int, once: bool, keep: Path | None, stop: asyncio.Event | None = None,
                   out: TextIO = sys.stdout, outage: float | None = None) -> int:
    folder = keep or Path(tempfile.mkdtemp(prefix="ksefd-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    runner, base_url = await _start_simulator()
    stop = stop or asyncio.Event()
    try:
        print(f"KSeF simulator: {base_url}\nDemo folder:    {folder}", file=out)
        seller, buyer = await prepare_companies(base_url, folder)
        signer = offline_certificate(folder) if outage else None
        config = load_config(write_config(folder, base_url, seller, buyer, signer))
        if outage:
            await _announce_outage(base_url, outage)
            print(f"KSeF FAILURE announced for {outage:g} s (the simulator's Latarnia; its API answers 503): the "
                  f"invoices are issued offline at once, with KOD I and KOD II in "
                  f"{config.companies[0].folders.offline}, and sent with offlineMode when KSeF is back.",
                  file=out)
        today = warsaw_date(dt.datetime.now(dt.UTC))
        names = drop_invoices(config.companies[0].folders.outbox, seller.nip, buyer.nip, today, count)
        to_buyer = sum(1 for _, has_nip in names if has_nip)
        print(f"Dropped {len(names)} invoices into {config.companies[0].folders.outbox}"
              f" ({seller.name}, NIP {seller.nip} -> {buyer.name}, NIP {buyer.nip}); Ctrl+C stops.\n", file=out)
        summary = LiveSummary(out)
        sent_at: list[float] = []

        async def progress(runtime: Runtime) -> None:
            await summary(runtime)
            if not once or not summary.all_done(len(names)):
                return
            sent_at.append(asyncio.get_running_loop().time()) if not sent_at else None
            # The buyer's inbox follows on its next cycle; do not wait for it for ever.
            # After an outage the buyer's inbox retries on its own backoff: the demo waits less for it then.
            wait = INBOX_WAIT if not outage else OUTAGE_INBOX_WAIT
            if len(summary.inbox_seen) >= to_buyer or asyncio.get_running_loop().time() - sent_at[0] > wait:
                stop.set()

        await serve(config, stop, on_progress=progress)
        done = sum(1 for s in summary.seen.values() if s == "done")
        print(f"\n{done} of {len(names)} invoices accepted by KSeF with a UPO; "
              f"{len(summary.inbox_seen)} of the {to_buyer} addressed to NIP {buyer.nip} "
              f"delivered to {buyer.name}'s inbox.", file=out)
        print(f"Look around: {folder}/data  (status: ksefd status -c {folder}/ksefd.toml)", file=out)
        return 0 if done == len(names) else 1
    finally:
        await runner.cleanup()
