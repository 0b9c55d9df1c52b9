"""Messages that say what to do (issue #14 point 5), against the simulator over real HTTP: a read-only token
on a sending company names the one permission missing, where it is granted, and `send = false`; a token
pasted with invisible characters works and the log says what was removed, never the token."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import structlog.testing

from ksefd.config import load_config
from ksefd.daemon.service import serve
from ksefd.daemon.token_cleaning import removed_characters
from ksefd.samples import has_attachment, make_invoice, sample_bytes, sample_names
from ksefd.sandbox import make_taxpayer

NIP = "5260250274"


def _setup(folder: Path, base_url: str) -> Path:
    outbox = folder / "data" / "firma" / "outbox"
    outbox.mkdir(parents=True)
    template = next(n for n in sample_names() if not has_attachment(sample_bytes(n)))
    (outbox / "fv.xml").write_bytes(make_invoice(sample_bytes(template), number="FV/1", seller_nip=NIP,
                                                 buyer_nip="9999999999", issue_date=dt.date.today()))
    config = folder / "ksefd.toml"
    config.write_text(f'[ksef]\nenvironment = "test"\nbase_url = "{base_url}"\n\n[daemon]\ndata_dir = "data"\n'
                      f'settle_seconds = 0\nshutdown_grace_seconds = 2\nlanguage = "en"\n\n[[companies]]\n'
                      f'name = "firma"\nnip = "{NIP}"\nreceive = false\ntoken_file = "firma.token"\n', encoding="utf-8")
    return config


async def test_a_read_only_token_on_a_sending_company_names_invoicewrite_and_send_false(sim, tmp_path: Path) -> None:
    await make_taxpayer(sim.base_url, NIP, ["InvoiceRead"], tmp_path / "firma.token")
    config = load_config(_setup(tmp_path, sim.base_url))
    problems = await asyncio.wait_for(serve(config, asyncio.Event(), once=True), 60)
    assert len(problems) == 1, problems
    text = problems[0]
    assert "on hold (missing-permission)" in text
    assert "the credentials lack the permission InvoiceWrite (they hold InvoiceRead)" in text
    assert "PefInvoiceWrite" not in text and "EnforcementOperations" not in text     # one permission, not three
    assert "in the taxpayer's application (Aplikacja Podatnika) of KSeF TEST, https://ap-test.ksef.mf.gov.pl/web/" \
        in text
    assert "if firma should only receive invoices, set send = false for it in the config" in text


async def test_a_token_with_invisible_characters_is_cleaned_and_the_log_says_what_went(sim, tmp_path: Path) -> None:
    token_file = tmp_path / "firma.token"
    await make_taxpayer(sim.base_url, NIP, ["InvoiceWrite"], token_file)
    token = token_file.read_text(encoding="utf-8").strip()
    middle = len(token) // 2
    token_file.write_text("\ufeff" + token[:middle] + "\u200b" + token[middle:] + "\u00a0\r\n", encoding="utf-8")
    config = load_config(_setup(tmp_path, sim.base_url))
    with structlog.testing.capture_logs() as logs:
        problems = await asyncio.wait_for(serve(config, asyncio.Event(), once=True), 60)
    assert problems == []
    assert (tmp_path / "data" / "firma" / "sent" / "fv.ksef.json").exists()
    cleaned = [e for e in logs if e["event"] == "credentials.token_cleaned"]
    assert len(cleaned) == 1
    assert cleaned[0]["removed"] == ("1 x BYTE ORDER MARK (BOM) (U+FEFF), 1 x NO-BREAK SPACE (U+00A0), "
                                     "1 x ZERO WIDTH SPACE (U+200B)")
    secret = token.split("|")[2]
    assert not any(secret in str(e) or token[:middle] in str(e) for e in logs)


def test_a_plain_token_file_with_its_line_end_is_not_reported() -> None:
    assert removed_characters("20251010-EC-1|nip-5260250274|abc\n") == []
    assert removed_characters("20251010-EC-1|nip-5260250274|abc\r\n") == []
    assert removed_characters(" 2025\t|x\n") == [("SPACE (U+0020)", 1), ("TAB (U+0009)", 1)]
