"""UPO (Urzędowe Poświadczenie Odbioru) v4-3: the signed receipt for invoices (PROTOCOL.md §4.6).

One UPO per accepted invoice, and per closed session one UPO page per 10 000 accepted invoices
(SimConfig.upo_page_size)
(`OpisPotwierdzenia` paging). Root `Potwierdzenie` in `http://upo.schematy.mf.gov.pl/KSeF/v4-3`,
elements in the XSD's order; `NazwaPodmiotuPrzyjmujacego` carries the TE suffix on the test
environment exactly as MF's TEST does (which the XSD's fixed value rejects; samples/upo show it).
Signed XAdES enveloped (byte for byte as signxml signs, from a template: upo_signature.py) with the
simulator's own "Ministerstwo Finansów" key, kept in the store so UPOs stay verifiable after a restart.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from .clock import WARSAW, parse_iso
from .store import Store
from .upo_signature import XadesTemplate

NS = "http://upo.schematy.mf.gov.pl/KSeF/v4-3"
PAGE_SIZE = 10_000          # `Dokument maxOccurs="10000"` in upo-v4-3.xsd
MF_NAME = "Ministerstwo Finansów"
# Only TEST's wording is known (samples/upo); other environments get the plain, XSD-valid name.
ENVIRONMENT_SUFFIX = {"TE": " - środowisko testowe (TE)"}
CONTEXT_ELEMENTS = {"Nip": "Nip", "InternalId": "IdWewnetrzny", "NipVatUe": "IdZlozonyVatUE",
                    "PeppolId": "IdDostawcyUslugPeppol"}
_KEY_RECORD = ("sim_meta", "upo_signing")


@dataclass(frozen=True)
class Page:
    number: int          # 1-based
    count: int           # pages in the session UPO
    first: int           # 1-based position of the first document in the whole session UPO
    last: int            # 1-based position of the last document (inclusive, as MF's samples show)
    total: int


def receiver_name(environment: str) -> str:
    return MF_NAME + ENVIRONMENT_SUFFIX.get(environment.upper(), "")


@functools.lru_cache(maxsize=1024)      # a batch's invoices share their invoicingDate (the opening time)
def _local(text: str) -> str:
    """KSeF's UPO dates: Warsaw local time, milliseconds, explicit offset (samples/upo)."""
    when = parse_iso(text).astimezone(WARSAW)
    return when.isoformat(timespec="milliseconds")


def _add(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    node = etree.SubElement(parent, f"{{{NS}}}{name}")
    if text is not None:
        node.text = text
    return node


def build(*, environment: str, session: dict[str, Any], invoices: list[dict[str, Any]],
          page: Page | None = None) -> etree._Element:
    """The unsigned UPO for `invoices` (status-200 invoice records) of `session` (session record)."""
    root = etree.Element(f"{{{NS}}}Potwierdzenie", nsmap={None: NS})  # type: ignore[dict-item]
    _add(root, "NazwaPodmiotuPrzyjmujacego", receiver_name(environment))
    _add(root, "NumerReferencyjnySesji", session["referenceNumber"])
    auth = _add(root, "Uwierzytelnienie")
    context = _add(auth, "IdKontekstu")
    _add(context, CONTEXT_ELEMENTS.get(session["contextType"], "Nip"), session["contextValue"])
    proof = session.get("authentication") or {}
    if proof.get("ksefTokenReference"):
        _add(auth, "NumerReferencyjnyTokenaKSeF", proof["ksefTokenReference"])
    else:
        _add(auth, "SkrotDokumentuUwierzytelniajacego", proof.get("documentHash") or "")
    if page is not None:
        desc = _add(root, "OpisPotwierdzenia")
        for name, value in (("Strona", page.number), ("LiczbaStron", page.count), ("ZakresDokumentowOd", page.first),
                            ("ZakresDokumentowDo", page.last), ("CalkowitaLiczbaDokumentow", page.total)):
            _add(desc, name, str(value))
    _add(root, "NazwaStrukturyLogicznej", session.get("structureName") or "Schemat_FA(3)_v1-0E.xsd")
    _add(root, "KodFormularza", session["formCode"]["systemCode"])
    for invoice in invoices:
        facts = invoice["facts"]
        doc = _add(root, "Dokument")
        _add(doc, "NipSprzedawcy", facts["sellerNip"])
        _add(doc, "NumerKSeFDokumentu", invoice["ksefNumber"])
        _add(doc, "NumerFaktury", facts["invoiceNumber"])
        _add(doc, "DataWystawieniaFaktury", facts["issueDate"])
        _add(doc, "DataPrzeslaniaDokumentu", _local(invoice["invoicingDate"]))
        _add(doc, "DataNadaniaNumeruKSeF", _local(invoice["acquisitionDate"]))
        _add(doc, "SkrotDokumentu", invoice["invoiceHash"])
        _add(doc, "TrybWysylki", invoice["invoicingMode"])
    return root


class UpoSigner:
    """The simulator's MF signing key and certificate (RSA-2048, self-signed), kept in the store."""

    def __init__(self, store: Store, now: dt.datetime) -> None:
        rec = store.get(*_KEY_RECORD)
        if rec is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, MF_NAME),
                              x509.NameAttribute(NameOID.ORGANIZATION_NAME, MF_NAME),
                              x509.NameAttribute(NameOID.COUNTRY_NAME, "PL")])
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
                    .sign(key, hashes.SHA256()))
            rec = {"privateKeyPem": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()).decode("ascii"),
                   "certificatePem": cert.public_bytes(serialization.Encoding.PEM).decode("ascii")}
            store.put(*_KEY_RECORD, rec)
        loaded = serialization.load_pem_private_key(rec["privateKeyPem"].encode("ascii"), None)
        assert isinstance(loaded, rsa.RSAPrivateKey)
        self._key = loaded
        self.certificate_pem: str = rec["certificatePem"]
        self._cert = x509.load_pem_x509_certificate(self.certificate_pem.encode("ascii"))
        self._template = XadesTemplate(self._key, self._cert)

    def sign(self, root: etree._Element) -> bytes:
        return self._template.sign(root)


def pages(total: int, page_size: int = PAGE_SIZE) -> list[Page]:
    """Split `total` documents into UPO pages of at most `page_size` (at least one page)."""
    if not 1 <= page_size <= PAGE_SIZE:
        raise ValueError(f"a UPO page holds 1..{PAGE_SIZE} documents, not {page_size}")
    count = max(1, -(-total // page_size))
    return [Page(n + 1, count, n * page_size + 1, min(total, (n + 1) * page_size), total) for n in range(count)]
