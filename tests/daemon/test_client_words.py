"""The client's own messages (ksefd.ksef) in the reader's language (issue #14 point 1): a malformed token
file puts the company on hold with a reason that `ksefd run --once` and `ksefd status` show in Polish by
default and in English with `language = "en"`, while the exception's text (the JSON log) stays English."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from ksefd.daemon.failures import classify
from ksefd.daemon.words import error_text, render
from ksefd.ksef import CredentialsError, KsefToken, key_files
from ksefd.sim.config import SimConfig
from tests.daemon.support import ROOT, SELLER, drop, invoice, load, write_config

ENGLISH_SENTENCE = "copy the whole token as KSeF showed it"


async def _ksefd(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ksefd", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def test_a_client_error_keeps_english_for_the_log_and_its_words_for_people() -> None:
    with pytest.raises(CredentialsError) as caught:
        KsefToken.parse("20251010-EC-0000000000-0000000000-00")      # no '|' at all
    exc = caught.value
    assert str(exc) == exc.message and ENGLISH_SENTENCE in str(exc)   # the JSON log stays English
    assert "token KSeF ma błędną postać: token składa się z 1 części" in error_text(exc, "pl")
    assert ENGLISH_SENTENCE not in error_text(exc, "pl")
    assert error_text(exc, "en") == str(exc)
    failure = classify(exc)
    assert ENGLISH_SENTENCE in failure.message                       # the log's English
    assert ENGLISH_SENTENCE not in failure.text("pl")
    assert render(failure.words, "en") == failure.message


def test_a_password_file_problem_is_said_in_polish(tmp_path: Path) -> None:
    empty = tmp_path / "key.pass"
    empty.write_bytes(b"\n")
    with pytest.raises(CredentialsError) as caught:
        key_files.read_password(empty)
    assert "is empty" in str(caught.value)
    assert f"plik hasła {empty} jest pusty" in error_text(caught.value, "pl")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("language", ["pl", "en"])
async def test_a_malformed_token_file_is_shown_in_the_config_language(
        sim_factory: Any, tmp_path: Path, language: str) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    token = tmp_path / "acme.token"
    token.write_text("20251010-EC-0000000000-0000000000-00\n", encoding="utf-8")
    path = write_config(tmp_path, sim.base_url, [{"name": "acme", "nip": SELLER, "token_file": str(token)}],
                        daemon={"language": language})
    drop(load(path).companies[0].folders.outbox, "FV-1.xml", invoice("WORDS/1"))
    code, _, err = await _ksefd("run", "--once", "-c", str(path))
    assert code == 3, err
    code, out, status_err = await _ksefd("status", "-c", str(path))
    assert code == 0, status_err
    if language == "pl":
        assert "token KSeF ma błędną postać" in err and "skopiuj cały token" in err
        assert ENGLISH_SENTENCE not in err.split("ksefd run --once")[-1]     # the log lines above stay English
        assert "token KSeF ma błędną postać" in out and ENGLISH_SENTENCE not in out
    else:
        assert "the KSeF token is malformed" in err and ENGLISH_SENTENCE in err
        assert "the KSeF token is malformed" in out and "błędną" not in out


def test_a_refused_login_is_said_in_polish_with_ksefs_own_words_kept() -> None:
    from ksefd.ksef import AuthenticationFailed, environment
    from ksefd.ksef.auth_messages import explain
    words = explain(450, "Uwierzytelnianie zakończone niepowodzeniem", ["Nieprawidłowy token"],
                    context="nip-5265877635", identity="token", environment=environment("prod"))
    exc = AuthenticationFailed(words, code=450, description="", details=[], context="nip-5265877635")
    assert str(exc).startswith("KSeF did not accept the token (wrong token) for PROD")
    polish = error_text(exc, "pl")
    assert polish.startswith("KSeF nie przyjął tokenu (błędny token) dla PROD")
    assert "tokeny z DEMO i TEST nie działają na PROD" in polish
    assert polish.endswith("[KSeF 450: Uwierzytelnianie zakończone niepowodzeniem - Nieprawidłowy token]")
    assert classify(exc).text("pl").startswith("KSeF odmówił logowania: KSeF nie przyjął tokenu")
    assert "Check that it was copied whole" not in classify(exc).text("pl")


def test_a_stored_client_error_is_shown_later_in_the_language_of_that_moment(tmp_path: Path) -> None:
    from ksefd.daemon.words import shown, stored_error
    with pytest.raises(CredentialsError) as caught:
        key_files.read_password(tmp_path / "missing.pass")
    kept = stored_error(caught.value)                  # what a certificate renewal keeps as its last error
    assert shown(kept, "pl").startswith(f"nie można odczytać pliku hasła {tmp_path / 'missing.pass'}")
    assert shown(kept, "en") == str(caught.value)
    assert stored_error(ValueError("x" * 600)) == "x" * 500                # plain text as before


async def test_a_refused_connection_is_said_in_polish_and_logged_in_english() -> None:
    from ksefd.ksef import TransportError
    from ksefd.ksef.transport import NO_RETRY, Transport
    transport = Transport("http://127.0.0.1:9/v2", retry=NO_RETRY, timeout=5)     # nothing listens on port 9
    try:
        with pytest.raises(TransportError) as caught:
            await transport.request("GET", "/security/public-key-certificates", expect=(200,))
    finally:
        await transport.close()
    failure = classify(caught.value)
    assert failure.verdict == "transient" and failure.message.startswith("cannot connect for GET")
    assert failure.text("pl").startswith("nie można połączyć się dla GET /security/public-key-certificates")
    assert failure.text("en") == failure.message


def test_a_403_reason_is_said_in_polish_with_ksefs_detail_kept() -> None:
    from ksefd.ksef import Forbidden
    exc = Forbidden("Brak dostępu", "ip-not-allowed", {"clientIp": "203.0.113.7"}, method="POST", url="/x")
    assert str(exc) == ("KSeF answered POST /x with HTTP 403: the authorisation policy does not allow calls from "
                        "IP 203.0.113.7; KSeF: Brak dostępu")
    failure = classify(exc)
    assert failure.verdict == "hold"
    assert failure.text("pl") == ("KSeF odmówił wykonania żądania (403): KSeF odpowiedział na POST /x kodem HTTP 403: "
                                  "polityka "
                                  "autoryzacji nie pozwala na wywołania z adresu IP 203.0.113.7; KSeF: Brak dostępu")
