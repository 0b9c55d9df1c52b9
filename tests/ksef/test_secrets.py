"""No KSeF token, access/refresh/authentication token, private key, password or AES key in any log line, error
message or repr the client produces (PREAMBLE "never log a token"; issue #4 item 8: messages for a person)."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from ksefd.ksef.auth import ContextIdentifier
from ksefd.ksef.batch import BatchOptions
from ksefd.ksef.batch_archive import BatchInvoice, prepare_batch_async
from ksefd.ksef.client import KsefClient
from ksefd.ksef.credentials import KsefToken, load_certificate
from ksefd.ksef.errors import KsefError
from ksefd.samples import make_invoice, sample_bytes
from ksefd.sim.clock import ManualClock
from ksefd.sim.config import SimConfig
from tests.ksef.conftest import SELLER_NIP
from tests.support.ksef_auth import create_ksef_token, self_signed_certificate

PASSWORD = "Haslo-Do-Klucza-42"


async def _failure(call: Any, errors: list[str]) -> None:
    """Run a call that must fail with a KsefError; keep its message."""
    with pytest.raises(KsefError) as caught:
        await call
    errors.append(str(caught.value))


async def test_secrets_never_reach_logs_messages_or_reprs(
        sim_factory: Any, http: aiohttp.ClientSession, ksef_clients: Callable[..., KsefClient],
        debug_logs: list[MutableMapping[str, Any]], tmp_path: Path) -> None:
    clock = ManualClock(dt.datetime.now(dt.UTC))
    sim = await sim_factory(config=SimConfig(limits_profile="off"), clock=clock)
    token = await create_ksef_token(http, sim.base_url, SELLER_NIP, ["InvoiceWrite", "InvoiceRead"])
    read_only = await create_ksef_token(http, sim.base_url, SELLER_NIP, ["InvoiceRead"])
    client = ksef_clients(sim.base_url, clock=clock)
    ctx = client.context(ContextIdentifier.nip(SELLER_NIP), KsefToken.parse(token))
    errors: list[str] = []

    # The normal path: token authentication, a session, a send, a refresh, a batch with its own AES key.
    invoice = make_invoice(sample_bytes("FA_3_Przyklad_1.xml"), number="FV/SECRET/1")
    sent = await ctx.online().send(invoice)
    session = ctx.online().current
    assert session is not None and ctx.auth.tokens is not None
    first_tokens = ctx.auth.tokens
    clock.advance((first_tokens.access_valid_until - clock.now()).total_seconds() - 30)
    await ctx.sessions.invoice(sent.session_reference_number, sent.reference_number)
    assert ctx.auth.tokens is not None and ctx.auth.tokens.access_token != first_tokens.access_token
    prepared = await prepare_batch_async([BatchInvoice("a.xml", make_invoice(
        sample_bytes("FA_3_Przyklad_1.xml"), number="FV/SECRET/2"))], tmp_path / "batch")
    await ctx.batch(options=BatchOptions(poll_first=0.02, poll_max=0.1)).send(prepared)
    await ctx.close()

    # Failures: a wrong token (450), a token without the permission (403), a mangled token, a wrong password.
    fake = f"20251010-EC-1DCE3E3000-12ECB5B36E-45|nip-{SELLER_NIP}|" + "cd" * 32
    await _failure(client.context(ContextIdentifier.nip(SELLER_NIP), KsefToken.parse(fake)).authenticate(), errors)
    await _failure(client.context(ContextIdentifier.nip(SELLER_NIP), read_only).online().open(), errors)
    reference, context, secret = token.split("|")
    with pytest.raises(KsefError) as swapped:
        KsefToken.parse(f"{secret}|{context}|{reference}")
    errors.append(str(swapped.value))
    cert, key = self_signed_certificate(nip=SELLER_NIP)
    (tmp_path / "jan.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "jan.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.BestAvailableEncryption(PASSWORD.encode())))
    with pytest.raises(KsefError) as wrong_password:
        load_certificate(tmp_path / "jan.crt", tmp_path / "jan.key", PASSWORD + "x")
    errors.append(str(wrong_password.value))
    creds = load_certificate(tmp_path / "jan.crt", tmp_path / "jan.key", PASSWORD)

    assert len(errors) == 4 and any(e["event"] == "ksef.response" for e in debug_logs)   # debug lines included
    shown = "\n".join([repr(list(debug_logs)), *errors, repr(ctx.auth.tokens), repr(KsefToken.parse(token)),
                       repr(session), repr(prepared), repr(creds), str(KsefToken.parse(token))])
    assert ctx.auth.tokens is not None
    secrets = {
        "KSeF token secret": secret, "read-only token secret": read_only.split("|")[2], "fake token secret": "cd" * 32,
        "access token": ctx.auth.tokens.access_token, "first access token": first_tokens.access_token,
        "refresh token": ctx.auth.tokens.refresh_token, "password": PASSWORD,
        "session AES key": base64.b64encode(session.key.key).decode(), "session AES key (hex)": session.key.key.hex(),
        "batch AES key": base64.b64encode(prepared.key.key).decode(), "batch AES key (hex)": prepared.key.key.hex(),
    }
    for name, value in secrets.items():
        assert value not in shown, f"the {name} shows in a log line, an error message or a repr"
        assert value[:16] not in shown, f"a piece of the {name} shows in a log line, an error message or a repr"
    assert "eyJ" not in shown                   # no JWT at all: access, refresh or authentication token
