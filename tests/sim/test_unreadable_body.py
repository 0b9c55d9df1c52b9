"""API 2.9.0 error 21001 "Nieczytelna treść." (PROTOCOL.md §15): a request body that is not JSON, or not UTF-8,
gets 400 21001 on the operations whose 400 answer lists it in openapi.json, and 21405 on the others."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from ksefd.sim import spec
from tests.support.ksef_auth import access_token, bearer
from tests.support.online_flow import expect_error, sim_config

NIP = "9999999999"
REFERENCE = "20261122-SO-0000000000-0000000000-00"
pytestmark = pytest.mark.sends_invalid_requests

# Implemented operations whose 400 lists 21001 (checked against the spec below).
LISTING_21001 = [("POST", "/sessions/online"), ("POST", f"/sessions/online/{REFERENCE}/invoices"),
                 ("POST", "/sessions/batch"), ("POST", "/invoices/query/metadata"), ("POST", "/invoices/exports"),
                 ("POST", "/tokens"), ("POST", "/auth/ksef-token")]
BROKEN = {"truncated": b'{"formCode": {"systemCode": "FA (3)"', "not-json": b"formCode=FA",
          "not-utf8": b'{"description": "\xb3\xf3d\xbc"}'}


@pytest.fixture
async def sim(sim_factory: Any) -> Any:
    return await sim_factory(config=sim_config())


def test_the_spec_lists_21001_on_those_operations_and_not_on_testdata() -> None:
    paths = spec.document()["paths"]
    for method, path in LISTING_21001:
        template = path.replace(REFERENCE, "{referenceNumber}")
        assert spec.documents_code(paths[template][method.lower()], 21001), template
    assert not spec.documents_code(paths["/testdata/subject"]["post"], 21001)


@pytest.mark.parametrize("broken", sorted(BROKEN))
@pytest.mark.parametrize(("method", "path"), LISTING_21001)
async def test_unreadable_body_is_21001(method: str, path: str, broken: str, sim: Any,
                                        http: aiohttp.ClientSession) -> None:
    token = await access_token(http, sim.base_url, NIP)
    headers = {**bearer(token), "Content-Type": "application/json"}
    async with http.request(method, f"{sim.base_url}{path}", data=BROKEN[broken], headers=headers) as resp:
        detail = await expect_error(resp, 21001)
    assert detail["exceptionDescription"] == "Nieczytelna treść."
    assert "JSON" in detail["details"][0]


async def test_a_readable_body_that_breaks_the_schema_is_still_21405(sim: Any, http: aiohttp.ClientSession) -> None:
    token = await access_token(http, sim.base_url, NIP)
    async with http.post(f"{sim.base_url}/sessions/online", json={"formCode": 1}, headers=bearer(token)) as resp:
        await expect_error(resp, 21405)


async def test_an_operation_without_21001_answers_21405(sim: Any, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{sim.base_url}/testdata/subject", data=b"{", headers={"Content-Type": "application/json"}
                         ) as resp:
        await expect_error(resp, 21405)
