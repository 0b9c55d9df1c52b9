"""`rejected/NAME.error.json` speaks the config's language (issue #14 point 1): the hint in Polish by default,
in English with `language = "en"`; the code and the stage stay the same in both."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest

from ksefd import i18n
from ksefd.config import load_config
from ksefd.daemon.service import serve
from ksefd.samples import has_attachment, make_invoice, sample_bytes, sample_names
from ksefd.sandbox import make_taxpayer

NIP = "5260250274"


async def _rejected_with_bom(base_url: str, folder: Path, language: str | None) -> dict[str, object]:
    await make_taxpayer(base_url, NIP, ["InvoiceWrite"], folder / "firma.token")
    outbox = folder / "data" / "firma" / "outbox"
    outbox.mkdir(parents=True)
    template = next(n for n in sample_names() if not has_attachment(sample_bytes(n)))
    data = make_invoice(sample_bytes(template), number="FV/BOM/1", seller_nip=NIP, buyer_nip="9999999999",
                        issue_date=dt.date.today())
    (outbox / "fv.xml").write_bytes(b"\xef\xbb\xbf" + data)         # a BOM: refused before KSeF (PROTOCOL.md §4.2)
    config = folder / "ksefd.toml"
    chosen = f'language = "{language}"\n' if language else ""
    config.write_text(f'[ksef]\nenvironment = "test"\nbase_url = "{base_url}"\n\n[daemon]\ndata_dir = "data"\n'
                      f'settle_seconds = 0\n{chosen}\n[[companies]]\nname = "firma"\nnip = "{NIP}"\nreceive = false\n'
                      f'token_file = "firma.token"\n', encoding="utf-8")
    with i18n.using(i18n.current()):                # serve() sets the process's language; restore it after
        await asyncio.wait_for(serve(load_config(config), asyncio.Event(), once=True), 60)
    return dict(json.loads((folder / "data" / "firma" / "rejected" / "fv.error.json").read_text("utf-8")))


@pytest.mark.parametrize(("language", "hint"), [
    (None, "Zapisz plik w kodowaniu UTF-8 bez BOM (w ustawieniach eksportu ERP albo w edytorze: 'UTF-8' zamiast "
           "'UTF-8 z BOM')."),
    ("en", "Save the file as UTF-8 without BOM (in the ERP's export settings, or in the editor: 'UTF-8' rather "
           "than 'UTF-8 with BOM')."),
])
async def test_the_hint_is_in_the_configs_language(sim, tmp_path: Path, language: str | None, hint: str) -> None:
    error = await _rejected_with_bom(sim.base_url, tmp_path, language)
    assert error["code"] == "bom" and error["stage"] == "local-check"
    assert error["hint"] == hint
