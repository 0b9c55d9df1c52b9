"""The status page rendered by a real browser (issue #12 point 5): headless Chromium (Debian's `chromium`,
installed by .ci/run) loads the company pages of a running daemon; the rendered DOM must show what is queued,
what is held and why, the last error and today's counts, and must not run any markup taken from a file name.
A screenshot of each page is kept as a test artefact (test-artifacts/, or $KSEFD_TEST_ARTIFACTS)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.daemon.support import OTHER, ROOT, drop, invoice
from tests.service.http_support import running_daemon, scrape, value, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's "
                                                         "chromium package; locally: apt-get install chromium)")
ARTIFACTS = Path(os.environ.get("KSEFD_TEST_ARTIFACTS", ROOT / "test-artifacts"))
HOSTILE = "<img src=x onerror=alert(1)>.xml"     # a file name an ERP could write: must show as text


async def chromium(profile: Path, *args: str) -> str:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


async def test_status_pages_render_in_chromium(sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with running_daemon(sim_factory, http, tmp_path) as daemon:
        drop(daemon.config.company("acme").folders.outbox, "FV-1.xml", invoice("FV/1"))
        drop(daemon.config.company("acme").folders.outbox, HOSTILE, invoice("FV/2", seller=OTHER))
        drop(daemon.config.company("readonly").folders.outbox, "RO-1.xml", invoice("RO/1", seller=OTHER))

        async def settled() -> bool:
            _, now = await scrape(http, daemon.url)
            return (value(now, "ksefd_invoices_accepted_total", company="acme") == 1
                    and value(now, "ksefd_invoices_rejected_total", company="acme") == 1
                    and value(now, "ksefd_outbox_invoices", company="readonly", state="held") == 1)

        await wait_until(settled, "one accepted, one rejected, one held")
        await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
        pages = {"index": "/", "acme": "/company/acme", "readonly": "/company/readonly"}
        dom = {}
        for name, path in pages.items():
            dom[name] = await chromium(tmp_path / f"profile-{name}", "--dump-dom", daemon.url + path)
            shot = ARTIFACTS / f"status-page-{name}.png"
            await chromium(tmp_path / f"shot-{name}", f"--screenshot={shot}", "--window-size=1280,900",
                           daemon.url + path)
            assert (await asyncio.to_thread(shot.stat)).st_size > 5_000
    assert "<h1>stan ksefd</h1>" in dom["index"] and 'href="/company/readonly"' in dom["index"]
    assert "wstrzymana: missing-permission" in dom["index"] and "<span class=\"ok\">działa</span>" in dom["index"]
    readonly = dom["readonly"]
    assert "<b>Wstrzymana</b>" in readonly and "RO-1.xml" in readonly and "<td>wstrzymana</td>" in readonly
    assert "missing-permission" in readonly
    assert "loguje się tokenem KSeF" in readonly and "docs/certificates.md" in readonly   # point 7 (Polish by default)
    acme = dom["acme"]
    assert "<td>1</td>" in acme                           # accepted today
    assert "seller-nip" in acme                           # the last error's code
    # The hostile name is text in a cell, never an element: Chromium's DOM keeps it escaped.
    assert "&lt;img src=x onerror=alert(1)&gt;.xml" in acme and "<img" not in acme
