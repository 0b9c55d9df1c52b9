"""`ksefd status` for people (issue #14 points 2 and 3): the environment per company, KSeF's reachability when
recorded, the next inbox cycle and "receiving since", the hold's reason with its fix, no sending counters for
a receive-only company, times in Europe/Warsaw without microseconds, never "None", and no traceback when the
output goes into `head`. The JSON keeps ISO 8601 with offsets."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from ksefd.clock import ManualClock
from ksefd.config import load_config
from ksefd.daemon.inbox.status import SINCE_NAMESPACE, STATUS_NAMESPACE
from ksefd.daemon.status import AVAILABILITY_NAMESPACE, gather, render, to_json_text
from ksefd.store import Store

NOW = dt.datetime(2026, 12, 6, 21, 15, 30, 123456, tzinfo=dt.UTC)       # 22:15:30 in Warsaw (CET)


def _config(folder: Path, language: str = "en") -> Path:
    for name in ("seller", "buyer", "off"):
        (folder / f"{name}.token").write_text("x\n", encoding="utf-8")
    path = folder / "ksefd.toml"
    path.write_text(f"""
[ksef]
environment = "test"

[daemon]
data_dir = "{folder / 'data'}"
{f'language = "{language}"' if language else ""}

[receiving]
cycle_minutes = 15

[[companies]]
name = "seller"
nip = "5260250274"
receive = false
token_file = "seller.token"

[[companies]]
name = "buyer"
nip = "1111111111"
send = false
environment = "prod"
token_file = "buyer.token"

[[companies]]
name = "off"
nip = "9999999999"
enabled = false
token_file = "off.token"
""", encoding="utf-8")
    return path


async def _fill(store: Store, clock: ManualClock) -> None:
    """What a running daemon leaves in the state database: a hold, the inbox's status, KSeF's availability."""
    clock.set(NOW - dt.timedelta(minutes=20))
    await store.holds.hold("seller", "missing-permission", "KSeF refused: the credentials lack InvoiceWrite",
                           NOW + dt.timedelta(minutes=10))
    clock.set(NOW)
    last_cycle = NOW - dt.timedelta(minutes=5)
    await store.kv.put(STATUS_NAMESPACE, "buyer", json.dumps({
        "company": "buyer", "updatedAt": last_cycle.isoformat(), "deliveredTotal": 4,
        "subjects": {"Subject2": {"checkpoint": (last_cycle - dt.timedelta(seconds=7)).isoformat(),
                                  "lastCycleAt": last_cycle.isoformat(), "lastReconcileAt": None}},
        "metrics": {"delivered": 1, "exports": 2}}))
    await store.kv.put(SINCE_NAMESPACE, "buyer/Subject2", "2026-10-31T23:00:00+00:00")
    await store.kv.put(AVAILABILITY_NAMESPACE, "seller", json.dumps({
        "state": "unreachable", "since": (NOW - dt.timedelta(minutes=3)).isoformat(), "announced": False,
        "message": "no answer from https://api-test.ksef.mf.gov.pl/v2", "eventId": None, "ksefAnswers": False}))


async def test_status_answers_in_warsaw_time_without_none(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path))
    clock = ManualClock(NOW)
    async with await Store.open(config.state_db, clock) as store:
        await _fill(store, clock)
        status = await gather(store, config, clock)
    text = render(status)
    assert "None" not in text and "null" not in text
    assert not re.search(r"\d{2}:\d{2}:\d{2}\.\d", text), "microseconds shown"
    assert "+00:00" not in text and "T21:" not in text, "UTC ISO times shown to people"
    assert "times in Europe/Warsaw" in text
    seller, buyer = text.split("\nseller ")[1].split("\nbuyer ")
    assert seller.startswith("(NIP 5260250274, KSeF TEST, sends only)")
    assert "KSeF: UNREACHABLE since 06.12.2026 22:12:30 (3 min ago) (seen by ksefd)" in seller
    assert "ON HOLD since 06.12.2026 21:55:30: KSeF refused: the credentials lack InvoiceWrite" in seller
    assert "fix: grant the permission named above in the taxpayer's application (Aplikacja Podatnika) " \
           "https://ap-test.ksef.mf.gov.pl/web/" in seller
    assert f"`ksefd resume -c {config.source} seller` tries at once" in seller
    assert "ksefd tries again by itself 06.12.2026 22:25:30 (in 10 min)" in seller
    assert "sending: queued 0, in KSeF 0" in seller
    assert buyer.startswith("(NIP 1111111111, KSeF PRODUCTION, receives only)")
    assert "queued" not in buyer and "accepted" not in buyer and "sending" not in buyer
    assert "receiving: invoices since 01.11.2026 00:00:00; next inbox cycle 06.12.2026 22:25:30 (in 10 min)" in buyer
    assert "as the buyer (Subject2): invoices up to 06.12.2026 22:10:23, last cycle 06.12.2026 22:10:30" in buyer
    assert "\noff: switched off (enabled = false in the config)" in text
    document = json.loads(to_json_text(status))                     # files and JSON: ISO 8601 with offsets
    shown_buyer = next(c for c in document["companies"] if c["name"] == "buyer")
    assert shown_buyer["next_inbox_cycle"] == "2026-12-06T21:25:30.123456+00:00"
    assert shown_buyer["environment"] == "prod" and document["switched_off"] == ["off"]
    shown_seller = next(c for c in document["companies"] if c["name"] == "seller")
    assert shown_seller["on_hold"]["since"].endswith("+00:00")


async def test_before_anything_ran_status_says_so_in_words(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path))
    clock = ManualClock(NOW)
    async with await Store.open(config.state_db, clock) as store:
        text = render(await gather(store, config, clock))
    assert "None" not in text
    assert "ksefd: not running (never started)" in text
    assert "next inbox cycle when the daemon starts" in text
    assert "inbox: its first cycle has not run yet" in text
    assert "KSeF:" not in text                     # reachability not recorded: not guessed


async def test_status_is_polish_by_default(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, language=""))
    assert config.language == "pl"
    clock = ManualClock(NOW)
    async with await Store.open(config.state_db, clock) as store:
        await _fill(store, clock)
        text = render(await gather(store, config, clock))
    assert "ksefd: nie działa (nigdy nie uruchomiony); czas polski (Europe/Warsaw)" in text
    assert "seller (NIP 5260250274, KSeF TEST (testowe), tylko wysyła)" in text
    assert "  WSTRZYMANA od 06.12.2026 21:55:30: KSeF refused: the credentials lack InvoiceWrite" in text
    assert "co zrobić: nadaj wskazane wyżej uprawnienie w Aplikacji Podatnika KSeF https://ap-test.ksef.mf.gov.pl" \
        in text
    assert "ksefd sam spróbuje ponownie 06.12.2026 22:25:30 (za 10 min)" in text
    assert "KSeF: NIEOSIĄGALNY od 06.12.2026 22:12:30 (3 min temu) (stwierdzone przez ksefd)" in text
    assert "buyer (NIP 1111111111, KSeF produkcyjny, tylko odbiera)" in text
    assert "odbiór: faktury od 01.11.2026 00:00:00; następny cykl odbioru 06.12.2026 22:25:30 (za 10 min)" in text
    assert "off: wyłączona (enabled = false w konfiguracji)" in text
    assert "None" not in text


def test_status_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`ksefd status | head -1`: the reader is gone before ksefd writes; no BrokenPipeError traceback."""
    config = _config(tmp_path)
    import asyncio

    async def create() -> None:
        async with await Store.open(load_config(config).state_db):
            pass
    asyncio.run(create())
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([sys.executable, "-m", "ksefd", "status", "-c", str(config)], stdout=write,
                                stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
