"""What the ERP prints for an offline invoice (PROTOCOL.md §8.5, §8.6; issue #11 item 3), in the company's
`offline/` folder (default data_dir/<company>/offline, config key `offline`):

    STEM.offline.json   both links, their labels, the mode, why, the deadline, warnings; the KSeF number later
    STEM.kod1.png/.svg  KOD I, labelled OFFLINE
    STEM.kod2.png/.svg  KOD II, labelled CERTYFIKAT, signed with the company's Offline certificate

STEM is the dropped file's name without `.xml` (`STEM-<invoice id>` when an earlier invoice used the name).
Images are written first, the JSON last (each atomically: temp, fsync, rename), so an ERP that waits for the
JSON finds the images complete. When the KSeF number comes, `sent/NAME.kod1.png/.svg` are written with the
number as the label, for reprints. In a total failure no QR codes are due (§8.1): the JSON says so.
Without an Offline certificate only KOD I is written, with a warning: such an invoice cannot legally be handed
over (KOD II is required on an offline invoice, §8.1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ksefd import spool
from ksefd.config import Company
from ksefd.i18n import N_, translate
from ksefd.ksef import CertificateCredentials, CredentialsError, qr
from ksefd.store import InvoiceRow

from ..certificate_files import offline_credentials

# Message ids, written in the config's language. Not the labels printed under the QR codes: those are
# KSeF's ("OFFLINE", "CERTYFIKAT", PROTOCOL.md §8) and stay exactly as specified (qr.OFFLINE_LABEL, ...).
NO_KOD2 = N_("no Offline KSeF certificate is configured (offline_certificate), so KOD II could not be made: "
             "an offline invoice must carry KOD I and KOD II, so it cannot legally be handed over to the buyer yet. "
             "Configure the company's Offline certificate, or wait for the KSeF number (KOD I with the number).")
MODE_LABELS = {
    "offline24": N_("offline24: the taxpayer's offline mode (tryb offline24)"),
    "offline24-unreachable": N_("offline24: KSeF cannot be reached and no outage is announced, so this is the "
                                "taxpayer's offline24 (not the Ministry's unavailability mode)"),
    "unavailability": N_("offline: KSeF unavailability announced by the Ministry (tryb offline, niedostępność)"),
    "failure": N_("awaryjny: KSeF failure announced by the Ministry (tryb awaryjny)"),
    "total-failure": N_("awaria całkowita: total KSeF failure; no QR codes and no obligation to send (PROTOCOL.md "
                        "§8.1)"),
}


@dataclass(frozen=True)
class Signer:
    credentials: CertificateCredentials

    def link(self, host: str, nip: str, seller_nip: str, invoice_hash: str) -> str:
        return qr.certificate_link(host, "Nip", nip, seller_nip, self.credentials.certificate,
                                   self.credentials.private_key, invoice_hash)


def load_signer(company: Company) -> Signer | None:
    """The company's Offline certificate, or None when none is configured. CredentialsError names the file."""
    credentials = offline_credentials(company)
    if credentials is None:
        return None
    try:
        qr.check_offline_certificate(credentials.certificate, credentials.private_key)
    except (ValueError, TypeError) as exc:
        raise CredentialsError(f"{company.credentials.offline_certificate}: {exc}") from exc
    return Signer(credentials)


def signer_version(company: Company) -> tuple[int, ...] | None:
    """Changes when the Offline certificate's files are replaced (a renewal switches them in place)."""
    files = company.credentials
    paths = [p for p in (files.offline_certificate, files.offline_private_key) if p is not None]
    try:
        return tuple(p.stat().st_mtime_ns for p in paths) or None
    except OSError:
        return None


class OfflineFiles:
    def __init__(self, company: Company, qr_host: str) -> None:
        self.company = company
        self.folder = company.folders.offline
        self.qr_host = qr_host

    def prepare(self) -> None:
        """At start: the folder exists, and temp files a crash left behind are gone."""
        self.folder.mkdir(parents=True, exist_ok=True)
        spool.remove_stale_temps(self.folder)

    def json_path(self, stem: str) -> Path:
        return self.folder / f"{stem}.offline.json"

    def stem_for(self, row: InvoiceRow) -> str:
        stem = spool.split_name(row.file_name)[0]
        existing = self.read(stem)
        if existing is not None and existing.get("invoiceId") != row.id:
            return f"{stem}-{row.id}"
        return stem

    def read(self, stem: str) -> dict[str, Any] | None:
        try:
            found = json.loads(self.json_path(stem).read_bytes())
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    def write_issued(self, row: InvoiceRow, stem: str, record: dict[str, Any], signer: Signer | None,
                     signer_problem: str | None) -> dict[str, Any]:
        """The images, then STEM.offline.json; returns the JSON written."""
        assert row.seller_nip is not None and row.issue_date is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        body = dict(record)
        warnings: list[str] = list(body.pop("warnings", []))
        if record["mode"] == "total-failure":
            body.update(kod1=None, kod2=None)
        else:
            kod1 = qr.invoice_link(self.qr_host, row.seller_nip, row.issue_date, row.sha256)
            body["kod1"] = self._images(stem, "kod1", kod1, qr.OFFLINE_LABEL)
            body["kod2"] = None
            if signer is not None:
                kod2 = signer.link(self.qr_host, self.company.nip, row.seller_nip, row.sha256)
                body["kod2"] = self._images(stem, "kod2", kod2, qr.CERTIFICATE_LABEL)
            else:
                warnings.append(signer_problem or translate(NO_KOD2))
        body["warnings"] = warnings
        spool.fsync_directory(self.folder)
        spool.write_json(self.json_path(stem), body)
        return body

    def _images(self, stem: str, name: str, link: str, label: str) -> dict[str, str]:
        png, svg = f"{stem}.{name}.png", f"{stem}.{name}.svg"
        spool.write_atomic(self.folder / png, qr.qr_png(link, label), sync_dir=False)
        spool.write_atomic(self.folder / svg, qr.qr_svg(link, label).encode("utf-8"), sync_dir=False)
        return {"link": link, "label": label, "png": png, "svg": svg}

    def update(self, stem: str, changes: dict[str, Any]) -> None:
        """Merge `changes` into STEM.offline.json (the KSeF number, a new deadline, a correction's link)."""
        body = self.read(stem)
        if body is None:
            return
        merged = {**body, **changes}
        if merged != body:
            spool.write_json(self.json_path(stem), merged)

    def write_reprint(self, sent_stem: str, link: str, ksef_number: str) -> dict[str, str]:
        """sent/STEM.kod1.png/.svg labelled with the KSeF number (PROTOCOL.md §8.5), for reprints."""
        folder = self.company.folders.sent
        png, svg = f"{sent_stem}.kod1.png", f"{sent_stem}.kod1.svg"
        spool.write_atomic(folder / png, qr.qr_png(link, qr.invoice_label(ksef_number)), sync_dir=False)
        spool.write_atomic(folder / svg, qr.qr_svg(link, qr.invoice_label(ksef_number)).encode("utf-8"),
                           sync_dir=False)
        spool.fsync_directory(folder)
        return {"link": link, "label": ksef_number, "png": png, "svg": svg}
