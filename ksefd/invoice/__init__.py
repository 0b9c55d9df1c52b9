"""One invoice file: hygiene, FA(3) XSD and facts. Pure: bytes in, `CheckedInvoice` or `InvoiceRejected` out.

Imports nothing from the daemon, the store, the KSeF client or the simulator (DESIGN.md, layers).
"""

from .check import MAX_SIZE, MAX_SIZE_WITH_ATTACHMENT, check_invoice
from .errors import HINTS, STAGE, Code, InvoiceRejected
from .models import Buyer, BuyerIdType, CheckedInvoice
from .schema import FA3_NS, SchemaUnavailable, fa3_schema, load_schema

__all__ = [
    "FA3_NS", "HINTS", "MAX_SIZE", "MAX_SIZE_WITH_ATTACHMENT", "STAGE", "Buyer", "BuyerIdType", "CheckedInvoice",
    "Code", "InvoiceRejected", "SchemaUnavailable", "check_invoice", "fa3_schema", "load_schema",
]
