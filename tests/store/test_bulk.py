"""Group writes for large batches: many rows, each with its own values, in one all-or-nothing commit."""

from __future__ import annotations

import pytest

from ksefd.clock import ManualClock
from ksefd.store import Change, InvoiceState, NewInvoice, StateConflict, Store

S = InvoiceState
HASHES = [f"{n:043d}=" for n in range(3)]


async def test_add_many_claims_every_file_in_order_with_its_facts(store: Store) -> None:
    rows = await store.invoices.add_many("acme", [
        NewInvoice(f"FV{n}.xml", HASHES[n], 100 + n, {"file": f"FV{n}.xml"}, {"work_path": f"/w/{n}"})
        for n in range(3)])
    assert [(r.file_name, r.sha256, r.size, r.work_path, r.state) for r in rows] == [
        (f"FV{n}.xml", HASHES[n], 100 + n, f"/w/{n}", S.CLAIMED) for n in range(3)]
    assert [e.to_state for e in await store.events.for_invoice(rows[1].id)] == ["claimed"]


async def test_transition_each_sets_each_invoices_own_fields_and_audit(store: Store) -> None:
    rows = await store.invoices.add_many("acme", [NewInvoice(f"FV{n}.xml", HASHES[n], 1) for n in range(2)])
    ids = [r.id for r in rows]
    for a, b in ((S.CLAIMED, S.CHECKED), (S.CHECKED, S.QUEUED), (S.QUEUED, S.SUBMITTING),
                 (S.SUBMITTING, S.PROCESSING)):
        await store.invoices.transition_many(ids, a, b)
    moved = await store.invoices.transition_each(
        [Change(i, {"ksef_number": f"K{i}", "result_name": f"FV{i}"}, {"ksefNumber": f"K{i}"}) for i in ids],
        S.PROCESSING, S.ACCEPTED)
    assert [(r.state, r.ksef_number, r.result_name) for r in moved] == [
        (S.ACCEPTED, f"K{i}", f"FV{i}") for i in ids]
    assert (await store.events.for_invoice(ids[1]))[-1].detail == {"ksefNumber": f"K{ids[1]}"}


async def test_transition_each_is_all_or_nothing(store: Store) -> None:
    rows = await store.invoices.add_many("acme", [NewInvoice(f"FV{n}.xml", HASHES[n], 1) for n in range(2)])
    await store.invoices.transition(rows[1].id, S.CLAIMED, S.CHECKED)
    with pytest.raises(StateConflict):
        await store.invoices.transition_each([Change(r.id, {"attempts": 5}) for r in rows], S.CLAIMED, S.CHECKED)
    first = await store.invoices.get(rows[0].id)
    assert first is not None and first.state == S.CLAIMED and first.attempts == 0


async def test_save_upos_keeps_each_upo_once(store: Store, clock: ManualClock) -> None:
    session = await store.sessions.add("acme", "batch", "20260302-SB-0000000001-0000000001-01",
                                       opened_at=clock.now())
    rows = await store.invoices.add_many("acme", [NewInvoice(f"FV{n}.xml", HASHES[n], 1) for n in range(2)])
    items = [(session.id, f"K{r.id}", f"<upo>{r.id}</upo>".encode(), r.id) for r in rows]
    await store.sessions.save_upos(items)
    await store.sessions.save_upos(items)       # a repeat after a crash changes nothing
    upos = await store.sessions.upos(session.id)
    assert [(u.invoice_id, u.reference, u.xml) for u in upos] == [(i, ref, xml) for _, ref, xml, i in items]



async def test_add_many_with_mixed_facts_keeps_the_order_given(store: Store) -> None:
    """Rows that set different columns (a checked file, a refused one) go in separate statements; the ids
    still follow the order of the drop, after any row already there."""
    first = await store.invoices.add("acme", "old.xml", "o" * 43 + "=", 1)
    items = [NewInvoice("a.xml", HASHES[0], 1, None, {"work_path": "/w/a", "seller_nip": "9999999999"}),
             NewInvoice("b.xml", HASHES[1], 2, None, {"work_path": "/w/b"}),
             NewInvoice("c.xml", HASHES[2], 3, None, {"work_path": "/w/c", "seller_nip": "9999999999"})]
    rows = await store.invoices.add_many("acme", items)
    assert [r.file_name for r in rows] == ["a.xml", "b.xml", "c.xml"]
    assert [r.id for r in rows] == [first.id + 1, first.id + 2, first.id + 3]
    assert [(r.seller_nip, r.work_path) for r in rows] == [("9999999999", "/w/a"), (None, "/w/b"),
                                                           ("9999999999", "/w/c")]
    assert [e.detail for e in await store.events.for_invoice(rows[1].id)] == [{"file": "b.xml"}]


async def test_find_by_hashes_and_keys_answer_as_one_lookup_each_would(store: Store) -> None:
    facts = {"seller_nip": "9999999999", "invoice_type": "VAT"}
    rows = await store.invoices.add_many("acme", [
        NewInvoice(f"FV{n}.xml", HASHES[n % 2], 1, None, {**facts, "invoice_number": f"FV/{n % 2}"})
        for n in range(3)])
    await store.invoices.add("other", "x.xml", HASHES[0], 1)
    by_hash = await store.invoices.find_by_hashes("acme", [HASHES[0], HASHES[1], HASHES[2]])
    for sha in HASHES:
        assert by_hash.get(sha, []) == await store.invoices.find_by_hash("acme", sha)
    assert [r.id for r in by_hash[HASHES[0]]] == [rows[0].id, rows[2].id]
    keys = [("9999999999", "VAT", "FV/0"), ("9999999999", "VAT", "FV/1"), ("9999999999", "KOR", "FV/0")]
    by_key = await store.invoices.find_by_keys(keys)
    for key in keys:
        assert by_key.get(key, []) == await store.invoices.find_by_key(*key)
    assert len(by_key[keys[0]]) == 2 and keys[2] not in by_key


async def test_transition_steps_walks_several_states_in_one_all_or_nothing_commit(store: Store) -> None:
    rows = await store.invoices.add_many("acme", [NewInvoice(f"FV{n}.xml", HASHES[n], 1) for n in range(2)])
    ids = [r.id for r in rows]
    moved = await store.invoices.transition_steps(ids, [S.CLAIMED, S.CHECKED, S.QUEUED], attempts=0)
    assert [r.state for r in moved] == [S.QUEUED, S.QUEUED]
    assert [(e.from_state, e.to_state) for e in await store.events.for_invoice(ids[0])] == [
        (None, "claimed"), ("claimed", "checked"), ("checked", "queued")]
    await store.invoices.transition(ids[1], S.QUEUED, S.SUBMITTING)
    with pytest.raises(StateConflict):       # the second invoice is not where the caller thought
        await store.invoices.transition_steps(ids, [S.QUEUED, S.SUBMITTING, S.PROCESSING])
    first = await store.invoices.get(ids[0])
    assert first is not None and first.state == S.QUEUED          # nothing of the failed walk stayed
    assert len(await store.events.for_invoice(ids[0])) == 3


async def test_moves_built_from_the_callers_rows_equal_the_rows_read_back(store: Store, clock: ManualClock) -> None:
    """`known=` (issue #16): the answer is built, not read back, and must be exactly what a read gives: times in
    UTC as stored, JSON as it comes back, the audit the same."""
    import datetime as dt

    from ksefd.store import StoreError

    session = await store.sessions.add("acme", "batch", "REF-1", opened_at=clock.now())
    rows = await store.invoices.add_many("acme", [
        NewInvoice(f"FV{n}.xml", HASHES[n], 1, None, {"work_path": f"/w/{n}"}) for n in range(3)])
    ids = [r.id for r in rows]
    clock.advance(1.234567)
    later = dt.datetime(2026, 3, 2, 12, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    built = await store.invoices.transition_steps(ids, [S.CLAIMED, S.CHECKED, S.QUEUED], known=rows,
                                                  next_attempt_at=later, last_error={"b": [1, "x"], "a": None})
    assert built == await store.invoices.get_many(ids)
    moved = await store.invoices.transition_steps(ids, [S.QUEUED, S.SUBMITTING], known=built,
                                                  session_id=session.id, mode="batch", next_attempt_at=None)
    assert moved == await store.invoices.get_many(ids)
    moved = await store.invoices.transition_steps(ids, [S.SUBMITTING, S.PROCESSING], known=moved)
    accepted = await store.invoices.transition_each(
        [Change(i, {"ksef_number": f"K{i}", "result_name": f"FV{i}", "status_code": 200}) for i in ids],
        S.PROCESSING, S.ACCEPTED, known=moved)
    assert accepted == await store.invoices.get_many(ids)
    assert [e.session_id for e in await store.events.for_invoice(ids[0])][-1] == session.id
    with pytest.raises(StoreError):       # not the rows moved, in their order and state
        await store.invoices.transition_steps(ids[::-1], [S.ACCEPTED, S.UPO_SAVED], known=accepted)
    with pytest.raises(StoreError):
        await store.invoices.transition_steps(ids, [S.ACCEPTED, S.UPO_SAVED], known=moved)
    assert {r.state for r in await store.invoices.get_many(ids)} == {S.ACCEPTED}


async def test_rows_built_from_known_ones_equal_rows_read_back_and_events_keep_their_details(store: Store) -> None:
    """transition_steps with `known` builds the moved rows without dataclasses.replace (invoices._changed) and
    writes a shared detail once (events.record_many): the same rows and audit as reading them back gives."""
    rows = await store.invoices.add_many("acme", [NewInvoice(f"FV{n}.xml", HASHES[n], 1) for n in range(3)])
    ids = [r.id for r in rows]
    built = await store.invoices.transition_steps(ids, [S.CLAIMED, S.CHECKED, S.QUEUED], known=rows,
                                                  detail={"why": "łódź"}, attempts=2, mode="batch")
    assert built == await store.invoices.get_many(ids)
    assert [type(r) for r in built] == [type(rows[0])] * 3 and built[0] != rows[0] and rows[0].state == S.CLAIMED
    for i in ids:
        assert [(e.to_state, e.detail) for e in await store.events.for_invoice(i)][1:] == [
            ("checked", {"why": "łódź"}), ("queued", {"why": "łódź"})]
