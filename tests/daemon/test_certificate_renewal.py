"""Automatic renewal of KSeF certificates (issue #13 items 4 and 5) against the simulator, with a shortened
validity (PUT /testdata/certificates/{serial}) and an injected clock: a successor enrolled once and switched once,
also through simulated kill -9s between the steps (the step machine abandoned at a chosen point, then run again
from the database); one person's certificate used by two companies renewed once; opt-out honoured."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from ksefd import i18n
from ksefd.config import Company, Config, load_config
from ksefd.daemon.certificate_renewal import CertificateRenewer, describe, token_companies
from ksefd.ksef import key_files, qr
from ksefd.ksef.auth import AuthOptions, ContextIdentifier
from ksefd.ksef.certificates import CertificateManager
from ksefd.ksef.client import KsefClient
from ksefd.ksef.credentials import CertificateCredentials, load_certificate
from ksefd.ksef.qr import certificate_serial_hex
from ksefd.sim.clock import ManualClock
from ksefd.sim.config import SimConfig
from ksefd.store import Store
from tests.support.ksef_auth import self_signed_certificate

NIP = "5265877635"          # the person's NIP (TINPL) and the first company
OTHER_NIP = "7762811692"    # a second company the same person works for
FAST = AuthOptions(poll_first=0.01, poll_max=0.05, poll_budget=10)


class Crash(BaseException):
    """kill -9 at a chosen point: nothing after it runs; what was committed stays."""


class World:
    def __init__(self, sim: Any, clock: ManualClock, tmp: Path) -> None:
        self.sim, self.clock, self.tmp = sim, clock, tmp
        self.clients: list[KsefClient] = []

    def client(self) -> KsefClient:
        client = KsefClient("test", base_url=self.sim.base_url, clock=self.clock, auth_options=FAST)
        self.clients.append(client)
        return client

    def manager(self, credentials: CertificateCredentials, nip: str = NIP) -> CertificateManager:
        return self.client().context(ContextIdentifier.nip(nip), credentials).certificates()

    def files(self) -> CertificateCredentials:
        return load_certificate(self.tmp / "jan.crt", self.tmp / "jan.key", (self.tmp / "jan.pass").read_bytes())

    async def renew(self, config: Config, crash_at: str | None = None, **options: Any) -> Any:
        """One run of the renewer on a freshly opened store (as a restarted daemon would)."""
        def checkpoint(point: str) -> None:
            if point == crash_at:
                raise Crash(point)
        cache: dict[str, KsefClient] = {}

        def client_for(company: Company) -> KsefClient:
            return cache.setdefault("c", self.client())
        store = await Store.open(self.tmp / "state.sqlite3", self.clock)
        try:
            return await CertificateRenewer(config, store, self.clock, client_for, checkpoint=checkpoint,
                                            **options).run_once()
        finally:
            await store.close()

    async def rows(self) -> Any:
        async with await Store.open(self.tmp / "state.sqlite3", self.clock) as store:
            return await store.certificates.all()

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


@pytest.fixture
async def world(sim_factory: Any, manual_clock: ManualClock, tmp_path: Path, http: aiohttp.ClientSession) -> Any:
    sim = await sim_factory(config=SimConfig(limits_profile="off"), clock=manual_clock)
    found = World(sim, manual_clock, tmp_path)
    # The person's KSeF Authentication certificate, enrolled once with a qualified one (a self-signed stand-in).
    cert, key = self_signed_certificate(nip=NIP, common_name="Jan Kowalski", valid_days=3000,
                                        valid_from=manual_clock.now() - dt.timedelta(hours=1))
    issued = await found.manager(CertificateCredentials(cert, key)).enroll("ksefd Jan", "Authentication")
    password = key_files.ensure_password_file(tmp_path / "jan.pass")
    key_files.write_key(tmp_path / "jan.key", issued.private_key, password)
    key_files.write_certificate(tmp_path / "jan.crt", issued.certificate)
    async with http.post(f"{sim.base_url}/testdata/permissions", json={
            "contextIdentifier": {"type": "Nip", "value": OTHER_NIP},
            "authorizedIdentifier": {"type": "Nip", "value": NIP},
            "permissions": [{"permissionType": "InvoiceWrite", "description": "biuro rachunkowe"}]}) as resp:
        assert resp.status == 200
    yield found
    await found.close()


def write_config(world: World, *, beta_renewal: bool = True, acme_renewal: bool = True) -> Config:
    path = world.tmp / "ksefd.toml"
    companies = ""
    for name, nip, renewal in (("acme", NIP, acme_renewal), ("beta", OTHER_NIP, beta_renewal)):
        companies += f"""
[[companies]]
name = "{name}"
nip = "{nip}"
certificate = "jan.crt"
private_key = "jan.key"
private_key_password_file = "jan.pass"
certificate_renewal = {"true" if renewal else "false"}
"""
    path.write_text(f'[ksef]\nbase_url = "{world.sim.base_url}"\n\n[daemon]\ndata_dir = "data"\n{companies}')
    return load_config(path)


async def shorten(world: World, days: int) -> str:
    creds = world.files()
    serial = certificate_serial_hex(creds.certificate)
    await world.manager(creds).shorten_validity(serial, world.clock.now() + dt.timedelta(days=days))
    return serial


async def ksef_certificates(world: World) -> list[Any]:
    return await world.manager(world.files()).query()


async def assert_switched_once(world: World, old_serial: str) -> None:
    rows = await world.rows()
    assert len(rows) == 1 and rows[0].state == "switched", rows
    creds = world.files()                                   # the configured files: the successor, key matching
    assert certificate_serial_hex(creds.certificate) == rows[0].serial != old_serial
    assert (world.tmp / f"jan.{old_serial}.crt").is_file() and (world.tmp / f"jan.{old_serial}.key").is_file()
    assert not (world.tmp / "jan.next.crt").exists() and not (world.tmp / "jan.next.key").exists()
    assert b"ENCRYPTED" in (world.tmp / "jan.key").read_bytes()
    listed = await ksef_certificates(world)
    assert sorted(c.certificate_serial_number for c in listed) == sorted([old_serial, rows[0].serial])
    assert {c.status for c in listed} == {"Active"}          # the old one is kept until it expires
    for nip in (NIP, OTHER_NIP):                             # both companies log in with the successor
        await world.client().context(ContextIdentifier.nip(nip), creds).authenticate()


async def test_due_certificate_of_two_companies_is_renewed_once(world: World) -> None:
    config = write_config(world)
    assert await world.renew(config) == []                   # two years left: nothing to do
    old_serial = await shorten(world, 30)
    await world.renew(config)
    await assert_switched_once(world, old_serial)
    await world.renew(config)                                # the successor is not due: no new enrollment
    assert len(await ksef_certificates(world)) == 2
    (row,) = await world.rows()
    with i18n.using("en"):
        line = describe(row, world.clock.now())
    assert line.startswith("Authentication certificate of acme, beta: renewed, now ") and old_serial in line
    with i18n.using("pl"):         # `ksefd status` in the config's language, dates as in Poland
        line = describe(row, world.clock.now())
    assert line.startswith("Certyfikat KSeF (Uwierzytelnianie; firmy: acme, beta): odnowiony, teraz ")
    assert old_serial in line and re.search(r"zachowany, ważny do \d\d\.\d\d\.\d{4}\)$", line)
    assert token_companies(config) == []


CRASHES = [("key_written", None), ("submitted", None), ("certificate_written", None), ("switch_half", None),
           ("key_written", "submitted"), ("submitted", "switch_half"), ("certificate_written", "switch_half")]


@pytest.mark.parametrize(("first", "second"), CRASHES)
async def test_kill_9_between_steps_neither_loses_the_key_nor_enrolls_twice(world: World, first: str,
                                                                          second: str | None) -> None:
    config = write_config(world)
    old_serial = await shorten(world, 20)
    for point in (first, second):
        if point is None:
            continue
        with pytest.raises(Crash):
            await world.renew(config, crash_at=point)
    await world.renew(config)
    await assert_switched_once(world, old_serial)


async def test_successor_valid_later_is_switched_once_valid(world: World) -> None:
    config = write_config(world)
    old_serial = await shorten(world, 30)
    rows = await world.renew(config, overlap=dt.timedelta(days=10))      # validFrom = old validTo - 10 days
    assert [r.state for r in rows] == ["saved"]
    assert certificate_serial_hex(world.files().certificate) == old_serial     # still the old one
    world.clock.advance(19 * 86400)
    assert [r.state for r in await world.renew(config)] == ["saved"]
    world.clock.advance(2 * 86400)
    await world.renew(config)
    await assert_switched_once(world, old_serial)


async def test_opt_out_and_qualified_certificates_are_left_alone(world: World) -> None:
    await shorten(world, 30)
    config = write_config(world, acme_renewal=False, beta_renewal=False)
    assert await world.renew(config) == [] and await world.rows() == []
    # A certificate KSeF did not issue (a qualified one) is not renewed, whatever its expiry.
    cert, key = self_signed_certificate(nip=NIP, valid_days=10, valid_from=world.clock.now() - dt.timedelta(days=1))
    (world.tmp / "jan.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_files.write_key(world.tmp / "jan.key", key, (world.tmp / "jan.pass").read_bytes().strip())
    assert await world.renew(write_config(world)) == [] and await world.rows() == []
    assert len(await ksef_certificates(world)) == 1


async def test_refused_enrollment_is_recorded_and_retried_with_a_fresh_key(world: World,
                                                                           http: aiohttp.ClientSession) -> None:
    config = write_config(world)
    old_serial = await shorten(world, 30)
    async with http.post(f"{world.sim.root_url}/sim/certificates/outcomes", json={"next": [550]}):
        pass
    rows = await world.renew(config)
    assert rows[0].state == "planned" and "550" in (rows[0].last_error or "")
    with i18n.using("en"):
        assert "renewal planned; last error: KSeF refused" in describe(rows[0], world.clock.now())
        assert "next try" in describe(rows[0], world.clock.now())
    with i18n.using("pl"):
        assert "odnowienie, etap planned; ostatni błąd: " in describe(rows[0], world.clock.now())
    assert not (world.tmp / "jan.next.key").exists()
    assert await world.renew(config) == [rows[0]]           # waits for next_attempt_at
    world.clock.advance(3601)
    await world.renew(config)
    await assert_switched_once(world, old_serial)



async def test_offline_certificate_is_renewed_and_signs_kod_ii(world: World) -> None:
    auth = world.files()
    offline = await world.manager(auth).enroll("ksefd Jan offline", "Offline")
    password = (world.tmp / "jan.pass").read_bytes().strip()
    key_files.write_key(world.tmp / "jan-offline.key", offline.private_key, password)
    key_files.write_certificate(world.tmp / "jan-offline.crt", offline.certificate)
    path = world.tmp / "ksefd.toml"
    write_config(world)
    path.write_text(path.read_text().replace('certificate_renewal = true\n', 'certificate_renewal = true\n'
                                             'offline_certificate = "jan-offline.crt"\n'
                                             'offline_private_key = "jan-offline.key"\n'
                                             'offline_private_key_password_file = "jan.pass"\n', 1))
    config = load_config(path)
    await world.manager(auth).shorten_validity(offline.serial_number, world.clock.now() + dt.timedelta(days=10))
    rows = await world.renew(config)
    assert [(r.certificate_type, r.state) for r in rows] == [("Offline", "switched")]
    renewed = load_certificate(world.tmp / "jan-offline.crt", world.tmp / "jan-offline.key", password)
    assert certificate_serial_hex(renewed.certificate) == rows[0].serial != offline.serial_number
    link = qr.certificate_link("test", "Nip", NIP, NIP, renewed.certificate, renewed.private_key,
                               qr.invoice_hash_of(b"<Faktura/>"))
    assert f"/{rows[0].serial}/" in link
    assert certificate_serial_hex(world.files().certificate) == certificate_serial_hex(auth.certificate)
