"""What a checked invoice is: its exact bytes and the facts the daemon needs to send and track it."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

BuyerIdType = Literal["Nip", "VatUe", "Other", "None"]   # InvoiceMetadata.buyer.identifier.type (openapi.json)


@dataclass(frozen=True, slots=True)
class Buyer:
    id_type: BuyerIdType
    value: str | None          # NIP, EU VAT number with its country prefix, other ID; None for BrakID
    name: str | None


@dataclass(frozen=True, slots=True)
class CheckedInvoice:
    """An invoice that passed every local check. `data` is never re-serialised (PROTOCOL.md §13.6):
    `sha256` is the hash KSeF calls invoiceHash and the UPO calls SkrotDokumentu."""

    data: bytes
    file_name: str
    sha256: bytes              # raw 32-byte digest of `data`
    sha256_b64: str            # standard Base64 with padding, 44 characters (Sha256HashBase64)
    size: int
    seller_nip: str            # Podmiot1/DaneIdentyfikacyjne/NIP
    issue_date: dt.date        # Fa/P_1
    invoice_number: str        # Fa/P_2
    invoice_type: str          # Fa/RodzajFaktury: VAT, KOR, ZAL, ROZ, UPR, KOR_ZAL, KOR_ROZ
    buyer: Buyer               # Podmiot2/DaneIdentyfikacyjne
    gross_total: Decimal       # Fa/P_15
    currency: str              # Fa/KodWaluty
    has_attachment: bool       # Zalacznik present: only a batch session accepts it (PROTOCOL.md §4.2)

    @property
    def sha256_b64url(self) -> str:
        """Base64URL without padding, as KOD I carries it (PROTOCOL.md §8.5)."""
        return base64.urlsafe_b64encode(self.sha256).rstrip(b"=").decode("ascii")

    @property
    def duplicate_key(self) -> tuple[str, str, str]:
        """KSeF's duplicate key (seller NIP, RodzajFaktury, P_2), PROTOCOL.md §4.2: not the file hash."""
        return (self.seller_nip, self.invoice_type, self.invoice_number)

    def facts(self) -> dict[str, Any]:
        """JSON-compatible facts for result files and logs (no invoice content beyond the header)."""
        return {
            "fileName": self.file_name,
            "invoiceHash": self.sha256_b64,
            "invoiceSize": self.size,
            "sellerNip": self.seller_nip,
            "issueDate": self.issue_date.isoformat(),
            "invoiceNumber": self.invoice_number,
            "invoiceType": self.invoice_type,
            "buyer": {"type": self.buyer.id_type, "value": self.buyer.value, "name": self.buyer.name},
            "grossAmount": str(self.gross_total),
            "currency": self.currency,
            "hasAttachment": self.has_attachment,
        }
