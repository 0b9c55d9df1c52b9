"""A minimal DER reader: just enough of a PKCS#10 request to see what `cryptography` hides from its public API,
the ASN.1 string type of each subject attribute and whether the signature AlgorithmIdentifier carries
parameters (PROTOCOL.md §15, CSR pitfalls). Malformed input raises ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass

SEQUENCE, SET, OID, NULL = 0x30, 0x31, 0x06, 0x05
UTF8_STRING, PRINTABLE_STRING, IA5_STRING, BMP_STRING, T61_STRING = 0x0C, 0x13, 0x16, 0x1E, 0x14
TAG_NAMES = {UTF8_STRING: "UTF8String", PRINTABLE_STRING: "PrintableString", IA5_STRING: "IA5String",
             BMP_STRING: "BMPString", T61_STRING: "TeletexString", 0x1C: "UniversalString", 0x03: "BIT STRING"}


@dataclass(frozen=True)
class Node:
    tag: int
    content: bytes

    def children(self) -> list[Node]:
        return parse_all(self.content)


def _read(data: bytes, pos: int) -> tuple[Node, int]:
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not expected here")
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("DER element runs past the end")
    return Node(tag, data[pos:pos + length]), pos + length


def parse_one(data: bytes) -> Node:
    node, end = _read(data, 0)
    if end != len(data):
        raise ValueError("trailing bytes after the DER element")
    return node


def parse_all(data: bytes) -> list[Node]:
    found, pos = [], 0
    while pos < len(data):
        node, pos = _read(data, pos)
        found.append(node)
    return found


def oid_text(content: bytes) -> str:
    if not content:
        raise ValueError("empty OID")
    parts, value = [], 0
    first = True
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            if first:
                parts += [min(value // 40, 2), value - 40 * min(value // 40, 2)]
                first = False
            else:
                parts.append(value)
            value = 0
    return ".".join(str(p) for p in parts)


@dataclass(frozen=True)
class CsrShape:
    """What the raw request says: subject attributes as (OID, ASN.1 tag) and the signature algorithm."""

    subject: list[tuple[str, int]]
    signature_oid: str
    signature_parameters: Node | None


def csr_shape(der: bytes) -> CsrShape:
    request = parse_one(der)
    parts = request.children()
    if request.tag != SEQUENCE or len(parts) != 3:
        raise ValueError("a CertificationRequest is SEQUENCE {info, signatureAlgorithm, signature}")
    info = parts[0].children()
    if len(info) < 3 or info[1].tag != SEQUENCE:
        raise ValueError("CertificationRequestInfo has no subject Name")
    subject: list[tuple[str, int]] = []
    for rdn in info[1].children():
        if rdn.tag != SET:
            raise ValueError("a Name is a SEQUENCE of SETs")
        for attribute in rdn.children():
            oid, value = attribute.children()
            subject.append((oid_text(oid.content), value.tag))
    algorithm = parts[1].children()
    if not algorithm or algorithm[0].tag != OID:
        raise ValueError("signatureAlgorithm has no OID")
    return CsrShape(subject, oid_text(algorithm[0].content), algorithm[1] if len(algorithm) > 1 else None)
