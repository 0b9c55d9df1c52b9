"""Every official FA(3) sample goes through an online session (issue #2, "Done means"):
accepted in a fresh context whose NIP is the sample's seller (Podmiot1) NIP, except the one with an
attachment (415 online, PROTOCOL.md §4.2); and samples sharing (seller NIP, RodzajFaktury, P_2),
sent into one context, are duplicates of the first (440 with the original's numbers)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import SAMPLES
from tests.support.ksef_auth import access_token
from tests.support.online_flow import Online, sim_config

SAMPLE_FILES = sorted((SAMPLES / "invoices").glob("*.xml"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))
CONTENT = {path: path.read_bytes() for path in SAMPLE_FILES}
NS = "{http://crd.gov.pl/wzor/2025/06/25/13775/}"


@pytest.fixture
async def sim(sim_factory: Any) -> Any:
    """This module's simulator: default settings, rate limits off (see online_flow.sim_config)."""
    return await sim_factory(config=sim_config())


def key_of(path: Path) -> tuple[str, str, str]:
    """(Podmiot1 NIP, RodzajFaktury, P_2), read with the standard library."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(CONTENT[path])
    nip = root.findtext(f"{NS}Podmiot1/{NS}DaneIdentyfikacyjne/{NS}NIP")
    fa = root.find(f"{NS}Fa")
    assert nip and fa is not None
    return nip, fa.findtext(f"{NS}RodzajFaktury") or "", fa.findtext(f"{NS}P_2") or ""


def has_attachment(path: Path) -> bool:
    return b"<Zalacznik>" in CONTENT[path]


def test_the_samples_are_what_the_tests_expect() -> None:
    assert len(SAMPLE_FILES) == 10
    assert [p.name for p in SAMPLE_FILES if has_attachment(p)] == ["FA_3_Przyklad_24.xml"]
    keys = [key_of(p) for p in SAMPLE_FILES]
    assert keys.count(("9999999999", "VAT", "FV2026/02/150")) == 4
    assert keys.count(("9999999999", "KOR", "FK2026/03/200")) == 2


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.stem)
async def test_sample_in_a_fresh_context(path: Path, sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config())
    seller = key_of(path)[0]
    online = Online(http, sim.base_url, await access_token(http, sim.base_url, seller))
    await online.open()
    result = await online.submit(CONTENT[path])
    if has_attachment(path):
        assert result["status"]["code"] == 415, result
        assert result["status"]["description"] == "Brak możliwości wysyłania faktury z załącznikiem"
        assert "ksefNumber" not in result
    else:
        assert result["status"] == {"code": 200, "description": "Sukces"}, result
        assert result["ksefNumber"].startswith(f"{seller}-")


async def test_samples_sharing_the_duplicate_key_in_one_context(sim: Any, http: aiohttp.ClientSession) -> None:
    online = Online(http, sim.base_url, await access_token(http, sim.base_url, "9999999999"))
    await online.open()
    first_of: dict[tuple[str, str, str], dict[str, Any]] = {}
    duplicates = 0
    for path in SAMPLE_FILES:
        result = await online.submit(CONTENT[path])
        key = key_of(path)
        if has_attachment(path):
            assert result["status"]["code"] == 415, (path.name, result)   # refused before the duplicate check
        elif key not in first_of:
            assert result["status"]["code"] == 200, (path.name, result)
            first_of[key] = result
        else:
            duplicates += 1
            original = first_of[key]
            status = result["status"]
            assert status["code"] == 440 and status["description"] == "Duplikat faktury", (path.name, result)
            assert status["extensions"] == {"originalKsefNumber": original["ksefNumber"],
                                            "originalSessionReferenceNumber": online.reference}
            assert original["ksefNumber"] in status["details"][0]
    assert duplicates == 3      # two more FV2026/02/150 (VAT), one more FK2026/03/200 (KOR)
