"""One (context, group)'s sliding windows on the client's side (ratelimit.py): the grant times still inside the
longest window, the public calls still on the way, and how long a new request must wait (PROTOCOL.md §7)."""

from __future__ import annotations

import asyncio
import bisect

from .ratelimit_limits import HOUR

SPARE_MOST = 16         # the most spare rows reserved at once (ratelimit.py), and the room of an unlimited group
ANSWER_LOOK_S = 0.05    # a window full of calls still on the way: look again this soon (an answer makes room)


class Bucket:
    """Grant times of one (context, group), ascending, pruned to the longest window."""

    __slots__ = ("lock", "open", "stamps")

    def __init__(self) -> None:
        self.stamps: list[float] = []
        # Stamps (also in `stamps`) of the per-IP calls on the way: they count in every window until answered.
        self.open: list[float] = []
        self.lock = asyncio.Lock()    # FIFO: callers of one group are served in arrival order

    def record(self, at: float) -> None:
        if not self.stamps or at >= self.stamps[-1]:
            self.stamps.append(at)
        else:   # the wall clock stepped back; keep the list sorted
            bisect.insort(self.stamps, at)

    def move(self, old: float, new: float, *, still_open: bool = False) -> None:
        """Re-date one grant (to when its request really left, or was answered; see `RateLimiter.acquire`)."""
        at = bisect.bisect_left(self.stamps, old)
        if at < len(self.stamps) and self.stamps[at] == old:
            del self.stamps[at]
        self.record(new)
        if self.close(old) and still_open:
            bisect.insort(self.open, new)

    def close(self, stamp: float) -> bool:
        """The call stamped `stamp` is no longer on the way (True if it was)."""
        at = bisect.bisect_left(self.open, stamp)
        if at < len(self.open) and self.open[at] == stamp:
            del self.open[at]
            return True
        return False

    def prune(self, now: float, keep: float) -> None:
        cut = bisect.bisect_right(self.stamps, now - keep)
        if cut:
            del self.stamps[:cut]

    def room(self, now: float, windows: tuple[tuple[float, int], ...], margin: float) -> int:
        """Requests that still fit in every window now (SPARE_MOST when none limits them)."""
        free = SPARE_MOST
        for length, limit in windows:
            in_window = len(self.stamps) - bisect.bisect_right(self.stamps, now - length - margin)
            free = min(free, limit - in_window)
        return max(0, free)

    def wait(self, now: float, windows: tuple[tuple[float, int], ...], margin: float) -> float:
        """Seconds until one more request fits in every window (each widened by `margin`). A call on the way
        (`open`) counts in every window until it is answered: when only answers can make room, a short look
        again (`ANSWER_LOOK_S`)."""
        longest = 0.0
        for length, limit in windows:
            span = length + margin
            if limit <= 0:
                return HOUR        # a zero limit: nothing may pass; look again later
            cut = bisect.bisect_right(self.stamps, now - span)
            # Calls on the way stamped before the window still count (they may reach KSeF at any moment).
            in_window = len(self.stamps) - cut + bisect.bisect_right(self.open, now - span)
            if in_window >= limit:
                leaves = self._leaves(cut, in_window - limit + 1, now - span)
                longest = max(longest, ANSWER_LOOK_S if leaves is None else leaves + span - now)
        return longest

    def _leaves(self, cut: int, need: int, since: float) -> float | None:
        """The stamp of the `need`-th answered call, oldest first, from `stamps[cut:]`; None if too few."""
        if not self.open:
            return self.stamps[cut + need - 1] if cut + need - 1 < len(self.stamps) else None
        skip = [t for t in self.open if t > since]      # in `stamps[cut:]`, but they leave only once answered
        for at in range(cut, len(self.stamps)):
            stamp = self.stamps[at]
            if skip and stamp in skip:
                skip.remove(stamp)
                continue
            need -= 1
            if need == 0:
                return stamp
        return None
