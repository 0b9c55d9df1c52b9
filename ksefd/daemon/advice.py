"""Messages that say what to do (issue #14 point 5), for the holds a person must fix.

A 403 `missing-permissions` lists every permission that would do (`requiredAnyOfPermissions`, e.g.
InvoiceWrite, PefInvoiceWrite, EnforcementOperations for opening a session: PROTOCOL.md §10.1); an accountant
needs the one their company lacks, and where it is granted: the taxpayer's application (Aplikacja
Podatnika) of the company's KSeF environment (PROTOCOL.md §0). A token that can read but not write is almost
always a company meant to receive only: say `send = false`.
"""

from __future__ import annotations

from ksefd.config import Company

from .failures import Failure
from .status_text import ENVIRONMENT_LABEL, WEB_APP


def where_granted(company: Company) -> str:
    app = WEB_APP.get(company.environment, WEB_APP["prod"])
    label = ENVIRONMENT_LABEL.get(company.environment, company.environment)
    return f"the taxpayer's application (Aplikacja Podatnika) of KSeF {label}, {app}"


def explain(company: Company, failure: Failure) -> Failure:
    """The failure's message completed with where to fix it, for this company's environment and config."""
    if failure.code != "missing-permission" or failure.needed_permission is None:
        return failure
    needed = failure.needed_permission
    text = (f"{failure.message}. Grant {needed} to the person or token that logs in for NIP {company.nip}, or "
            f"generate a KSeF token with {needed}, in {where_granted(company)}")
    if needed == "InvoiceWrite" and "InvoiceRead" in failure.present_permissions and company.send:
        text += (f". The token can only read: if {company.name} should only receive invoices, set send = false "
                 f"for it in the config")
    return Failure(failure.verdict, failure.code, text, failure.retry_after, failure.needed_permission,
                   failure.present_permissions)
