"""What the daemon writes for people speaks the config's language (issue #14 point 1): Polish by default,
English with `language = "en"`; codes, stages and KSeF's own words stay as they are.

* rejected/NAME.error.json of a local check (message with the values found, and hint) and of a KSeF rejection
  (ksefd's message and hint; KSeF's description kept under ksefStatus);
* a hold, as `ksefd status` shows it, and the held invoice's NAME.state.json; a hold stored under one language
  is shown in the other after `language` changes (the reason is kept as message ids, daemon/words.py);
* NAME.offline.json's label, reason and warning (the QR labels KSeF defines stay "OFFLINE").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd.clock import SystemClock
from ksefd.config import Config
from ksefd.daemon import status
from ksefd.sim.config import SimConfig
from ksefd.store import InvoiceState, Store
from tests.daemon.offline_support import running, wait_for_file
from tests.daemon.support import (
    OTHER,
    READ_ONLY,
    SELLER,
    drain,
    drop,
    invoice,
    load,
    read_json,
    token_file,
    write_config,
)

LANGUAGES = [None, "en"]      # None: the default, Polish


async def _company(sim_factory: Any, http: aiohttp.ClientSession, folder: Path, language: str | None,
                   permissions: list[str] | None = None) -> tuple[Any, Path, Config]:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    token = await token_file(http, sim.base_url, folder, SELLER, permissions)
    return sim, token, _config(folder, sim.base_url, token, language)


def _config(folder: Path, base_url: str, token: Path, language: str | None) -> Config:
    daemon = {"language": language} if language else None
    return load(write_config(folder, base_url, [{"name": "acme", "nip": SELLER, "token_file": str(token)}],
                             daemon=daemon))


async def _status_text(config: Config) -> str:
    async with await Store.open(config.state_db) as store:
        return status.render(await status.gather(store, config, SystemClock()))


@pytest.mark.parametrize("language", LANGUAGES)
async def test_a_local_check_error_names_the_values_in_the_configs_language(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, language: str | None) -> None:
    _, _, config = await _company(sim_factory, http, tmp_path, language)
    drop(config.companies[0].folders.outbox, "obca.xml", invoice("LANG/1", seller=OTHER))
    await drain(config)
    error = read_json(config.companies[0].folders.rejected / "obca.error.json")
    assert error["code"] == "seller-nip" and error["stage"] == "local-check"
    assert error["details"] == {"sellerNip": OTHER, "companyNip": SELLER}
    if language is None:
        assert error["message"] == (f"NIP sprzedawcy (Podmiot1) to {OTHER}, a ten folder outbox należy do firmy o "
                                    f"NIP {SELLER}.")
        assert error["hint"].startswith("Wrzuć fakturę do outbox/ firmy, której NIP jest NIP-em sprzedawcy")
    else:
        assert error["message"] == (f"The seller NIP (Podmiot1) is {OTHER}, but this outbox belongs to the company "
                                    f"with NIP {SELLER}.")
        assert error["hint"].startswith("Drop the invoice into the outbox of the company whose NIP is the seller's")


@pytest.mark.parametrize("language", LANGUAGES)
async def test_a_ksef_rejection_is_told_in_the_configs_language_with_ksefs_own_words_kept(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, language: str | None) -> None:
    _, _, config = await _company(sim_factory, http, tmp_path, language)
    drop(config.companies[0].folders.outbox, "FV-450.xml", invoice("LANG/450", buyer="1234567890"))  # bad checksum
    await drain(config)
    error = read_json(config.companies[0].folders.rejected / "FV-450.error.json")
    assert error["code"] == "ksef-450" and error["stage"] == "ksef" and error["ksefStatus"]["code"] == 450
    described = error["ksefStatus"]["description"]
    assert described and error["details"] == error["ksefStatus"]["details"]
    if language is None:
        assert error["message"] == f"KSeF odrzucił fakturę (kod 450): {described}"
        assert error["hint"] == ("KSeF odrzucił treść faktury (weryfikacja semantyczna). Popraw pola wymienione w "
                                 "details i wrzuć fakturę ponownie.")
    else:
        assert error["message"] == f"KSeF rejected the invoice (code 450): {described}"
        assert error["hint"] == ("KSeF refused the content (semantic check). Correct the fields named in the details "
                                 "and drop it again.")


async def test_a_hold_and_the_held_invoice_in_polish_then_in_english_after_a_language_change(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim, token, config = await _company(sim_factory, http, tmp_path, None, READ_ONLY)
    outbox = config.companies[0].folders.outbox
    drop(outbox, "FV-1.xml", invoice("LANG/HOLD/1"))
    await drain(config)
    state = read_json(outbox / "FV-1.state.json")
    assert state["state"] == InvoiceState.HELD
    assert state["message"] == "wstrzymana: firma wymaga interwencji człowieka (zobacz ksefd status)"
    assert state["hold"].startswith("KSeF odmówił: dane uwierzytelniające nie mają uprawnienia InvoiceWrite")
    polish = await _status_text(config)
    assert ("KSeF odmówił: dane uwierzytelniające nie mają uprawnienia InvoiceWrite (posiadane uprawnienia: "
            "InvoiceRead)") in polish
    assert "Nadaj uprawnienie InvoiceWrite osobie lub tokenowi, który loguje się dla NIP 9999999999" in polish
    assert "ustaw dla niej send = false w konfiguracji" in polish
    assert "credentials lack" not in polish

    # The same stored hold, the config now in English (no new login, no new hold): shown in English.
    english = _config(tmp_path, sim.base_url, token, "en")
    text = await _status_text(english)
    assert "KSeF refused: the credentials lack the permission InvoiceWrite (they hold InvoiceRead)" in text
    assert "Grant InvoiceWrite to the person or token that logs in for NIP 9999999999" in text
    assert "set send = false for it in the config" in text
    [hold_line] = [line for line in text.splitlines() if line.startswith("  ON HOLD since")]
    assert "KSeF refused" in hold_line and "uprawnienia" not in hold_line   # (the invoice's last error: as written)
    async with await Store.open(english.state_db) as store:
        shown = (await status.gather(store, english, SystemClock())).companies[0].on_hold
    assert shown is not None and shown["code"] == "missing-permission"          # the code is the same in both
    assert shown["reason"].startswith("KSeF refused: the credentials lack the permission InvoiceWrite")

    await drain(english)                      # the daemon in English rewrites the state file in English
    state = read_json(outbox / "FV-1.state.json")
    assert state["message"] == "on hold: the company needs a person's attention (see ksefd status)"
    assert state["hold"].startswith("KSeF refused: the credentials lack the permission InvoiceWrite")


@pytest.mark.parametrize("language", LANGUAGES)
async def test_offline_json_speaks_the_configs_language_and_keeps_ksefs_qr_labels(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path, language: str | None) -> None:
    _, _, config = await _company(sim_factory, http, tmp_path, language)
    company = config.companies[0]
    (company.folders.outbox / "offline").mkdir(parents=True, exist_ok=True)
    async with running(config) as task:
        drop(company.folders.outbox / "offline", "R-1.xml", invoice("LANG/REQ/1"))   # offline24 on demand
        await wait_for_file(company.folders.offline / "R-1.offline.json", 20, task)
        issued = read_json(company.folders.offline / "R-1.offline.json")
        await wait_for_file(company.folders.sent / "R-1.upo.xml", 20, task)
    assert issued["mode"] == "offline24" and issued["kod1"]["label"] == "OFFLINE" and issued["kod2"] is None
    [warning] = issued["warnings"]            # no Offline certificate configured: KOD I only
    if language is None:
        assert issued["modeLabel"] == "offline24: tryb offline24 podatnika"
        assert issued["reason"] == "tryb offline24 zlecony przez system ERP (outbox/offline/)"
        assert issued["deadlineRule"].startswith("offline24: do następnego dnia roboczego po dacie wystawienia")
        assert warning.startswith("nie skonfigurowano certyfikatu KSeF typu Offline (offline_certificate)")
    else:
        assert issued["modeLabel"] == "offline24: the taxpayer's offline mode (tryb offline24)"
        assert issued["reason"] == "offline24 requested by the ERP (outbox/offline/)"
        assert issued["deadlineRule"].startswith("offline24: by the next business day after the issue date")
        assert warning.startswith("no Offline KSeF certificate is configured (offline_certificate)")


def test_a_stored_reason_is_put_into_words_in_either_language_and_older_plain_text_is_shown_as_is() -> None:
    from ksefd.daemon.failures import classify
    from ksefd.daemon.words import shown
    from ksefd.ksef import CredentialsError

    failure = classify(CredentialsError("token file /etc/ksefd/acme.token is empty"))
    stored = failure.stored_reason()
    assert failure.message == "the credentials cannot be used: token file /etc/ksefd/acme.token is empty"  # the log
    assert shown(stored, "pl") == "nie można użyć danych uwierzytelniających: token file /etc/ksefd/acme.token is empty"
    assert shown(stored, "en") == failure.message
    assert shown("KSeF refused the login: revoked", "pl") == "KSeF refused the login: revoked"   # an older ksefd's
    assert shown("{not json", "pl") == "{not json"


@pytest.mark.parametrize(("language", "expected"), [
    ("pl", "Faktura jest niezgodna ze schematem FA(3): wiersz {line}: pole P_1 (data wystawienia): wartość "
           "'15.02.2026' ma niewłaściwą postać; wymagane: data w formacie RRRR-MM-DD (np. 2026-02-15), od "
           "2006-01-01 do 2050-01-01."),
    ("en", "The invoice does not match the FA(3) schema: line {line}: field P_1 (issue date / data wystawienia) has "
           "the value '15.02.2026', which is not a date written as YYYY-MM-DD (e.g. 2026-02-15), between "
           "2006-01-01 and 2050-01-01."),
])
def test_a_schema_error_names_the_field_and_the_form_in_the_language_chosen(language: str, expected: str) -> None:
    import datetime as dt
    import re

    from ksefd import i18n
    from ksefd.invoice import InvoiceRejected, check_invoice

    data = invoice("LANG/XSD/1")
    data = re.sub(rb"<P_1>[^<]*</P_1>", b"<P_1>15.02.2026</P_1>", data, count=1)
    line = data[:data.index(b"<P_1>")].count(b"\n") + 1
    with i18n.using(language), pytest.raises(InvoiceRejected) as refused:
        check_invoice(data, file_name="FV.xml", company_nip=SELLER, today=dt.date.today())
    assert refused.value.code == "xsd" and refused.value.details["line"] == line
    assert refused.value.message == expected.format(line=line)
