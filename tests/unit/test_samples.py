"""ksefd.samples: unique, still schema-valid invoices made from the official samples."""

from __future__ import annotations

import datetime as dt
from importlib.resources import files

from lxml import etree

from ksefd.samples import make_invoice, sample_bytes, sample_names

NS = {"f": "http://crd.gov.pl/wzor/2025/06/25/13775/"}


def _schema() -> etree.XMLSchema:
    path = files("ksefd").joinpath("data/xsd/FA3/schemat_FA(3)_v1-0E.xsd")
    return etree.XMLSchema(etree.parse(str(path)))


def test_every_sample_stays_valid_with_new_number_nips_and_date() -> None:
    schema = _schema()
    names = sample_names()
    assert len(names) == 10
    for name in names:
        data = make_invoice(sample_bytes(name), number=f"DEMO/{name}", seller_nip="5265877635",
                            buyer_nip="7010002137", issue_date=dt.date(2026, 11, 22))
        doc = etree.fromstring(data)
        assert schema.validate(etree.ElementTree(doc)), (name, schema.error_log)
        assert doc.xpath("f:Podmiot1//f:NIP/text()", namespaces=NS) == ["5265877635"]
        assert doc.xpath("f:Fa/f:P_2/text()", namespaces=NS) == [f"DEMO/{name}"]
        assert doc.xpath("f:Fa/f:P_1/text()", namespaces=NS) == ["2026-11-22"]
        buyer = doc.xpath("f:Podmiot2//f:NIP/text()", namespaces=NS)
        assert buyer in (["7010002137"], [])     # sample 22 has a buyer without NIP


def test_only_named_fields_change() -> None:
    template = sample_bytes("FA_3_Przyklad_1.xml")
    data = make_invoice(template, number="FV2026/02/150")
    assert data == template
