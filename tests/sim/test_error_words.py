"""Error texts as openapi.json words them (PROTOCOL.md §10): every exceptionDescription the simulator can send
is the one of the spec's 400 tables, and documented details come with the operation's own wording."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

import aiohttp

from ksefd.sim.errors import DESCRIPTIONS
from tests.conftest import SHARED
from tests.support.ksef_auth import access_token
from tests.support.online_flow import Online, expect_error, sim_config

SPEC = json.loads((SHARED / "ksef" / "openapi.json").read_text("utf-8"))


def spec_descriptions() -> dict[int, set[str]]:
    """exceptionCode -> the ExceptionDescription cells of every response table in the spec."""
    found: dict[int, set[str]] = {}
    for operations in SPEC["paths"].values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                for line in response.get("description", "").splitlines():
                    cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
                    if len(cells) >= 2 and re.fullmatch(r"\d{4,5}", cells[0]):
                        found.setdefault(int(cells[0]), set()).add(cells[1])
    return found


def test_every_exception_description_is_the_spec_text() -> None:
    documented = spec_descriptions()
    wrong = {code: text for code, text in DESCRIPTIONS.items() if text not in documented.get(code, {text})}
    assert wrong == {}, {code: documented[code] for code in wrong}


async def test_unknown_public_key_has_the_documented_words(sim_factory: Any, http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config())
    online = Online(http, sim.base_url, await access_token(http, sim.base_url, "9999999999"))
    await online.open_raw()
    assert online.public is not None
    key_id = base64.b64encode(hashlib.sha256(b"withdrawn").digest()).decode()
    async with await online.open_raw(encryption=online.keys.encryption(online.public, key_id)) as resp:
        detail = await expect_error(resp, 21470)
    assert detail["exceptionDescription"] == ("Przesłany identyfikator klucza jest nieznany lub wskazuje na wycofany "
                                              "klucz.")
    assert detail["details"] == [f"Klucz o identyfikatorze {key_id} nie jest wspierany."]
