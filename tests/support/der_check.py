"""Reads the ASN.1 string type of each subject attribute of a DER CSR, for tests (a few lines of DER walking,
independent of the client and the simulator)."""

from __future__ import annotations

NAMES = {0x0C: "UTF8String", 0x13: "PrintableString", 0x16: "IA5String", 0x1E: "BMPString", 0x03: "BIT STRING"}


def _elements(data: bytes) -> list[tuple[int, bytes]]:
    found, pos = [], 0
    while pos < len(data):
        tag, length = data[pos], data[pos + 1]
        start = pos + 2
        if length & 0x80:
            count = length & 0x7F
            length = int.from_bytes(data[start:start + count], "big")
            start += count
        found.append((tag, data[start:start + length]))
        pos = start + length
    return found


def _oid(content: bytes) -> str:
    parts, value = [], 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts += [value // 40, value % 40] if not parts else [value]
            value = 0
    return ".".join(map(str, parts))


def subject_string_types(csr_der: bytes) -> dict[str, str]:
    """{attribute OID: ASN.1 type name} of the CSR's subject."""
    (_, request), = _elements(csr_der)
    info = _elements(request)[0][1]
    subject = _elements(info)[1][1]
    found = {}
    for _, rdn in _elements(subject):
        for _, attribute in _elements(rdn):
            (_, oid), (tag, _) = _elements(attribute)
            found[_oid(oid)] = NAMES.get(tag, hex(tag))
    return found
