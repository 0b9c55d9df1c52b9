"""ksefd.daemon.notify against a unix datagram socket the test owns (what systemd listens on)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksefd.daemon import notify


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def test_ready_status_watchdog_stopping_reach_the_socket(listener: socket.socket) -> None:
    assert notify.ready()
    assert received(listener) == "READY=1"
    assert notify.status("3 companies, 12 queued\n1 on hold")
    assert received(listener) == "STATUS=3 companies, 12 queued 1 on hold"
    assert notify.watchdog()
    assert received(listener) == "WATCHDOG=1"
    assert notify.stopping()
    assert received(listener) == "STOPPING=1"


def test_several_fields_go_in_one_datagram(listener: socket.socket) -> None:
    assert notify.notify("READY=1", "STATUS=started")
    assert received(listener) == "READY=1\nSTATUS=started"


def test_abstract_socket_name_with_at_sign(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"ksefd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.ready()
        assert received(sock) == "READY=1"


def test_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False
    assert notify.watchdog() is False
    assert notify.ready(environ={"NOTIFY_SOCKET": "relative/name"}) is False


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path) -> None:
    assert notify.ready(environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert notify.watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert notify.watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert notify.watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert notify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert notify.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert notify.watchdog_interval({}) is None


async def test_keepalive_pings_the_watchdog_and_reports_status_until_stopped(listener: socket.socket,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "40000")           # 40 ms: a ping every 20 ms
    listener.setblocking(False)
    stop = asyncio.Event()

    async def summary() -> str:
        return "2 companies, 5 queued"

    task = asyncio.create_task(notify.keepalive(stop, summary))
    await asyncio.sleep(0.15)
    stop.set()
    await asyncio.wait_for(task, 2)
    messages = []
    with contextlib.suppress(BlockingIOError):
        while True:
            messages.append(listener.recv(4096).decode())
    assert messages.count("WATCHDOG=1") >= 3
    assert messages.count("STATUS=2 companies, 5 queued") == 1     # about every 10 s, so once here


async def test_keepalive_returns_at_once_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    await asyncio.wait_for(notify.keepalive(asyncio.Event()), 1)


def test_one_line_summary_for_systemctl_status() -> None:
    from ksefd.daemon.notify_status import one_line
    from ksefd.daemon.status import CompanyStatus, DaemonStatus

    def company(name: str, held: bool) -> CompanyStatus:
        return CompanyStatus(name=name, nip="1234567802", send=True, receive=True, queued=2, in_ksef=1,
                             accepted_today=5, accepted_total=9, rejected_today=1, rejected_total=1,
                             on_hold={"code": "missing-permission"} if held else None, oldest_waiting=None,
                             last_error=None)

    status = DaemonStatus(running=True, last_heartbeat=None, pid=1,
                          companies=[company("acme", False), company("beta", True)])
    assert one_line(status) == "2 companies: 4 queued, 2 in KSeF, 10 accepted and 2 rejected today; on hold: beta"
    many = DaemonStatus(True, None, 1, [company(f"c{i}", True) for i in range(8)])
    assert one_line(many).endswith("on hold: c0, c1, c2, c3, c4 and 3 more")


def test_an_idle_daemon_is_woken_rarely_by_its_own_signs_of_life() -> None:
    """Issue #16 point 4: the systemd STATUS line about once a minute, not every 10 s; the heartbeat every 10 s,
    a third of the age at which its readers call it stale (not every 5 s)."""
    from ksefd.daemon.service import HEARTBEAT_SECONDS
    from ksefd.daemon.status import HEARTBEAT_STALE
    assert notify.STATUS_EVERY_SECONDS >= 60
    assert HEARTBEAT_SECONDS == 10 and HEARTBEAT_STALE.total_seconds() >= HEARTBEAT_SECONDS * 3


async def test_the_status_line_takes_a_few_queries_and_says_what_ksefd_status_says(tmp_path: Path) -> None:
    """Issue #16 point 4: `status.gather` asks about eight queries per company (~200 ms of CPU for 100); the
    STATUS line for systemd comes from a few queries over all companies, with the same words."""
    import datetime as dt

    from ksefd.clock import SystemClock
    from ksefd.daemon.notify_status import one_line, summary
    from ksefd.daemon.status import gather
    from ksefd.store import InvoiceState as S
    from ksefd.store import Store
    from tests.daemon.support import BUYER, SELLER, load, write_config

    companies = []
    for name, nip in (("alfa", SELLER), ("beta", BUYER)):
        (tmp_path / f"{name}.token").write_text("token\n", encoding="utf-8")
        companies.append({"name": name, "nip": nip, "token_file": str(tmp_path / f"{name}.token")})
    config = load(write_config(tmp_path, "http://127.0.0.1:9/v2", companies))
    clock = SystemClock()
    async with await Store.open(tmp_path / "state.sqlite3", clock) as store:
        queued = await store.invoices.add("alfa", "1.xml", "h1", 10, work_path="/w/1")
        rejected = await store.invoices.add("alfa", "2.xml", "h2", 10, work_path="/w/2")
        await store.invoices.transition(rejected.id, S.CLAIMED, S.REJECTED)
        accepted = await store.invoices.add("alfa", "3.xml", "h3", 10, work_path="/w/3")
        await store.invoices.transition(accepted.id, S.CLAIMED, S.CHECKED, seller_nip=SELLER, invoice_type="VAT",
                                        invoice_number="FV/3", issue_date=dt.date.today(), has_attachment=False)
        await store.invoices.transition(accepted.id, S.CHECKED, S.QUEUED)
        session = await store.sessions.add("alfa", "online", "20260302-SO-0000000001-0000000001-01",
                                           opened_at=clock.now())
        await store.invoices.transition(accepted.id, S.QUEUED, S.SUBMITTING, session_id=session.id, mode="online",
                                        attempts=1)
        await store.invoices.transition(accepted.id, S.SUBMITTING, S.PROCESSING,
                                        invoice_ref="20260302-EE-0000000001-0000000001-02", status_code=100)
        await store.invoices.transition(accepted.id, S.PROCESSING, S.ACCEPTED, status_code=200,
                                        ksef_number=f"{SELLER}-20260302-0100001AF629-AF")
        await store.invoices.add("beta", "4.xml", "h4", 10, work_path="/w/4")
        await store.invoices.add("gone", "5.xml", "h5", 10, work_path="/w/5")     # no longer in the config
        await store.holds.hold("beta", "credentials-expired", "replace the token", None)
        assert queued.state == S.CLAIMED
        text = await summary(store, config, clock)
        assert text == one_line(await gather(store, config, clock))
        assert text == "2 companies: 2 queued, 1 in KSeF, 1 accepted and 1 rejected today; on hold: beta"
