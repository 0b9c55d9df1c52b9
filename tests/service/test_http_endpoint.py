"""The daemon's HTTP endpoint (issue #12 point 5): /healthz, /readyz, /metrics and the status page, on a real
daemon sending to the simulator. /metrics is read with prometheus-client's own parser and must move as invoices
flow; the held company shows on /readyz (a hold is ready: a person must act) and on its page, with the reason."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from ksefd.clock import ManualClock
from ksefd.config import ConfigError, load_config
from ksefd.daemon.metrics import RequestMetrics, Snapshot, exposition, snapshot
from ksefd.daemon.service import serve
from ksefd.ksef import Exchange, RateLimited, Transport
from ksefd.ksef.transport import NO_RETRY
from ksefd.store import InvoiceState, Store
from tests.daemon.support import OTHER, SELLER, drop, invoice, load, token_file, write_config
from tests.service.http_support import free_port, running_daemon, scrape, total, value, wait_until


async def test_metrics_move_as_invoices_flow_and_probes_tell_the_truth(
        sim_factory: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with running_daemon(sim_factory, http, tmp_path) as daemon:
        async with http.get(f"{daemon.url}/healthz") as response:
            assert response.status == 200 and (await response.json())["status"] == "ok"
        text, before = await scrape(http, daemon.url)
        assert value(before, "ksefd_invoices_accepted_total", company="acme") == 0
        assert "# TYPE ksefd_ksef_request_duration_seconds histogram" in text

        acme = daemon.config.company("acme").folders.outbox
        drop(acme, "FV-1.xml", invoice("FV/1"))
        drop(acme, "FV-2.xml", invoice("FV/2"))
        drop(acme, "FV-3.xml", invoice("FV/3", seller=OTHER))          # not acme's NIP: refused locally
        drop(daemon.config.company("readonly").folders.outbox, "RO-1.xml", invoice("RO/1", seller=OTHER))

        async def flowed() -> bool:
            _, now = await scrape(http, daemon.url)
            return (value(now, "ksefd_invoices_accepted_total", company="acme") == 2
                    and value(now, "ksefd_invoices_rejected_total", company="acme") == 1
                    and value(now, "ksefd_company_on_hold", company="readonly", code="missing-permission") == 1)

        await wait_until(flowed, "2 accepted, 1 rejected, the read-only company on hold")
        _, after = await scrape(http, daemon.url)
        assert value(after, "ksefd_invoices_today", company="acme", outcome="accepted") == 2
        assert value(after, "ksefd_invoices_today", company="acme", outcome="rejected") == 1
        assert value(after, "ksefd_outbox_invoices", company="readonly", state="held") == 1
        assert value(after, "ksefd_invoices_in_doubt", company="acme") == 0
        # Each KSeF request was timed, under the company and its rate-limit group.
        assert total(after, "ksefd_ksef_request_duration_seconds_count", company="acme", group="invoiceSend") == 2
        assert total(after, "ksefd_ksef_request_duration_seconds_count", company="acme") > 5
        # Tokens end on 31.12.2026 (PROTOCOL.md §15): the days left are published per company.
        assert ("ksefd_credential_expiry_days", (("company", "acme"), ("kind", "token"))) in after
        assert value(after, "ksefd_heartbeat_age_seconds") < 30
        assert value(after, "ksefd_company_connected", company="acme") == 1
        assert value(after, "ksefd_company_connected", company="readonly") == 0

        async with http.get(f"{daemon.url}/readyz") as response:
            body = await response.json()
        assert response.status == 200, body
        assert body["companies"] == {"acme": "connected", "readonly": "on hold: missing-permission"}

        async with http.get(f"{daemon.url}/company/readonly") as response:
            page = await response.text()
            assert response.status == 200 and "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert "Wstrzymana" in page and "RO-1.xml" in page and "<td>wstrzymana</td>" in page   # on hold (Polish)
        assert "<th>następna próba</th>" in page and '<html lang="pl">' in page
        async with http.get(f"{daemon.url}/company/acme") as response:
            page = await response.text()
        assert "FV-3.xml" in page and "seller-nip" in page            # the last error, with its code
        async with http.get(f"{daemon.url}/company/nobody") as response:
            assert response.status == 404
        async with http.post(f"{daemon.url}/company/acme") as response:
            assert response.status == 405                              # read-only


async def test_a_429_is_counted_under_its_group(tmp_path: Path) -> None:
    async def limited(_request: web.Request) -> web.Response:
        return web.json_response({"status": {"code": 429, "description": "Too Many Requests"}}, status=429,
                                 headers={"Retry-After": "0"})

    app = web.Application()
    app.router.add_post("/v2/sessions/online", limited)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    (tmp_path / "t").write_text("unused", encoding="utf-8")
    config = load_config(write_config(tmp_path, "http://127.0.0.1:9/v2",
                                      [{"name": "acme", "nip": SELLER, "token_file": "t"}]))
    metrics = RequestMetrics(config)
    transport = Transport(f"http://127.0.0.1:{server.port}/v2", retry=NO_RETRY)
    transport.observers.append(metrics.observe)
    try:
        with pytest.raises(RateLimited):
            await transport.request("POST", "/sessions/online", json={}, context=f"Nip:{SELLER}")
    finally:
        await transport.close()
        await server.close()
    assert metrics.rate_limited.labels("acme", "onlineSession")._value.get() == 1


def test_http_is_off_by_default_and_only_on_loopback(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("unused", encoding="utf-8")
    base = [{"name": "acme", "nip": SELLER, "token_file": "t"}]
    assert load_config(write_config(tmp_path, "http://127.0.0.1:9/v2", base)).http is None
    on = load_config(write_config(tmp_path, "http://127.0.0.1:9/v2", base, daemon={"http": "127.0.0.1:9464"}))
    assert on.http == ("127.0.0.1", 9464)
    for wrong, words in (("0.0.0.0:9464", "beyond this machine"), ("9464", "HOST:PORT")):
        with pytest.raises(ConfigError) as error:
            load_config(write_config(tmp_path, "http://127.0.0.1:9/v2", base, daemon={"http": wrong}))
        assert words in "\n".join(error.value.english)          # (str(): Polish by default)


async def test_readyz_names_a_company_that_cannot_reach_ksef(sim_factory: Any, http: aiohttp.ClientSession,
                                                            tmp_path: Path) -> None:
    sim = await sim_factory()
    token = await token_file(http, sim.base_url, tmp_path, SELLER)
    port = free_port()
    config = load(write_config(tmp_path, sim.base_url, [
        {"name": "acme", "nip": SELLER, "token_file": str(token)},
        {"name": "down", "nip": OTHER, "token_file": str(token), "base_url": f"http://127.0.0.1:{free_port()}/v2"}],
        daemon={"http": f"127.0.0.1:{port}"}))
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop))
    url = f"http://127.0.0.1:{port}"
    try:
        async def acme_connected() -> bool:
            try:
                async with http.get(f"{url}/readyz") as response:
                    body = await response.json()
            except aiohttp.ClientError:
                return False
            return bool(body["companies"].get("acme") == "connected")

        await wait_until(acme_connected, "acme connected")
        async with http.get(f"{url}/readyz") as response:
            body = await response.json()
        assert response.status == 503 and body["connecting"] == ["down"] and body["status"] == "not ready"
        async with http.get(f"{url}/healthz") as response:
            assert response.status == 200              # alive: not being ready is not a reason to restart it
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_a_failing_observer_never_fails_the_request(sim: Any) -> None:
    seen: list[Exchange] = []

    def broken(_exchange: Exchange) -> None:
        raise RuntimeError("a bug in counting")

    transport = Transport(sim.base_url)
    transport.observers += [broken, seen.append]
    try:
        response = await transport.request("POST", "/auth/challenge")
    finally:
        await transport.close()
    assert response.status == 200
    assert [(e.group, e.template, e.status, e.context) for e in seen] == [
        ("anonymous", "/auth/challenge", 200, "")] and seen[0].seconds > 0


async def test_the_oldest_offline_deadline_is_published_only_while_offline_invoices_wait(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("unused", encoding="utf-8")
    config = load_config(write_config(tmp_path, "http://127.0.0.1:9/v2",
                                      [{"name": "acme", "nip": SELLER, "token_file": "t"}]))
    clock = ManualClock(dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC))
    deadlines = [dt.datetime(2026, 12, 9, 22, 59, 59, tzinfo=dt.UTC), dt.datetime(2026, 12, 8, 22, 59, 59,
                                                                                    tzinfo=dt.UTC)]
    async with await Store.open(config.state_db, clock) as store:
        def families(taken: Snapshot) -> dict[str, Any]:
            text = exposition(RequestMetrics(config), taken).decode()
            return {f.name: f for f in text_string_to_metric_families(text)}

        assert not families(await snapshot(store, config, clock))[
            "ksefd_offline_oldest_deadline_timestamp_seconds"].samples
        for number, deadline in enumerate(deadlines):
            row = await store.invoices.add("acme", f"FV-{number}.xml", f"hash{number}", 10)
            await store.invoices.transition(row.id, InvoiceState.CLAIMED, InvoiceState.CHECKED)
            await store.invoices.transition(row.id, InvoiceState.CHECKED, InvoiceState.OFFLINE, offline=True,
                                            offline_deadline=deadline)
        (sample,) = families(await snapshot(store, config, clock))[
            "ksefd_offline_oldest_deadline_timestamp_seconds"].samples
    assert sample.labels == {"company": "acme"} and sample.value == min(deadlines).timestamp()
