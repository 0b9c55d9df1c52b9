"""Every local-check failure ends in rejected/ before any KSeF quota is spent (issue #5 item 3)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.daemon.support import (
    OTHER,
    drain,
    drop,
    invoice,
    one_company,
    read_json,
    sim_records,
    today,
)

GOOD = invoice("LOCAL/0")


def _utf16() -> bytes:
    return GOOD.decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16")


def _windows_1250() -> bytes:
    return GOOD.decode().replace('encoding="UTF-8"', 'encoding="windows-1250"').encode("cp1250")


CASES: dict[str, tuple[str, bytes]] = {
    "bom": ("bom", b"\xef\xbb\xbf" + invoice("LOCAL/1")),
    "utf16": ("encoding-utf-16", _utf16()),
    "cp1250": ("encoding-windows-1250", _windows_1250()),
    "pi": ("processing-instruction", invoice("LOCAL/3").replace(b"?>", b'?><?xml-stylesheet href="a.xsl"?>', 1)),
    "xml-1.1": ("xml-version", invoice("LOCAL/10").replace(b'version="1.0"', b'version="1.1"', 1)),
    "control-char": ("xml-char", invoice("LOCAL/4").replace(b"<P_2>", b"<P_2>\x01", 1)),
    "too-large": ("too-large", invoice("LOCAL/5").replace(b"</Faktura>", b"<!--" + b"x" * 3_000_001 + b"-->"
                                                                                        b"</Faktura>")),
    "broken": ("not-well-formed", invoice("LOCAL/6")[:-40]),
    "xsd": ("xsd", invoice("LOCAL/7").replace(b"<P_2>", b"<P_2X>", 1).replace(b"</P_2>", b"</P_2X>", 1)),
    "seller": ("seller-nip", invoice("LOCAL/8", seller=OTHER)),
    "seller-checksum": ("nip-checksum", invoice("LOCAL/11", seller="1234567890")),
    "png": ("not-xml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)),
    "html": ("html-page", b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head></html>"),
    "future": ("p1-future", invoice("LOCAL/9", issue_date=today() + dt.timedelta(days=3))),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_local_check_failure_is_rejected_with_a_reason(case: str, sim_factory: Any,
                                                             http: aiohttp.ClientSession, tmp_path: Path) -> None:
    code, data = CASES[case]
    sim, _, config = await one_company(sim_factory, http, tmp_path)
    drop(config.companies[0].folders.outbox, "FV 1.xml", data)

    await drain(config)

    rejected = config.companies[0].folders.rejected
    assert (rejected / "FV 1.xml").read_bytes() == data                  # the original bytes, untouched
    error = read_json(rejected / "FV 1.error.json")
    assert error["stage"] == "local-check" and error["code"] == code
    assert error["message"] and error["hint"]
    assert sim_records(sim) == []                                        # nothing reached KSeF
    assert not list(config.companies[0].folders.sent.iterdir())
