"""Helpers for the offline tests: Offline-type certificates on disk, outage windows in the simulator, a daemon
running in-process until told to stop, and waiting for files."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

from ksefd.config import Config
from ksefd.daemon.service import serve

FAST_LATARNIA = {"latarnia_interval_seconds": 60, "latarnia_problem_interval_seconds": 0.5}


def offline_certificate(folder: Path, name: str, nip: str, kind: str = "rsa") -> tuple[Path, Path]:
    """A self-signed certificate of type Offline (keyUsage Non-Repudiation only, PROTOCOL.md §8.6) and its key."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1()))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} offline"),
                         x509.NameAttribute(NameOID.SERIAL_NUMBER, f"TINPL-{nip}")])
    now = dt.datetime.now(dt.UTC)
    usage = x509.KeyUsage(digital_signature=False, content_commitment=True, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(0x01F20A5D352AE590 + len(name)).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=730)).add_extension(usage, critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}-offline.crt", folder / f"{name}-offline.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def verify_kod2(link: str, cert_path: Path) -> str:
    """Check a KOD II link against the certificate's public key; returns the signed text (PROTOCOL.md §8.6)."""
    assert link.startswith("https://")
    signed, _, signature_text = link.removeprefix("https://").rpartition("/")
    signature = base64.urlsafe_b64decode(signature_text + "=" * (-len(signature_text) % 4))
    public = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_key()
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(signature, signed.encode(), padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                      hashes.SHA256())
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey) and len(signature) == 64    # P1363 r||s
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        public.verify(encode_dss_signature(r, s), signed.encode(), ec.ECDSA(hashes.SHA256()))
    return signed


async def set_outage(http: aiohttp.ClientSession, sim: Any, seconds_from_now: float, duration: float,
                     kind: str = "FAILURE") -> tuple[dt.datetime, dt.datetime]:
    start = sim.clock.now() if sim.clock is not None else dt.datetime.now(dt.UTC)
    start += dt.timedelta(seconds=seconds_from_now)
    end = start + dt.timedelta(seconds=duration)
    async with http.post(f"{sim.root_url}/sim/faults", json={"outages": [
            {"from": start.isoformat(), "to": end.isoformat(), "kind": kind}]}) as response:
        assert response.status == 200, await response.text()
    return start, end


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[asyncio.Task[None]]:
    """The daemon in-process (serve) until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def wait_for_file(path: Path, limit: float, task: asyncio.Task[None] | None = None) -> float:
    """Seconds it took `path` to appear (fails after `limit`)."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        if await asyncio.to_thread(path.exists):
            return time.monotonic() - began
        if task is not None and task.done():
            task.result()
            raise AssertionError(f"the daemon stopped before {path} appeared")
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {limit} s")
