"""API 2.9.0 error 21001 "Nieczytelna treść." (PROTOCOL.md §15) in the client: a permanent request error, raised
at once as UnreadableRequest and logged loudly, never retried as if transient; against the simulator over HTTP."""

from __future__ import annotations

from collections import Counter
from typing import Any

import aiohttp
import pytest
import structlog

from ksefd.ksef.errors import ExceptionDetail, KsefException, UnreadableRequest
from ksefd.ksef.responses import error_from_response
from ksefd.ksef.transport import Response, RetryPolicy, Transport
from tests.support.ksef_auth import access_token
from tests.support.online_flow import sim_config

NIP = "9999999999"
pytestmark = pytest.mark.sends_invalid_requests


class CountingGate:
    def __init__(self) -> None:
        self.acquired: Counter[str] = Counter()

    async def acquire(self, context: str, group: str) -> None:
        self.acquired[group] += 1

    def ready(self, context: str, group: str) -> bool:
        return True

    def answered(self, grant: object) -> None:
        pass

    async def penalise(self, context: str, group: str, retry_after: float) -> None:
        raise AssertionError("no 429 expected")


async def test_an_unreadable_body_is_raised_at_once_and_never_retried(sim_factory: Any,
                                                                       http: aiohttp.ClientSession) -> None:
    sim = await sim_factory(config=sim_config())
    token = await access_token(http, sim.base_url, NIP)
    gate = CountingGate()
    async with Transport(sim.base_url, gate=gate, retry=RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.02)
                         ) as transport:
        with structlog.testing.capture_logs() as logs, pytest.raises(UnreadableRequest) as caught:
            await transport.request("POST", "/sessions/online", body=b'{"formCode": ', content_type="application/json",
                                    bearer=token, replay_safe=True)
    error = caught.value
    assert error.codes == [21001] and not error.retryable
    assert "ksefd bug" in error.message and "not retried" in error.message
    assert gate.acquired == Counter({"onlineSession": 1})              # one request, not five
    loud = [entry for entry in logs if entry["event"] == "ksef.unreadable_request"]
    assert loud and loud[0]["log_level"] == "error" and loud[0]["path"] == "/sessions/online"
    assert token not in repr(logs)


def test_21001_wins_over_a_retryable_code_in_the_same_answer() -> None:
    body = (b'{"exception": {"exceptionDetailList": [{"exceptionCode": 21184, "exceptionDescription": "x"}, '
            b'{"exceptionCode": 21001, "exceptionDescription": "Nieczytelna tre\\u015b\\u0107."}]}}')
    error = error_from_response(Response(400, {}, body, "application/json"), "POST", "/sessions/online")  # type: ignore[arg-type]
    assert isinstance(error, UnreadableRequest) and isinstance(error, KsefException)
    assert not error.retryable


def test_the_daemon_never_treats_it_as_transient() -> None:
    from ksefd.daemon.failures import classify

    error = UnreadableRequest([ExceptionDetail(21001, "Nieczytelna treść.", ["Unexpected end of JSON"])])
    assert classify(error).verdict != "transient" and classify(error).code == "ksef-21001"


def test_other_400s_are_not_unreadable() -> None:
    error = KsefException([ExceptionDetail(21405, "Błąd walidacji danych wejściowych.")])
    assert not isinstance(error, UnreadableRequest)
