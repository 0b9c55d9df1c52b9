"""Messages that say what to do (issue #14 point 5), for the holds a person must fix.

A 403 `missing-permissions` lists every permission that would do (`requiredAnyOfPermissions`, e.g.
InvoiceWrite, PefInvoiceWrite, EnforcementOperations for opening a session: PROTOCOL.md §10.1); an accountant
needs the one their company lacks, and where it is granted: the taxpayer's application (Aplikacja
Podatnika) of the company's KSeF environment (PROTOCOL.md §0). A token that can read but not write is almost
always a company meant to receive only: say `send = false`.
"""

from __future__ import annotations

from ksefd.config import Company
from ksefd.i18n import N_

from .failures import Failure, worded
from .status_text import ENVIRONMENT_LABEL, WEB_APP
from .words import Words, english, say


def where_granted_words(company: Company) -> Words:
    app = WEB_APP.get(company.environment, WEB_APP["prod"])
    label = ENVIRONMENT_LABEL.get(company.environment, company.environment)
    return say(N_("the taxpayer's application (Aplikacja Podatnika) of KSeF {label}, {app}"), label=label, app=app)


def where_granted(company: Company) -> str:
    return english(where_granted_words(company))


def explain(company: Company, failure: Failure) -> Failure:
    """The failure's message completed with where to fix it, for this company's environment and config."""
    if failure.code != "missing-permission" or failure.needed_permission is None:
        return failure
    needed = failure.needed_permission
    first: str | Words = failure.words or failure.message
    words = say(N_("{reason}. Grant {needed} to the person or token that logs in for NIP {nip}, or generate a KSeF "
                   "token with {needed}, in {where}."), reason=first, needed=needed, nip=company.nip,
                where=where_granted_words(company))
    if needed == "InvoiceWrite" and "InvoiceRead" in failure.present_permissions and company.send:
        words += say(N_("The token can only read: if {company} should only receive invoices, set send = false "
                        "for it in the config."), company=company.name)
    return worded(failure.verdict, failure.code, words, retry_after=failure.retry_after,
                  needed_permission=failure.needed_permission, present_permissions=failure.present_permissions)
