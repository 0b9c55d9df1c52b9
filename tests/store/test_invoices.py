"""The outbox state machine in SQLite: explicit, guarded, audited transitions."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ksefd.clock import ManualClock
from ksefd.store import (
    INVOICE_TRANSITIONS,
    IllegalTransition,
    InvoiceState,
    StateConflict,
    Store,
    StoreError,
)

S = InvoiceState
HASH = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


async def claimed(store: Store, name: str = "FV1.xml", company: str = "acme", sha: str = HASH) -> int:
    row = await store.invoices.add(company, name, sha, 3387, work_path=f"/w/{name}")
    assert row.state == S.CLAIMED
    return row.id


async def test_the_happy_path_is_recorded_step_by_step(store: Store, clock: ManualClock) -> None:
    invoice_id = await claimed(store)
    clock.advance(1)
    await store.invoices.transition(invoice_id, S.CLAIMED, S.CHECKED, seller_nip="5265877635", invoice_type="VAT",
                                    invoice_number="FV/1", issue_date=dt.date(2026, 3, 1), has_attachment=False)
    await store.invoices.transition(invoice_id, S.CHECKED, S.QUEUED)
    session = await store.sessions.add("acme", "online", "20260302-SO-0000000001-0000000001-01",
                                       opened_at=clock.now())
    await store.invoices.transition(invoice_id, S.QUEUED, S.SUBMITTING, session_id=session.id, mode="online",
                                    attempts=1)
    await store.invoices.transition(invoice_id, S.SUBMITTING, S.PROCESSING,
                                    invoice_ref="20260302-EE-0000000001-0000000001-02", status_code=100)
    clock.advance(5)
    row = await store.invoices.transition(invoice_id, S.PROCESSING, S.ACCEPTED, status_code=200,
                                          ksef_number="5265877635-20260302-0100001AF629-AF",
                                          detail={"acquisitionDate": "2026-03-02T09:00:06Z"})
    assert row.state == S.ACCEPTED and row.ksef_number and row.session_id == session.id
    assert row.issue_date == dt.date(2026, 3, 1) and row.duplicate_key == ("5265877635", "VAT", "FV/1")
    assert row.created_at == dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
    assert row.updated_at == dt.datetime(2026, 3, 2, 9, 0, 6, tzinfo=dt.UTC)
    await store.invoices.transition(invoice_id, S.ACCEPTED, S.UPO_SAVED)
    await store.invoices.transition(invoice_id, S.UPO_SAVED, S.DONE, result_name="FV1")
    trail = await store.events.for_invoice(invoice_id)
    assert [(e.from_state, e.to_state) for e in trail] == [
        (None, "claimed"), ("claimed", "checked"), ("checked", "queued"), ("queued", "submitting"),
        ("submitting", "processing"), ("processing", "accepted"), ("accepted", "upo_saved"), ("upo_saved", "done")]
    assert trail[5].detail == {"acquisitionDate": "2026-03-02T09:00:06Z"} and trail[5].session_id == session.id
    assert trail[0].detail == {"file": "FV1.xml"} and trail[0].company == "acme"


async def test_a_step_from_the_wrong_state_is_refused(store: Store) -> None:
    invoice_id = await claimed(store)
    await store.invoices.transition(invoice_id, S.CLAIMED, S.CHECKED)
    with pytest.raises(StateConflict) as caught:
        await store.invoices.transition(invoice_id, S.CLAIMED, S.REJECTED)   # stale view: it is CHECKED now
    assert caught.value.actual == "checked" and caught.value.expected == ["claimed"]
    assert (await store.invoices.get(invoice_id)).state == S.CHECKED  # type: ignore[union-attr]
    with pytest.raises(StateConflict) as missing:
        await store.invoices.transition(999, S.CLAIMED, S.CHECKED)
    assert missing.value.actual is None


@pytest.mark.parametrize("source", list(S))
async def test_no_step_outside_the_table(store: Store, source: InvoiceState) -> None:
    for target in S:
        if target not in INVOICE_TRANSITIONS[source]:
            with pytest.raises(IllegalTransition):
                await store.invoices.transition(1, source, target)


def test_the_table_reaches_every_state_and_ends() -> None:
    seen, todo = {S.CLAIMED}, [S.CLAIMED]
    while todo:
        for nxt in INVOICE_TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(S)
    assert not INVOICE_TRANSITIONS[S.DONE] and not INVOICE_TRANSITIONS[S.REJECTED]
    assert S.DONE not in INVOICE_TRANSITIONS[S.PROCESSING]      # no skipping the UPO
    assert S.PROCESSING not in INVOICE_TRANSITIONS[S.QUEUED]     # no send without recorded intent


async def test_transition_many_is_all_or_nothing(store: Store) -> None:
    ids = [await claimed(store, f"FV{i}.xml", sha=f"{i:044d}") for i in range(3)]
    for invoice_id in ids:
        await store.invoices.transition(invoice_id, S.CLAIMED, S.CHECKED)
        await store.invoices.transition(invoice_id, S.CHECKED, S.QUEUED)
    await store.invoices.transition(ids[2], S.QUEUED, S.HELD)
    with pytest.raises(StateConflict):
        await store.invoices.transition_many(ids, S.QUEUED, S.SUBMITTING, mode="batch")
    assert [r.state for r in await store.invoices.in_state("acme", S.QUEUED)] == [S.QUEUED, S.QUEUED]
    assert await store.invoices.in_state("acme", S.SUBMITTING) == []
    moved = await store.invoices.transition_many(ids[:2], S.QUEUED, S.SUBMITTING, mode="batch")
    assert [r.mode for r in moved] == ["batch", "batch"]


async def test_update_keeps_the_state_and_is_guarded(store: Store, clock: ManualClock) -> None:
    invoice_id = await claimed(store)
    later = clock.now() + dt.timedelta(minutes=5)
    row = await store.invoices.update(invoice_id, S.CLAIMED, next_attempt_at=later, attempts=2,
                                      last_error={"code": "timeout", "message": "no answer"}, detail={"why": "x"})
    assert row.state == S.CLAIMED and row.next_attempt_at == later and row.attempts == 2
    assert row.last_error == {"code": "timeout", "message": "no answer"}
    with pytest.raises(StateConflict):
        await store.invoices.update(invoice_id, S.QUEUED, attempts=3)
    assert [e.detail for e in await store.events.for_invoice(invoice_id)] == [{"file": "FV1.xml"}, {"why": "x"}]


async def test_unknown_fields_are_refused(store: Store) -> None:
    invoice_id = await claimed(store)
    with pytest.raises(StoreError, match="unknown invoice fields: colour"):
        await store.invoices.transition(invoice_id, S.CLAIMED, S.CHECKED, colour="red")
    with pytest.raises(StoreError):
        await store.invoices.update(invoice_id, S.CLAIMED, company="beta")   # the repository's, not the caller's


async def test_due_respects_next_attempt(store: Store, clock: ManualClock) -> None:
    first, second = await claimed(store, "a.xml", sha="1" * 44), await claimed(store, "b.xml", sha="2" * 44)
    for invoice_id in (first, second):
        await store.invoices.transition(invoice_id, S.CLAIMED, S.CHECKED)
        await store.invoices.transition(invoice_id, S.CHECKED, S.QUEUED)
    await store.invoices.transition(second, S.QUEUED, S.DEFERRED, next_attempt_at=clock.now() + dt.timedelta(days=60))
    assert [r.id for r in await store.invoices.due("acme", [S.QUEUED, S.DEFERRED], clock.now())] == [first]
    clock.advance(60 * 86400)
    assert [r.id for r in await store.invoices.due("acme", [S.QUEUED, S.DEFERRED], clock.now())] == [first, second]
    assert await store.invoices.due("other", [S.QUEUED], clock.now()) == []


async def test_lookups_and_status_counts(store: Store, clock: ManualClock) -> None:
    a = await claimed(store, "a.xml")
    clock.advance(10)
    b = await claimed(store, "again.xml")                       # the same bytes dropped again
    c = await claimed(store, "c.xml", company="beta", sha="c" * 44)
    assert [r.id for r in await store.invoices.find_by_hash("acme", HASH)] == [a, b]
    assert await store.invoices.find_by_hash("beta", HASH) == []
    await store.invoices.transition(a, S.CLAIMED, S.CHECKED, seller_nip="5265877635", invoice_type="VAT",
                                    invoice_number="FV/1")
    assert [r.id for r in await store.invoices.find_by_key("5265877635", "VAT", "FV/1")] == [a]
    await store.invoices.transition(a, S.CHECKED, S.REJECTED, last_error={"code": "xsd"})
    assert await store.invoices.counts("acme") == {S.REJECTED: 1, S.CLAIMED: 1}
    assert (await store.invoices.oldest_waiting("acme")).id == b  # type: ignore[union-attr]
    assert (await store.invoices.oldest_waiting("beta")).id == c  # type: ignore[union-attr]
    assert [r.id for r in await store.invoices.in_state(None, S.CLAIMED)] == [b, c]
    since = clock.now() - dt.timedelta(hours=1)
    assert await store.events.count_reached("acme", "rejected", since) == 1


async def test_state_survives_a_restart(db_path: Path, clock: ManualClock) -> None:
    async with await Store.open(db_path, clock) as store:
        invoice_id = await claimed(store)
        await store.invoices.transition(invoice_id, S.CLAIMED, S.CHECKED)
        await store.invoices.transition(invoice_id, S.CHECKED, S.QUEUED)
        await store.invoices.transition(invoice_id, S.QUEUED, S.SUBMITTING, attempts=1)
    async with await Store.open(db_path, clock) as store:     # "crash" and restart
        in_flight = await store.invoices.in_state("acme", S.SUBMITTING)
        assert [r.id for r in in_flight] == [invoice_id]
        await store.invoices.transition(invoice_id, S.SUBMITTING, S.IN_DOUBT)
        await store.invoices.transition(invoice_id, S.IN_DOUBT, S.ACCEPTED, ksef_number="K")
        assert len(await store.events.for_invoice(invoice_id)) == 6


async def test_next_attempt_at_includes_offline_invoices_waiting_for_their_retry(store: Store,
                                                                               clock: ManualClock) -> None:
    # An offline invoice KSeF cancelled (405/550) waits in OFFLINE for its retry time; the dispatcher's
    # timer must know it, or it sleeps until its 5-minute safety look.
    invoice_id = await claimed(store, "off.xml", sha="3" * 44)
    await store.invoices.transition(invoice_id, S.CLAIMED, S.CHECKED)
    retry = clock.now() + dt.timedelta(seconds=90)
    await store.invoices.transition(invoice_id, S.CHECKED, S.OFFLINE, offline=True, next_attempt_at=retry)
    assert await store.invoices.next_attempt_at("acme") == retry
