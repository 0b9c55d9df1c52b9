"""`ksefd qr FILE`: KOD I (PROTOCOL.md §8.5) of an invoice the daemon got accepted, from `sent/NAME.ksef.json`
(and, when it is there, `sent/NAME.xml`, whose SHA-256 must be the recorded invoiceHash: the link is only
right for the exact bytes KSeF received, §13.6)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ksefd import spool
from ksefd.i18n import _
from ksefd.ksef import qr


class QrError(Exception):
    """The file given is not an accepted invoice's record; the message names the file and the fix."""


@dataclass(frozen=True)
class InvoiceCode:
    link: str
    label: str                  # the KSeF number (printed under the code)
    record: Path


def record_path(given: Path) -> Path:
    """`sent/NAME.xml`, `sent/NAME.ksef.json` or `sent/NAME` -> `sent/NAME.ksef.json`."""
    name = given.name
    if name.endswith(".ksef.json"):
        return given
    stem = spool.split_name(name)[0] if name.lower().endswith(".xml") else name
    return given.with_name(f"{stem}.ksef.json")


def invoice_code(given: Path) -> InvoiceCode:
    path = record_path(given)
    try:
        record: dict[str, Any] = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise QrError(_("{file} does not exist: KOD I is made for an invoice KSeF accepted; give a file from the "
                        "company's sent/ folder", file=path)) from None
    except (OSError, ValueError) as exc:
        raise QrError(_("{file} cannot be read as JSON ({error})", file=path, error=exc)) from exc
    missing = [k for k in ("ksefNumber", "sellerNip", "issueDate", "invoiceHash") if not record.get(k)]
    if missing:
        raise QrError(_("{file} lacks {keys}; it is not a ksefd record of an accepted invoice", file=path,
                        keys=", ".join(missing)))
    xml = path.with_name(path.name.removesuffix(".ksef.json") + ".xml")
    if xml.exists():
        actual = base64.b64encode(qr.invoice_hash_of(xml.read_bytes())).decode("ascii")
        if actual != record["invoiceHash"]:
            raise QrError(_("{file} is not the file KSeF accepted (its SHA-256 differs from invoiceHash in "
                            "{record}); it was changed after sending: use the original bytes", file=xml,
                            record=path.name))
    host = qr.qr_host(str(record.get("environment") or "test"))
    link = qr.invoice_link(host, record["sellerNip"], dt.date.fromisoformat(record["issueDate"]),
                           record["invoiceHash"])
    return InvoiceCode(link, qr.invoice_label(record["ksefNumber"]), path)


def write_image(code: InvoiceCode, output: Path, scale: int = 5) -> Path:
    """PNG or SVG by the output's suffix; written atomically (temp + rename)."""
    if output.suffix.lower() == ".svg":
        data = qr.qr_svg(code.link, code.label, scale).encode("utf-8")
    elif output.suffix.lower() == ".png":
        data = qr.qr_png(code.link, code.label, scale)
    else:
        raise QrError(_("{file}: the image must end in .png or .svg", file=output))
    return spool.write_atomic(output, data)
