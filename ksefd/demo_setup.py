"""Set-up for `ksefd demo`: two companies on the embedded simulator, each with a KSeF token obtained the
way a user gets one (a certificate login, then POST /tokens), and a config file written like a user's.

The demo certificates are self-signed, which only the TEST environment (and so the simulator) accepts
(PROTOCOL.md §3.3, §11): a person's certificate with serialNumber TINPL-<nip> owns that NIP's context.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ksefd.ksef import KsefClient, load_certificate

# The official samples' own parties: ABC AGD sp. z o.o. sells to F.H.U. Jan Kowalski (both checksum-valid).
SELLER = ("abc-agd", "9999999999", "Anna", "Sprzedawczyni")
BUYER = ("jan-kowalski", "1111111111", "Jan", "Kowalski")


@dataclass(frozen=True)
class DemoCompany:
    name: str
    nip: str
    token_file: Path


def self_signed(nip: str, given: str, surname: str, folder: Path, *, offline: bool = False) -> tuple[Path, Path]:
    """A person's certificate as the Ministry's test tools make them (PROTOCOL.md §11), EC P-256; `offline`:
    a certificate of type Offline (keyUsage Non-Repudiation only), which signs KOD II (PROTOCOL.md §8.6)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.GIVEN_NAME, given), x509.NameAttribute(NameOID.SURNAME, surname),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, f"TINPL-{nip}"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{given} {surname}"), x509.NameAttribute(NameOID.COUNTRY_NAME, "PL"),
    ])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=365)))
    if offline:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=True, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
            critical=True)
    cert = builder.sign(key, hashes.SHA256())
    stem = f"{nip}-offline" if offline else nip
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


async def mint_token(client: KsefClient, nip: str, cert: Path, key: Path, permissions: list[str],
                     description: str = "ksefd demo") -> str:
    """Log in with the certificate into the NIP's context and generate a KSeF token (PROTOCOL.md §9.1)."""
    ctx = client.context(nip, load_certificate(cert, key))
    created = (await ctx.request("POST", "/tokens", json={"permissions": permissions,
                                                          "description": description}, expect=(202,))).json()
    for _ in range(100):
        state = (await ctx.request("GET", "/tokens/{referenceNumber}",
                                   params={"referenceNumber": created["referenceNumber"]})).json()
        if state["status"] == "Active":
            return str(created["token"])
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the demo token {created['referenceNumber']} never became Active")


async def prepare_companies(base_url: str, folder: Path) -> tuple[DemoCompany, DemoCompany]:
    secrets_dir = folder / "credentials"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    companies = []
    async with KsefClient("test", base_url=base_url) as client:
        for (name, nip, given, surname), permissions in ((SELLER, ["InvoiceWrite", "InvoiceRead"]),
                                                          (BUYER, ["InvoiceRead"])):
            cert, key = self_signed(nip, given, surname, secrets_dir)
            token = await mint_token(client, nip, cert, key, permissions)
            token_file = secrets_dir / f"{name}.token"
            token_file.write_text(token + "\n", encoding="utf-8")
            token_file.chmod(0o600)
            companies.append(DemoCompany(name, nip, token_file))
    return companies[0], companies[1]


def offline_certificate(folder: Path) -> tuple[Path, Path]:
    """The seller's certificate of type Offline, for KOD II on offline invoices (`ksefd demo --outage`)."""
    _, nip, given, surname = SELLER
    return self_signed(nip, given, surname, folder, offline=True)


SHORT_RETRIES = """
[sending]
retry_min_seconds = 2
retry_max_seconds = 8
"""


def write_config(folder: Path, base_url: str, seller: DemoCompany, buyer: DemoCompany,
                 offline: tuple[Path, Path] | None = None, language: str = "pl") -> Path:
    """`offline` (the seller's Offline certificate and key, `ksefd demo --outage`) also shortens the retries:
    during the outage the logins, sends and the buyer's inbox cycles fail, and with the usual backoff (60 s,
    doubling) the buyer would ask KSeF again only minutes after it is back; the demo waits for that inbox."""
    path = folder / "ksefd.toml"
    signer = "" if offline is None else (f'offline_certificate = "{offline[0].relative_to(folder)}"\n'
                                         f'offline_private_key = "{offline[1].relative_to(folder)}"\n')
    path.write_text(f"""# Written by `ksefd demo`: the daemon against the embedded KSeF simulator.
[ksef]
environment = "test"
base_url = "{base_url}"
latarnia_problem_interval_seconds = 1

[daemon]
data_dir = "data"
state_db = "state.sqlite3"
settle_seconds = 0.5
rescan_interval_seconds = 2
shutdown_grace_seconds = 10
log_format = "json"
log_level = "warning"
language = "{language}"

[receiving]
cycle_minutes = 1
{"" if offline is None else SHORT_RETRIES}
[[companies]]
name = "{seller.name}"
nip = "{seller.nip}"
send = true
receive = false
token_file = "{seller.token_file.relative_to(folder)}"
{signer}
[[companies]]
name = "{buyer.name}"
nip = "{buyer.nip}"
send = false
receive = true
token_file = "{buyer.token_file.relative_to(folder)}"
""", encoding="utf-8")
    return path
