"""`ksefd credentials set` (issue #12 point 6): a real `ksefd` process reads the token on stdin, cleans it, logs in
to the simulator with it and stores it: a 0600 file in a 0700 folder, or a systemd-creds encrypted credential.
A replaced token file is picked up by a running daemon without a restart. The token never shows in the output."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ksefd import i18n
from ksefd.daemon.credential_store import read_secret_text
from ksefd.daemon.dpapi import DpapiUnavailable, protect
from ksefd.daemon.service import serve
from ksefd.sim.config import SimConfig
from tests.daemon.support import OTHER, ROOT, SELLER, drop, invoice, load, write_config
from tests.service.http_support import wait_until
from tests.support.ksef_auth import create_ksef_token


async def ksefd(*args: str, stdin: str = "") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ksefd", *args, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def setup(sim_factory: Any, http: aiohttp.ClientSession, folder: Path, token_file: str,
                language: str = "en") -> tuple[Any, Path]:
    """The config of one company; in English (these tests read English), Polish in test_polish_by_default."""
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    config = write_config(folder, sim.base_url, [{"name": "acme", "nip": SELLER, "token_file": token_file}],
                          daemon={"language": language})
    return sim, config


async def test_a_pasted_token_is_checked_with_ksef_and_stored_0600(sim_factory: Any, http: aiohttp.ClientSession,
                                                                  tmp_path: Path) -> None:
    sim, config = await setup(sim_factory, http, tmp_path, "secrets/acme.token")   # does not exist yet
    token = await create_ksef_token(http, sim.base_url, SELLER, ["InvoiceWrite", "InvoiceRead"])
    # as pasted from a PDF: spaces, a line break, a zero-width space
    pasted = f"  {token[:20]}\u200b{token[20:40]}\n{token[40:]}  \n"
    code, out, err = await ksefd("credentials", "set", "-c", str(config), "acme", "--store", "file", stdin=pasted)
    assert code == 0, err
    stored = tmp_path / "secrets" / "acme.token"
    assert stored.read_text(encoding="utf-8") == token + "\n"
    assert mode(stored) == 0o600 and mode(stored.parent) == 0o700
    assert "KSeF (TEST) accepted the token" in out and "no restart needed" in out
    assert token not in out + err and token.split("|")[2] not in out + err
    load(config)          # the config is complete now


async def test_a_bad_token_is_refused_before_anything_is_stored(sim_factory: Any, http: aiohttp.ClientSession,
                                                               tmp_path: Path) -> None:
    sim, config = await setup(sim_factory, http, tmp_path, "secrets/acme.token")
    code, _, err = await ksefd("credentials", "set", "-c", str(config), "acme", "--store", "file", stdin="hello\n")
    assert code == 1 and "the KSeF token is malformed" in err
    other = await create_ksef_token(http, sim.base_url, OTHER, ["InvoiceRead"])
    code, _, err = await ksefd("credentials", "set", "-c", str(config), "acme", "--store", "file", stdin=other)
    assert code == 1 and f"issued for nip-{OTHER}" in err and "NIP 9999999999" in err
    good = await create_ksef_token(http, sim.base_url, SELLER, ["InvoiceRead"])
    forged = good[: good.rindex("|") + 1] + "0" * 64              # well formed, but not a token KSeF issued
    code, _, err = await ksefd("credentials", "set", "-c", str(config), "acme", "--store", "file", stdin=forged)
    assert code == 1 and "KSeF refused the token" in err and forged.split("|")[2] not in err
    assert not (tmp_path / "secrets").exists()
    code, _, err = await ksefd("credentials", "set", "-c", str(config), "nobody", stdin=good)
    assert code == 1 and "no company 'nobody'" in err


@pytest.mark.skipif(shutil.which("systemd-creds") is None or os.geteuid() != 0,
                    reason="systemd-creds encrypt needs systemd and root (the host key)")
async def test_systemd_store_encrypts_and_prints_the_unit_line(sim_factory: Any, http: aiohttp.ClientSession,
                                                               tmp_path: Path) -> None:
    sim, config = await setup(sim_factory, http, tmp_path, "acme.token")          # a bare name: systemd's
    token = await create_ksef_token(http, sim.base_url, SELLER, ["InvoiceWrite", "InvoiceRead"])
    code, out, err = await ksefd("credentials", "set", "-c", str(config), "acme", "--store", "systemd", stdin=token)
    assert code == 0, err
    cred = tmp_path / "credentials" / "acme.token.cred"
    assert mode(cred) == 0o600 and mode(cred.parent) == 0o700
    assert token.encode() not in cred.read_bytes()
    assert f"LoadCredentialEncrypted=acme.token:{cred}" in out and token not in out
    decrypted = await asyncio.to_thread(subprocess.run, ["systemd-creds", "decrypt", "--name=acme.token", str(cred),
                                                         "-"], capture_output=True, check=True, timeout=30)
    plain = decrypted.stdout.decode()
    assert plain == token
    # What systemd hands the service: the decrypted copy in $CREDENTIALS_DIRECTORY, found by its bare name.
    directory = tmp_path / "run-credentials"
    directory.mkdir()
    (directory / "acme.token").write_text(plain, encoding="utf-8")
    assert _loads_with(config, directory).company("acme").credentials.token_file == directory / "acme.token"


def _loads_with(config: Path, directory: Path) -> Any:
    from ksefd.config import load_config
    return load_config(config, environ={"CREDENTIALS_DIRECTORY": str(directory)})


async def test_a_replaced_token_file_resumes_the_company_without_a_restart(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim = await sim_factory(config=SimConfig(limits_profile="off"))
    token_path = tmp_path / "secrets" / "acme.token"
    token_path.parent.mkdir(mode=0o700)
    token_path.write_text(await create_ksef_token(http, sim.base_url, SELLER, ["InvoiceRead"]), encoding="utf-8")
    config = load(write_config(tmp_path, sim.base_url, [{"name": "acme", "nip": SELLER, "token_file": str(token_path)}],
                               sending={"hold_retry_seconds": 0.5}))
    drop(config.company("acme").folders.outbox, "FV-1.xml", invoice("FV/1"))
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop))
    try:
        from ksefd.store import InvoiceState, Store

        async def state() -> set[InvoiceState]:
            async with await Store.open(config.state_db) as store:
                return {r.state for r in await store.invoices.in_state("acme", *InvoiceState)}

        async def held() -> bool:
            return await state() == {InvoiceState.HELD}

        await wait_until(held, "the invoice held: the token lacks InvoiceWrite")
        good = await create_ksef_token(http, sim.base_url, SELLER, ["InvoiceWrite", "InvoiceRead"])
        code, _, err = await ksefd("credentials", "set", "-c", str(config.source), "acme", "--store", "file",
                                   stdin=good)
        assert code == 0, err

        async def sent() -> bool:
            return await state() <= {InvoiceState.DONE, InvoiceState.UPO_SAVED, InvoiceState.ACCEPTED} and bool(
                await state())

        await wait_until(sent, "the invoice accepted after the token file was replaced (no restart)")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_polish_by_default(sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    sim, config = await setup(sim_factory, http, tmp_path, "secrets/acme.token", language="pl")
    other = await create_ksef_token(http, sim.base_url, OTHER, ["InvoiceRead"])
    code, _, err = await ksefd("credentials", "set", "-c", str(config), "acme", "--store", "file", stdin=other)
    assert code == 1 and err == (f"ksefd credentials: ten token wydano dla nip-{OTHER}, a firma acme ma NIP {SELLER}: "
                                 f"wygeneruj token w kontekście NIP {SELLER}\n")
    code, _, err = await ksefd("credentials", "set", "-c", str(config), "nobody", stdin=other)
    assert code == 1 and f"w pliku {config} nie ma firmy 'nobody' (firmy: acme)" in err
    token = await create_ksef_token(http, sim.base_url, SELLER, ["InvoiceWrite", "InvoiceRead"])
    code, out, err = await ksefd("credentials", "set", "-c", str(config), "acme", "--store", "file", stdin=token)
    assert code == 0, err
    stored = tmp_path / "secrets" / "acme.token"
    assert out.splitlines() == [
        f"KSeF (TEST) przyjął token {token.split('|')[0]} dla NIP {SELLER}",
        f"zapisano (file): {stored}",
        f"  zapisano jako zwykły plik, który może czytać tylko jego właściciel (0600): {stored}",
        "  demon odczyta go przy następnym logowaniu firmy: restart niepotrzebny"]


def test_dpapi_is_windows_only_and_plain_files_read_as_text(tmp_path: Path) -> None:
    if sys.platform != "win32":
        with i18n.using("en"), pytest.raises(DpapiUnavailable, match="only on Windows"):
            protect(b"x")
        with i18n.using("pl"), pytest.raises(DpapiUnavailable, match="tylko w Windows; w Linuksie użyj"):
            protect(b"x")
    plain = tmp_path / "acme.token"
    plain.write_text("abc\n", encoding="utf-8")
    assert read_secret_text(plain) == "abc\n"


@pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal is a POSIX thing")
def test_on_a_terminal_the_token_is_asked_for_without_echo(tmp_path: Path) -> None:
    import pty
    import time
    import warnings

    config = write_config(tmp_path, "http://127.0.0.1:9/v2", [{"name": "acme", "nip": SELLER,
                                                                "token_file": "secrets/acme.token"}])
    token = "20251206-EC-0123456789-ABCDEF0123-45|nip-9999999999|" + "ab" * 32
    with warnings.catch_warnings():      # "multi-threaded fork": the child only execs, which is safe
        warnings.simplefilter("ignore", DeprecationWarning)
        pid, master = pty.fork()
    if pid == 0:          # the child: a terminal is its stdin, as for a person at a console
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "ksefd", "credentials", "set", "-c", str(config), "acme",
                                  "--store", "file", "--no-verify"])
    seen = b""
    deadline = time.monotonic() + 30
    while b"niewidoczny" not in seen and time.monotonic() < deadline:        # Polish, the default
        seen += os.read(master, 1024)
    os.write(master, token.encode() + b"\n")
    while time.monotonic() < deadline:
        try:
            chunk = os.read(master, 1024)
        except OSError:          # the child ended and closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    _, status = os.waitpid(pid, 0)
    os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0, seen.decode(errors="replace")
    assert "Token KSeF dla acme (niewidoczny; wklej i naciśnij Enter)".encode() in seen
    assert token.encode() not in seen and b"abab" not in seen            # never echoed, never printed
    assert (tmp_path / "secrets" / "acme.token").read_text(encoding="utf-8") == token + "\n"
