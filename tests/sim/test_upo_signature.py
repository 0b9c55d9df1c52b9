"""The UPO signature from the template (ksefd/sim/upo_signature.py) is what signxml's XAdES signer writes,
byte for byte, for the same Ids and signing time; it verifies, and a changed UPO does not."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from lxml import etree
from signxml import methods
from signxml.exceptions import InvalidDigest, InvalidSignature
from signxml.util import xades_tag
from signxml.xades import XAdESSigner, XAdESVerifier  # type: ignore[attr-defined]

from ksefd.sim import upo
from ksefd.sim.store import Store

TOKENS = ("0A1B2C3D", "4E5F6071", "8293A4B5", "C6D7E8F9")
NOW = dt.datetime(2026, 12, 7, 9, 15, 42, tzinfo=dt.UTC)
SESSION: dict[str, Any] = {"referenceNumber": "20261207-SB-1234567890-ABCDEF0123-45", "contextType": "Nip",
                           "contextValue": "9999999999", "authentication": {"ksefTokenReference": "20261207-AU-X"},
                           "formCode": {"systemCode": "FA (3)"}}


def _invoice(number: str, ksef: str) -> dict[str, Any]:
    return {"facts": {"sellerNip": "9999999999", "invoiceNumber": number, "issueDate": "2026-12-07"},
            "ksefNumber": ksef, "invoicingDate": "2026-12-07T08:00:00.123456+00:00",
            "acquisitionDate": "2026-12-07T08:00:01.5+00:00", "invoiceHash": "aGFzaA==", "invoicingMode": "Online"}


class _FixedSigner(XAdESSigner):  # type: ignore[misc]
    """signxml's signer with the template's Ids and signing time given, not drawn."""

    def __init__(self) -> None:
        super().__init__(method=methods.enveloped, signature_algorithm="rsa-sha256", digest_algorithm="sha256")
        self._tokens: Iterator[str] = iter(TOKENS)

    def _get_token(self, length: int = 4) -> str:
        return next(self._tokens)

    def add_signing_time(self, properties: Any, sig_root: Any, signing_settings: Any) -> None:
        etree.SubElement(properties, xades_tag("SigningTime"), nsmap=self.namespaces).text = \
            NOW.isoformat(timespec="seconds")


@pytest.fixture(scope="module")
def signer() -> upo.UpoSigner:
    return upo.UpoSigner(Store(), NOW)


def _pem(signer: upo.UpoSigner) -> str:
    return signer.certificate_pem


@pytest.mark.parametrize("invoices, page", [
    ([_invoice("FV/1", "9999999999-20261207-0123456789AB-CD")], None),
    ([_invoice("A&B <1> \"q\" 'ż'", "9999999999-20261207-0123456789AB-CD"),
      _invoice("FV/2", "9999999999-20261207-0123456789AC-EF")], upo.Page(1, 1, 1, 2, 2)),
])
def test_template_writes_what_signxml_writes(signer: upo.UpoSigner, invoices: list[dict[str, Any]],
                                             page: upo.Page | None) -> None:
    def unsigned() -> etree._Element:
        return upo.build(environment="TE", session=SESSION, invoices=invoices, page=page)
    expected = etree.tostring(_FixedSigner().sign(unsigned(), key=signer._key, cert=[signer._cert]),
                              xml_declaration=True, encoding="utf-8")
    assert signer._template.sign(unsigned(), now=NOW, tokens=TOKENS) == expected


def test_signed_upo_verifies_and_a_changed_one_does_not(signer: upo.UpoSigner) -> None:
    data = signer.sign(upo.build(environment="TE", session=SESSION, invoices=[_invoice("FV/9", "K-1")]))
    XAdESVerifier().verify(data, x509_cert=_pem(signer))
    with pytest.raises(InvalidDigest):
        XAdESVerifier().verify(data.replace(b"FV/9", b"FV/8"), x509_cert=_pem(signer))
    with pytest.raises((InvalidDigest, InvalidSignature)):     # the signing time is signed too
        XAdESVerifier().verify(data.replace(b"<xades:SigningTime>2", b"<xades:SigningTime>1"),
                               x509_cert=_pem(signer))
    other = upo.UpoSigner(Store(), NOW)
    with pytest.raises(InvalidSignature):
        XAdESVerifier().verify(data, x509_cert=other.certificate_pem)
    second = signer.sign(upo.build(environment="TE", session=SESSION, invoices=[_invoice("FV/9", "K-1")]))
    XAdESVerifier().verify(second, x509_cert=_pem(signer))
    ids = [e.get("Id") for e in etree.fromstring(data).iter() if e.get("Id")]
    assert len(ids) == 4 and ids != [e.get("Id") for e in etree.fromstring(second).iter() if e.get("Id")]
