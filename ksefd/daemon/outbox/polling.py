"""When to ask KSeF about an online invoice it is processing (PROTOCOL.md §4.5, issue #16).

An invoice sent online is judged asynchronously; its status says 100/150 until the verdict. Asking at once
and then after 0.2, 0.4, 0.8 s ... spent a request on nearly every invoice before KSeF could have answered
(`invoiceStatus` is 120 a minute under the production limits, §7) and then left a finished one waiting up
to the next step of the doubling. Instead the first question comes when KSeF usually has the verdict: KSeF
says how long it took, `acquisitionDate - invoicingDate` of each accepted invoice (when it was accepted for
processing and when it got its KSeF number, §4.5), and a moving average of those is the first wait after a
send. An invoice not finished by then is asked again after a quarter, a half, the whole of that time and so
on, doubling up to `MAX_POLL`.
"""

from __future__ import annotations

from ksefd.ksef import SessionInvoice

MAX_POLL = 10.0         # the longest wait between two questions about one invoice
FLOOR = 0.01            # the shortest wait (a verdict is never quicker than a round trip)
START = 0.2             # the guess before KSeF has told us anything
WEIGHT = 0.2            # how much each new observation moves the average


class ProcessingTime:
    """KSeF's own processing time of online invoices, as a moving average (seconds)."""

    def __init__(self, start: float = START) -> None:
        self.estimate = start

    def observe(self, invoice: SessionInvoice) -> None:
        """Learn from an accepted invoice's dates (others carry no acquisitionDate and teach nothing)."""
        if invoice.acquisition_date is None:
            return
        try:
            seconds = (invoice.acquisition_date - invoice.invoicing_date).total_seconds()
        except TypeError:       # one date without an offset: nothing to learn from it
            return
        seconds = min(MAX_POLL, max(0.0, seconds))
        self.estimate += WEIGHT * (seconds - self.estimate)

    def first(self) -> tuple[float, float]:
        """(the wait from the send to the first question, the step that `again` doubles after it)."""
        wait = max(FLOOR, self.estimate)
        return wait, max(FLOOR, wait / 8)


def again(step: float) -> float:
    """The next wait after `step` for an invoice still being processed."""
    return min(MAX_POLL, max(FLOOR, step * 2))
