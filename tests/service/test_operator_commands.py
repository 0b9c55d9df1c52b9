"""`ksefd validate`, `ksefd qr` and `ksefd requeue` (issue #12 item 4): real files, real processes, and the
daemon against the simulator where the command's promise depends on what the daemon does."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd import i18n
from ksefd.clock import SystemClock
from ksefd.daemon.qr_code import QrError, invoice_code
from ksefd.daemon.requeue import RequeueError, requeue
from ksefd.store import Store
from tests.daemon.support import SELLER, drain, drop, invoice, load, one_company, read_json, today, write_config

BOM = b"\xef\xbb\xbf"


def ksefd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ksefd", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, stdin=subprocess.DEVNULL, check=False)


# --- validate --------------------------------------------------------------------------------------

def test_validate_passes_good_files_and_names_the_code_and_fix_of_bad_ones(tmp_path: Path) -> None:
    good = tmp_path / "FV 1.xml"
    good.write_bytes(invoice("FV/1"))
    bom = tmp_path / "FV 2.xml"
    bom.write_bytes(BOM + invoice("FV/2"))
    other_seller = tmp_path / "FV 3.xml"
    other_seller.write_bytes(invoice("FV/3", seller="5265877635"))
    future = tmp_path / "FV 4.xml"
    future.write_bytes(invoice("FV/4", issue_date=today() + dt.timedelta(days=3)))

    result = ksefd("validate", "--nip", SELLER, str(good))
    assert result.returncode == 0 and result.stdout.startswith("OK ") and "FV/1" in result.stdout

    result = ksefd("validate", "--nip", SELLER, "--json", str(good), str(bom), str(other_seller), str(future))
    assert result.returncode == 1
    body = json.loads(result.stdout)
    assert [item["ok"] for item in body] == [True, False, False, False]
    assert [item["error"]["code"] for item in body[1:]] == ["bom", "seller-nip", "p1-future"]
    assert all(item["error"]["stage"] == "local-check" and item["error"]["hint"] for item in body[1:])
    assert body[0]["invoiceHash"] == base64.b64encode(hashlib.sha256(good.read_bytes()).digest()).decode()

    text = ksefd("validate", "--nip", SELLER, str(bom)).stdout
    assert "REFUSED" in text and "[bom]" in text
    assert "fix: Zapisz plik w kodowaniu UTF-8 bez BOM" in text       # the hint in Polish by default (issue #14)


def test_validate_takes_the_nip_from_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9/v2", [{"name": "acme", "nip": SELLER, "token_file": "x"}])
    (tmp_path / "x").write_text("unused")
    good = tmp_path / "a.xml"
    good.write_bytes(invoice("FV/1"))
    assert ksefd("validate", "-c", str(config), "--company", "acme", str(good)).returncode == 0
    assert ksefd("validate", "-c", str(config), "--company", "nobody", str(good)).returncode == 2
    missing = ksefd("validate", str(good))
    assert missing.returncode == 2 and "--nip" in missing.stderr


async def test_validate_gives_the_code_the_daemon_writes_to_rejected(sim_factory: Any, http: aiohttp.ClientSession,
                                                                     tmp_path: Path) -> None:
    _, _, config = await one_company(sim_factory, http, tmp_path)
    data = BOM + invoice("FV/9")
    drop(config.company("acme").folders.outbox, "bad.xml", data)
    await drain(config)
    daemon_error = read_json(config.company("acme").folders.rejected / "bad.error.json")
    (tmp_path / "bad.xml").write_bytes(data)
    ours = json.loads(ksefd("validate", "--nip", SELLER, "--json", str(tmp_path / "bad.xml")).stdout)[0]["error"]
    for key in ("stage", "code", "message", "hint", "invoiceHash"):
        assert ours[key] == daemon_error[key], key


# --- qr --------------------------------------------------------------------------------------------

async def test_qr_of_an_accepted_invoice(sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    _, _, config = await one_company(sim_factory, http, tmp_path)
    drop(config.company("acme").folders.outbox, "FV 1.xml", invoice("FV/1"))
    await drain(config)
    sent = config.company("acme").folders.sent
    record = read_json(sent / "FV 1.ksef.json")
    code = invoice_code(sent / "FV 1.xml")
    assert code.link == record["verificationLink"] and code.label == record["ksefNumber"]
    assert code.link.startswith("https://qr-test.ksef.mf.gov.pl/invoice/")

    work = tmp_path / "work"
    work.mkdir()
    result = ksefd("qr", str(sent / "FV 1.xml"), cwd=work)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == record["verificationLink"]
    assert (work / "FV 1.qr.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    result = ksefd("qr", str(sent / "FV 1.ksef.json"), "-o", str(work / "kod.svg"))
    assert result.returncode == 0 and "<svg" in (work / "kod.svg").read_text()
    assert record["ksefNumber"] in (work / "kod.svg").read_text()
    assert ksefd("qr", "--no-image", str(sent / "FV 1.xml"), cwd=work).stdout.strip() == record["verificationLink"]


def test_qr_refuses_a_changed_file_and_a_file_not_sent(tmp_path: Path) -> None:
    data = invoice("FV/1")
    (tmp_path / "FV 1.xml").write_bytes(data)
    (tmp_path / "FV 1.ksef.json").write_text(json.dumps({
        "ksefNumber": f"{SELLER}-20261206-0123456789AB-CD", "sellerNip": SELLER, "issueDate": today().isoformat(),
        "invoiceHash": base64.b64encode(hashlib.sha256(data).digest()).decode(), "environment": "prod"}))
    assert invoice_code(tmp_path / "FV 1.xml").link.startswith("https://qr.ksef.mf.gov.pl/invoice/")
    (tmp_path / "FV 1.xml").write_bytes(data + b"\n")
    with i18n.using("en"), pytest.raises(QrError, match="changed after sending"):
        invoice_code(tmp_path / "FV 1.xml")
    result = ksefd("qr", str(tmp_path / "FV 2.xml"))          # no config: Polish, the default
    assert result.returncode == 1 and "podaj plik z folderu sent/ firmy" in result.stderr


# --- requeue -------------------------------------------------------------------------------------

def offline_config(tmp_path: Path) -> Any:
    (tmp_path / "t.token").write_text("unused")
    return load(write_config(tmp_path, "http://127.0.0.1:9/v2", [{"name": "acme", "nip": SELLER,
                                                                  "token_file": str(tmp_path / "t.token")}]))


async def test_requeue_copies_under_new_names_keeps_the_rejected_copy_and_records_it(tmp_path: Path) -> None:
    config = offline_config(tmp_path)
    folders = config.company("acme").folders
    folders.rejected.mkdir(parents=True)
    data = invoice("FV/1")
    (folders.rejected / "FV 1.xml").write_bytes(data)
    (folders.rejected / "FV 1.error.json").write_text("{}")

    first = await requeue(config, "acme", "FV 1.xml", SystemClock())
    assert first.target == folders.outbox / "FV 1.requeue-1.xml" and first.target.read_bytes() == data
    assert (folders.rejected / "FV 1.xml").read_bytes() == data          # the rejected copy stays
    second = await requeue(config, "acme", "FV 1", SystemClock())           # ".xml" may be left out
    assert second.target.name == "FV 1.requeue-2.xml"
    # A name an ERP already uses is never overwritten; the next free number is taken.
    (folders.outbox / "FV 1.requeue-3.xml").write_bytes(b"the ERP's own file")
    third = await requeue(config, "acme", "FV 1.xml", SystemClock())
    assert third.target.name == "FV 1.requeue-4.xml"
    assert (folders.outbox / "FV 1.requeue-3.xml").read_bytes() == b"the ERP's own file"

    async with await Store.open(config.state_db) as store:
        events = [e for e in await store.events.recent("acme") if e.kind == "requeue"]
    assert [e.detail["to"] for e in reversed(events)] == [
        "outbox/FV 1.requeue-1.xml", "outbox/FV 1.requeue-2.xml", "outbox/FV 1.requeue-4.xml"]
    assert all(e.detail["from"] == "rejected/FV 1.xml" for e in events)


async def test_requeue_refuses_what_would_fail_again_and_paths(tmp_path: Path) -> None:
    config = offline_config(tmp_path)
    rejected = config.company("acme").folders.rejected
    rejected.mkdir(parents=True)
    (rejected / "bad.xml").write_bytes(BOM + invoice("FV/2"))
    with i18n.using("en"), pytest.raises(RequeueError, match=r"would be refused again: \[bom\]"):
        await requeue(config, "acme", "bad.xml", SystemClock())
    with i18n.using("pl"), pytest.raises(RequeueError, match=r"zostałby znowu odrzucony: \[bom\]"):
        await requeue(config, "acme", "bad.xml", SystemClock())
    assert not config.company("acme").folders.outbox.exists()
    assert (await requeue(config, "acme", "bad.xml", SystemClock(), force=True)).target.name == "bad.requeue-1.xml"
    for name in ("../bad.xml", "missing.xml"):
        with pytest.raises(RequeueError):
            await requeue(config, "acme", name, SystemClock())
    with i18n.using("en"), pytest.raises(RequeueError, match="no company"):
        await requeue(config, "nobody", "bad.xml", SystemClock())


async def test_a_fixed_file_requeued_is_accepted(sim_factory: Any, http: aiohttp.ClientSession,
                                                 tmp_path: Path) -> None:
    _, _, config = await one_company(sim_factory, http, tmp_path)
    folders = config.company("acme").folders
    good = invoice("FV/7")
    drop(folders.outbox, "FV 7.xml", BOM + good)
    await drain(config)
    assert read_json(folders.rejected / "FV 7.error.json")["code"] == "bom"
    (folders.rejected / "FV 7.xml").write_bytes(good)             # the accountant fixes the file in rejected/
    result = ksefd("requeue", "-c", str(config.source), "acme", "FV 7.xml")
    assert result.returncode == 0, result.stderr
    await drain(config)
    assert read_json(folders.sent / "FV 7.requeue-1.ksef.json")["ksefNumber"]
    assert (folders.rejected / "FV 7.xml").read_bytes() == good
