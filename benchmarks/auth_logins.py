"""Authentication cost on the simulator: XAdES logins and KSeF-token logins per second.

Runs an in-process simulator on a loopback port and logs in the way the tests do (tests/support/ksef_auth.py:
self-signed certificate + XAdES, then POST /tokens + token authentication). The certificate's key
generation is part of each XAdES login, as in the tests.

    .venv/bin/python benchmarks/auth_logins.py [--logins 30]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ksefd.sim.app import create_app  # noqa: E402
from tests.support.ksef_auth import create_ksef_token, owner_login, token_login  # noqa: E402

NIP = "5265877635"


async def main(logins: int) -> None:
    server = TestServer(create_app(), host="127.0.0.1")
    await server.start_server()
    base = f"http://127.0.0.1:{server.port}/v2"
    try:
        async with aiohttp.ClientSession() as http:
            started = time.perf_counter()
            for _ in range(logins):
                await owner_login(http, base, NIP)
            xades = time.perf_counter() - started
            token = await create_ksef_token(http, base, NIP, ["InvoiceRead", "InvoiceWrite"])
            started = time.perf_counter()
            for _ in range(logins):
                await token_login(http, base, context_nip=NIP, token=token)
            by_token = time.perf_counter() - started
    finally:
        await server.close()
    print(f"XAdES logins (RSA-2048 key made each time): {logins / xades:.1f}/s, {xades / logins * 1000:.0f} ms each")
    print(f"KSeF-token logins: {logins / by_token:.1f}/s, {by_token / logins * 1000:.0f} ms each")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=30)
    asyncio.run(main(parser.parse_args().logins))
