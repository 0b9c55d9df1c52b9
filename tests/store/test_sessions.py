"""KSeF sessions and UPOs in SQLite."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from ksefd.clock import ManualClock
from ksefd.store import (
    SESSION_TRANSITIONS,
    IllegalTransition,
    InvoiceState,
    SessionState,
    StateConflict,
    Store,
)

T = SessionState
REF = "20260302-SO-2DFC46C000-3AC6D5877F-D4"


async def test_session_life(store: Store, clock: ManualClock) -> None:
    opened = clock.now()
    session = await store.sessions.add("acme", "online", REF, opened_at=opened,
                                       valid_until=opened + dt.timedelta(hours=12))
    assert session.state == T.OPEN and session.last_used_at == opened and not session.offline_mode
    clock.advance(30)
    await store.sessions.touch(session.id, clock.now())
    assert (await store.sessions.get(session.id)).last_used_at == clock.now()  # type: ignore[union-attr]
    await store.sessions.transition(session.id, T.OPEN, T.CLOSING)
    await store.sessions.transition(session.id, T.CLOSING, T.CLOSED, closed_at=clock.now(), status_code=170)
    done = await store.sessions.transition(session.id, T.CLOSED, T.DONE, status_code=200)
    assert done.status_code == 200 and done.closed_at == clock.now()
    assert await store.sessions.by_reference(REF) == done
    trail = await store.events.for_session(session.id)
    assert [e.to_state for e in trail] == ["open", "closing", "closed", "done"]


async def test_session_transitions_are_guarded(store: Store, clock: ManualClock) -> None:
    session = await store.sessions.add("acme", "batch", REF.replace("SO", "SB"), opened_at=clock.now(),
                                       offline_mode=True)
    assert session.offline_mode and session.kind == "batch"
    with pytest.raises(IllegalTransition):
        await store.sessions.transition(session.id, T.OPEN, T.DONE)       # no skipping the close
    await store.sessions.transition(session.id, T.OPEN, T.ABANDONED, detail={"why": "upload interrupted"})
    with pytest.raises(StateConflict):
        await store.sessions.transition(session.id, T.OPEN, T.CLOSING)
    for state, nexts in SESSION_TRANSITIONS.items():
        for target in set(T) - nexts:
            with pytest.raises(IllegalTransition):
                await store.sessions.transition(session.id, state, target)


async def test_reference_is_unique(store: Store, clock: ManualClock) -> None:
    await store.sessions.add("acme", "online", REF, opened_at=clock.now())
    with pytest.raises(sqlite3.IntegrityError):
        await store.sessions.add("acme", "online", REF, opened_at=clock.now())


async def test_unfinished_sessions_after_restart(db_path: Path, clock: ManualClock) -> None:
    async with await Store.open(db_path, clock) as store:
        a = await store.sessions.add("acme", "online", REF, opened_at=clock.now())
        b = await store.sessions.add("acme", "batch", REF[:-2] + "AA", opened_at=clock.now())
        c = await store.sessions.add("beta", "online", REF[:-2] + "BB", opened_at=clock.now())
        await store.sessions.transition(b.id, T.OPEN, T.CLOSING)
        await store.sessions.transition(c.id, T.OPEN, T.FAILED, status_code=440)
        invoice = await store.invoices.add("acme", "FV.xml", "h" * 44, 1)
        await store.invoices.transition(invoice.id, InvoiceState.CLAIMED, InvoiceState.CHECKED)
        await store.invoices.transition(invoice.id, InvoiceState.CHECKED, InvoiceState.QUEUED)
        await store.invoices.transition(invoice.id, InvoiceState.QUEUED, InvoiceState.SUBMITTING, session_id=a.id)
    async with await Store.open(db_path, clock) as store:
        assert [s.id for s in await store.sessions.unfinished()] == [a.id, b.id]
        assert [s.id for s in await store.sessions.unfinished("acme", "batch")] == [b.id]
        assert await store.sessions.unfinished("beta") == []
        # what a restart needs to resolve an in-doubt send: the session reference and the invoice hashes
        in_session = await store.invoices.in_session(a.id)
        assert [(r.sha256, r.state) for r in in_session] == [("h" * 44, InvoiceState.SUBMITTING)]
        assert await store.invoices.count_in_session(a.id) == 1
        columns = {r[1] for r in await store.db.fetch_all("PRAGMA table_info(ksef_sessions)")}
        assert not any("key" in c or c == "iv" for c in columns)       # no AES key material is kept


async def test_upos_are_kept_once(store: Store, clock: ManualClock) -> None:
    session = await store.sessions.add("acme", "online", REF, opened_at=clock.now())
    invoice = await store.invoices.add("acme", "FV.xml", "h" * 44, 1)
    first = await store.sessions.save_upo(session.id, "K-1", b"<Potwierdzenie/>", invoice_id=invoice.id)
    again = await store.sessions.save_upo(session.id, "K-1", b"<Potwierdzenie/>", invoice_id=invoice.id)
    assert first == again and first.xml == b"<Potwierdzenie/>" and len(first.sha256) == 44
    whole = await store.sessions.save_upo(session.id, "20260302-EU-0000000001-0000000001-01", b"<S/>")
    whole_again = await store.sessions.save_upo(session.id, "20260302-EU-0000000001-0000000001-01", b"<S/>")
    assert whole == whole_again and whole.invoice_id is None
    assert [u.id for u in await store.sessions.upos(session.id)] == [first.id, whole.id]
    assert [u.id for u in await store.sessions.upos(session.id, invoice_id=invoice.id)] == [first.id]
