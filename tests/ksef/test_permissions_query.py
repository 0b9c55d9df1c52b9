"""ksefd.ksef.permissions against the simulator: every page of the personal grants, the 2.9.0 ownerPermissions,
and a token's own permissions (PROTOCOL.md §9.1, §9.2, §15)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives import serialization

from ksefd.ksef.auth import ContextIdentifier
from ksefd.ksef.client import KsefClient
from ksefd.ksef.credentials import KsefToken, load_certificate
from ksefd.ksef.permissions import personal_permissions, token_permissions
from tests.support.ksef_auth import create_ksef_token, self_signed_certificate

NIP = "5265877635"
PERSON_NIP = "9999999999"
PESEL = "15062788702"
SCOPES = ["InvoiceRead", "InvoiceWrite", "Introspection", "CredentialsRead", "SubunitManage", "CredentialsManage",
          "EnforcementOperations", "CollectiveIdentifierManage"]


async def test_every_page_and_no_owner_rights_for_a_granted_person(sim, http: aiohttp.ClientSession,
                                                                     tmp_path: Path) -> None:
    person = {"nip": PERSON_NIP, "pesel": PESEL, "isBailiff": False, "description": "JDG testowa"}
    async with http.post(f"{sim.base_url}/testdata/person", json=person) as resp:
        assert resp.status == 200
    for who in ({"type": "Pesel", "value": PESEL}, {"type": "Nip", "value": PERSON_NIP}):
        body = {"contextIdentifier": {"type": "Nip", "value": NIP}, "authorizedIdentifier": who,
                "permissions": [{"permissionType": s, "description": f"{s} testowe"} for s in SCOPES]}
        async with http.post(f"{sim.base_url}/testdata/permissions", json=body) as resp:
            assert resp.status == 200
    cert, key = self_signed_certificate(pesel=PESEL)
    (tmp_path / "p.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "p.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    async with KsefClient("test", base_url=sim.base_url) as client:
        ctx = client.context(ContextIdentifier.nip(NIP), load_certificate(tmp_path / "p.crt", tmp_path / "p.key"))
        found = await personal_permissions(ctx, page_size=10)
    assert len(found.items) == 16                  # two pages (hasMore on the first): all of them arrive
    assert found.granted == tuple(sorted(SCOPES)) and found.owner is None
    assert found.held == frozenset(SCOPES)


async def test_owner_rights_and_a_tokens_own_permissions(sim, http: aiohttp.ClientSession) -> None:
    token = await create_ksef_token(http, sim.base_url, NIP, ["InvoiceRead"])
    async with KsefClient("test", base_url=sim.base_url) as client:
        ctx = client.context(ContextIdentifier.nip(NIP), KsefToken.parse(token))
        found = await personal_permissions(ctx)
        own = await token_permissions(ctx, KsefToken.parse(token).reference_number)
    assert found.owner is not None and "InvoiceWrite" in found.owner and found.granted == ()
    assert own.permissions == ("InvoiceRead",) and own.status == "Active"
