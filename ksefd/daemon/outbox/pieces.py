"""How a backlog is cut into batch sessions (issue #16 goal 2): pieces of about BATCH_PIECE invoices, so that KSeF
processes one piece while ksefd builds the next and stores the results of the one before (a 10 000 batch at once:
all of its rows, events and state files in one step, KSeF idle meanwhile, then ksefd idle while KSeF works).

Opening a batch session is limited to 20 a minute and 60 an hour (batchSession, PROTOCOL.md §7): a backlog larger
than BATCH_PIECES pieces goes in BATCH_PIECES larger ones (up to the cap), so a backlog costs at most a few more
sessions than one would. (A smaller first piece while a drop is still being claimed was tried: no difference in
the 10 000 backlog's time, A/B on one machine, and a fifth session of the 60 an hour; not kept.)
"""

from __future__ import annotations

BATCH_PIECE = 2_500
BATCH_PIECES = 4


def piece_size(cap: int, waiting: int) -> int:
    """How many invoices one batch session takes from a backlog of `waiting`: BATCH_PIECE, more when the backlog
    is larger than BATCH_PIECES pieces (so it costs at most BATCH_PIECES sessions), never more than `cap`."""
    piece = max(BATCH_PIECE, -(-waiting // BATCH_PIECES))
    return max(1, min(cap, piece))


def batch_sizes(count: int, piece: int, *, whole_only: bool = False) -> list[int]:
    """`count` invoices in the fewest sessions of at most `piece`, of even sizes (2 600 with pieces of 2 500:
    1 300 and 1 300, not 2 500 and a session for 100). `whole_only` (files are still being claimed): full
    pieces only; the rest waits for the invoices still coming."""
    if whole_only:
        return [piece] * (count // piece)
    if count <= 0:
        return []
    sessions = -(-count // piece)
    size, extra = divmod(count, sessions)
    return [size + 1] * extra + [size] * (sessions - extra)
