"""How many unauthenticated calls may be on the way to KSeF at once (issue #16 point 4).

KSeF counts the public operations (challenge, token and XAdES login, auth status, redeem, refresh, public keys)
per client IP, 60 req/s (PROTOCOL.md §7, group `anonymous`), and every request that arrives during a 429
block lengthens it. Our windows keep the daemon's own calls under the limit, but another program on the same
IP (or a block we cannot know of) can start a block; then every call already sent lands in it. With 1 000
companies logging in at once, hundreds could be on the way.

So at most `most` such calls are in flight at once, and only one while we do not know that the IP is clear:
at the start, after each 429 and after a pause (no clean answer for FRESH_SECONDS, the length of the per-IP
window: what others on the IP did meanwhile is unknown) one call goes alone, and the others follow once it
was answered without a 429 (slow start). A 429 on it then costs one request in the block, not one per company.

A login's calls after its challenge (`continuing()`, set by auth.py) go before the calls that open other logins.
Served in arrival order, 1 000 logins went through in phases: every challenge, then every token, every status,
every redeem; no company was connected before the last phase, and then all of them at once, so the daemon's
work after each login (limits, the first inbox cycle) piled up at the end and slowed the redeems to ~38/s. First
come, first finished: companies connect at a steady pace from the start, and that work overlaps the logins.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

FRESH_SECONDS = 1.0

_continuing: ContextVar[bool] = ContextVar("ksefd_public_call_continues", default=False)


@contextmanager
def continuing() -> Iterator[None]:
    """The public calls made inside (in this task) carry on a flow already begun: they go first."""
    token = _continuing.set(True)
    try:
        yield
    finally:
        _continuing.reset(token)


class InFlight:
    def __init__(self, most: int, blocked: Callable[[], bool] = lambda: False,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.most = most
        self._blocked = blocked        # a known 429 block runs: nothing counts as answered without one
        self._now = now
        self.running = 0
        self.clear = False             # an answer without a 429 came since the start or the last 429 ...
        self._clear_at = 0.0           # ... at this time
        self._penalties = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._continuing: deque[asyncio.Future[None]] = deque()     # served before `_waiting`

    def _room(self) -> int:
        fresh = self.clear and self._now() - self._clear_at < FRESH_SECONDS
        return (self.most if fresh else 1) - self.running

    async def enter(self) -> None:
        """Wait for a place among the calls in flight; `leave()` gives it back."""
        first = _continuing.get()
        if self._room() > 0 and not self._continuing and (first or not self._waiting):
            self.running += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._continuing if first else self._waiting).append(waiter)
        try:
            await waiter                   # whoever woke us counted us in `running`
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave()
            raise

    def leave(self) -> None:
        """A call's answer (or failure) is in. Whether it was a 429 is known only a moment later (the
        transport tells `penalised()` before it waits for anything), so the IP counts as clear from the next
        turn of the loop if no 429 came meanwhile."""
        self.running -= 1
        penalties = self._penalties
        asyncio.get_running_loop().call_soon(self._answered_without_429, penalties)
        self._wake()

    def penalised(self) -> None:
        """A 429 on a per-IP limit: one call at a time again until one passes."""
        self._penalties += 1
        self.clear = False

    def _answered_without_429(self, penalties: int) -> None:
        if penalties == self._penalties and not self._blocked():
            self.clear, self._clear_at = True, self._now()
            self._wake()

    def _wake(self) -> None:
        while (self._continuing or self._waiting) and self._room() > 0:
            waiter = (self._continuing or self._waiting).popleft()
            if not waiter.done():
                self.running += 1
                waiter.set_result(None)
